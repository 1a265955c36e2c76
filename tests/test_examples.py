"""The examples run (issue 13): the VAE notebook with nbclient and each script by subprocess, all
with tiny settings (256 images / a few steps), so that ``examples/`` cannot rot."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAVE_MNIST, REPO, SHARED_MNIST

EXAMPLES = REPO / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# One thread per child process (the kernel, the scripts): the tests share 2 cores.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _assert_pngs(directory: Path, names: list[str]) -> None:
    for name in names:
        path = directory / name
        assert path.is_file(), f"{path} was not written"
        assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


# ------------------------------------------------------------------------------------------ the notebook
def _notebook_parameters(nb) -> set[str]:
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    tree = ast.parse(cell.source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


# No warning is raised with the versions installed here (nbclient 0.11, jupyter_client 8, jupyter_core 5.9,
# ipykernel 7); this one is: jupyter_core releases before 5.9 warn on import, through nbclient, that
# they will move their paths to platformdirs (a DeprecationWarning unless JUPYTER_PLATFORM_DIRS=1).
@pytest.mark.filterwarnings("ignore:Jupyter is migrating its paths:DeprecationWarning")
def test_vae_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(EXAMPLES / "vae_mnist.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it cleared"
    tiny = {
        "DATA_DIR": str(SHARED_MNIST) if HAVE_MNIST else None,
        "SYNTHETIC": not HAVE_MNIST,
        "TRAIN_SUBSET": 256,
        "TEST_SUBSET": 100,
        "EPOCHS": 1,
        "BATCH_SIZE": 64,
        "DEVICE": "cpu",
        "OUT_DIR": str(tmp_path / "pictures"),
    }
    assert set(tiny) <= _notebook_parameters(nb), "the notebook's parameters cell lacks a name"
    # As papermill does: a cell right after the parameters cell overrides their values.
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = "\n".join(f"{k} = {v!r}" for k, v in tiny.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    for k, v in _ONE_THREAD.items():  # the kernel inherits the environment
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become outputs
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if a cell fails

    _assert_pngs(
        tmp_path / "pictures", ["data.png", "prior_samples.png", "reconstructions.png", "loss_curve.png"]
    )
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 4  # data, prior samples, reconstructions, loss curve shown inline
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    summary = ast.literal_eval(last.strip().splitlines()[-1])
    assert summary["epochs"] == 1
    assert 50 < summary["final_test_neg_elbo"] < 560  # nats; 543 (= 784 log 2) is a uniform decoder
    assert summary["pictures"] == ["data.png", "loss_curve.png", "prior_samples.png", "reconstructions.png"]


# ------------------------------------------------------------------------------------------- the scripts
def _run_script(name: str, *args: str) -> str:
    """Run ``examples/<name>`` with warnings as errors (as the tests run); its stdout."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **_ONE_THREAD, "MPLBACKEND": "Agg"},
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _values(stdout: str) -> dict[str, float]:
    """The ``key: number ...`` lines of a script's output."""
    return {k: float(v) for k, v in re.findall(r"^([^:\n]+): (-?\d+(?:\.\d+)?)\b", stdout, re.M)}


def test_regression_script(tmp_path):
    stdout = _run_script("regression.py", "--epochs", "150", "--out", str(tmp_path))
    values = _values(stdout)
    for case in ("no_uncertainty", "aleatoric", "epistemic", "both"):
        assert f"nll {case}" in values, stdout
    assert values["nll aleatoric"] < values["nll no_uncertainty"]  # learned noise fits better
    _assert_pngs(tmp_path, ["regression.png"])


@pytest.mark.parametrize("how", [[], ["--to-bayesian"]], ids=["DenseFlipout", "to_bayesian"])
def test_bayesian_classifier_script(tmp_path, how):
    stdout = _run_script("bayesian_classifier.py", "--steps", "200", "--out", str(tmp_path), *how)
    values = _values(stdout)
    assert values["test accuracy"] > 0.8, stdout
    # the weights' part of the uncertainty (the mutual information) grows away from the data
    assert values["mutual information far from the data"] > values["mutual information on test points"]
    _assert_pngs(tmp_path, ["bayesian_classifier.png"])


def test_flow_script(tmp_path):
    stdout = _run_script("flow.py", "--steps", "200", "--out", str(tmp_path))
    values = _values(stdout)
    assert values["final NLL"] < values["initial NLL"], stdout
    assert values["final NLL"] < values["best possible NLL (the density's entropy)"] + 0.3  # 3.54 vs 3.53
    _assert_pngs(tmp_path, ["flow.png"])
