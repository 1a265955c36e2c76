"""Shared fixtures: where the MNIST files are (``../shared/data/mnist`` beside the checkout),
and the CLI arguments that select real or generated data for the end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(os.environ.get("PROBLAYERS_TEST_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
HAVE_MNIST = (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file() or (
    SHARED_MNIST / "t10k-images-idx3-ubyte"
).is_file()


def pytest_report_header(config):
    if HAVE_MNIST:
        return f"MNIST for end-to-end tests: {SHARED_MNIST}"
    return f"MNIST not found at {SHARED_MNIST}: end-to-end tests use small generated digits instead"


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests are tiny; one thread avoids oversubscription on shared 2-core machines and keeps
    # CPU results reproducible between a test's processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_args() -> list[str]:
    """CLI options for a small real-MNIST run, or generated digits where MNIST is absent."""
    if HAVE_MNIST:
        return ["--data-dir", str(SHARED_MNIST), "--train-subset", "256", "--test-subset", "100"]
    return ["--synthetic", "256"]
