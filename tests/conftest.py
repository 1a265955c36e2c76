"""Shared fixtures: where the MNIST files are (``../shared/data/mnist`` beside the checkout),
and the CLI arguments that select real or generated data for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(os.environ.get("PROBLAYERS_TEST_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
HAVE_MNIST = (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file() or (
    SHARED_MNIST / "t10k-images-idx3-ubyte"
).is_file()


def pytest_configure(config):
    # The CPU step probe's cache (problayers.train.probe) goes into a directory of this session,
    # never into the user's: runs in the tests measure on tiny models under load.
    if not hasattr(config, "workerinput"):
        config._probe_cache = tempfile.TemporaryDirectory(prefix="problayers-test-cache-")
        os.environ["PROBLAYERS_CACHE_DIR"] = config._probe_cache.name


def pytest_unconfigure(config):
    cache = getattr(config, "_probe_cache", None)
    if cache is not None:
        cache.cleanup()


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


def _fixed_timings(model, optimizer, loss_fn, batch, candidates, warmup, repeats):
    return {c.name: 1.0 if c.name == "fp32+channels_last" else 1.25 for c in candidates}


@pytest.fixture(scope="session", autouse=True)
def _fixed_probe_timings():
    # Runs in the tests train on the CPU with --fast, which measures the step's options first
    # (problayers.train.probe). Their timings are fixed here (fp32 + channels_last fastest, as
    # fastest_defaults("cpu") says) so that tests are quick and choose the same every time;
    # tests marked real_probe (tests/test_probe.py) time real steps. Subprocesses measure.
    from problayers.train import probe

    real = {"_time_candidates": probe._time_candidates, "_busy": probe._busy}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe, "_time_candidates", _fixed_timings)
        patch.setattr(probe, "_busy", lambda: None)
        yield real


@pytest.fixture(autouse=True)
def _real_probe(request, monkeypatch, _fixed_probe_timings):
    if request.node.get_closest_marker("real_probe"):
        from problayers.train import probe

        for name, fn in _fixed_probe_timings.items():
            monkeypatch.setattr(probe, name, fn)


@pytest.fixture
def data_args() -> list[str]:
    """CLI options for a small real-MNIST run, or generated digits where MNIST is absent."""
    if HAVE_MNIST:
        return ["--data-dir", str(SHARED_MNIST), "--train-subset", "256", "--test-subset", "100"]
    return ["--synthetic", "256"]


def fresh_python(code: str) -> str:
    """Run ``code`` in a fresh Python process (nothing imported yet); its stdout, stripped.
    The test fails with the process's stderr if it exits with an error."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()
