"""Packaging: the library type-checks (mypy, configured in pyproject.toml), and the sdist and wheel
build, pass ``twine check`` and hold what they should; the wheel, installed into a clean virtual
environment, runs the README's example from outside the repository (so the installed package is
imported, not ``src/``).

The build uses build isolation (setuptools and wheel come from the package index); the clean
environment gets torch as ``scripts/setup.sh`` does (``TORCH_SPEC``, default ``torch==2.13.0``, a
wheel pip finds on the local disk) and then the wheel with its dependencies from the index."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "problayers"
README = REPO / "README.md"


def _run(cmd: list, timeout: float, cwd: Path = REPO, env: dict | None = None) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    )
    return out.stdout


def _quiet_env() -> dict:
    # One thread (the machines are shared), no PYTHONPATH pointing back at src/, no pip chatter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


# -- types ---------------------------------------------------------------------------------------------


USER_PROGRAM = """
import numpy as np
import torch
from torch import nn

import problayers as pl

size = pl.MultivariateNormalTriL.params_size(2)
encoder = nn.Sequential(nn.Linear(4, size), pl.MultivariateNormalTriL((2,)))
made = pl.AutoregressiveNetwork(2, 3, activation="elu")
dense = pl.DenseReparameterization(3, 2, activation="relu")
mixture = pl.MixtureNormal(np.int64(3), 2)
normal = pl.IndependentNormal(np.int64(3))
onehot = pl.OneHotCategorical((3,))
q = pl.as_coercible(torch.distributions.Normal(torch.zeros(3), 1.0))
value: torch.Tensor = q.tensor()
print(q.shape, (q + 1).tolist(), pl.fit.__name__)
"""


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the test extra)")
def test_a_users_program_type_checks_strictly(tmp_path):
    """What the docs offer type-checks under ``mypy --strict`` (Keras' activation names, sizes as
    1-tuples and numpy integers, ``as_coercible``'s tensor side), and a misspelled name does not
    (the lazy ``pl.fit`` made every ``pl.<name>`` Any). Distribution-API audit."""
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n[mypy-problayers.*]\nfollow_imports = silent\n")
    program = tmp_path / "user.py"
    run = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(config),
        "--cache-dir",
        str(REPO / ".mypy_cache" / "strict-user"),  # not test_mypy_is_clean's (xdist runs both at once)
    ]
    env = {**os.environ, "MYPYPATH": str(REPO / "src")}
    program.write_text(USER_PROGRAM)
    out = subprocess.run([*run, str(program)], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, f"mypy --strict:\n{out.stdout}\n{out.stderr}"
    program.write_text("import problayers as pl\npl.IndependentNormall(3)\n")
    out = subprocess.run([*run, str(program)], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert 'Module has no attribute "IndependentNormall"; maybe "IndependentNormal"?' in out.stdout


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the test extra)")
def test_mypy_is_clean():
    """``python -m mypy`` with pyproject.toml's [tool.mypy] (the library: errors; the application:
    analysed, errors not reported yet) finds nothing."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"mypy:\n{out.stdout}\n{out.stderr}"
    assert "Success: no issues found" in out.stdout


def test_py_typed_is_there():
    assert (PACKAGE / "py.typed").is_file()


# -- sdist and wheel ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), built by ``python -m build`` (the wheel from the sdist)."""
    for name in ("build", "twine"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the test extra)")
    outdir = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", outdir, REPO], timeout=600, env=_quiet_env())
    (sdist,) = outdir.glob("problayers-*.tar.gz")
    (wheel,) = outdir.glob("problayers-*.whl")
    _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], timeout=120)
    return sdist, wheel


def _files(pattern: str) -> set[str]:
    """The checkout's files matching ``pattern`` (relative paths), caches left out."""
    return {
        p.relative_to(REPO).as_posix()
        for p in REPO.glob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_sdist_contents(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    expected = _files("src/problayers/**/*.py") | {"src/problayers/py.typed", "README.md", "pyproject.toml"}
    expected |= _files("tests/*.py") | _files("tests/fixtures/*")
    missing = sorted(expected - names)
    assert not missing, f"not in the sdist: {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_contents(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = whl.read(metadata).decode()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = whl.read(entry_points).decode()
    expected = {p.removeprefix("src/") for p in _files("src/problayers/**/*.py")} | {"problayers/py.typed"}
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith("tests/")], "the wheel ships no tests"
    assert "Description-Content-Type: text/markdown" in meta
    assert re.search(r"^Requires-Dist: torch", meta, re.M) and re.search(r"^Requires-Dist: numpy", meta, re.M)
    assert "problayers = problayers.cli:entry_point" in scripts


def test_wheel_runs_the_readme_example_in_a_clean_venv(dists, tmp_path):
    """The wheel in a fresh venv (no --system-site-packages): torch as scripts/setup.sh installs it,
    then the wheel with its dependencies; the README's first python example run from a directory
    outside the repository, importing the installed package."""
    _, wheel = dists
    venv = tmp_path / "venv"
    try:
        _install_and_run_the_example(wheel, venv, tmp_path)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # torch in it: about a gigabyte


def _install_and_run_the_example(wheel: Path, venv: Path, tmp_path: Path) -> None:
    env = _quiet_env()
    _run([sys.executable, "-m", "venv", venv], timeout=300, env=env)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q"]
    _run([*pip, os.environ.get("TORCH_SPEC", "torch==2.13.0")], timeout=600, env=env)
    _run([*pip, wheel], timeout=600, env=env)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    example = tmp_path / "example.py"
    example.write_text(
        blocks[0]
        + "\nassert digits.shape == (10, 1, 28, 28), digits.shape\n"
        + "print('problayers from', pl.__file__)\n"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = _run([python, "-I", example], timeout=600, cwd=work, env=env)
    (where,) = re.findall(r"^problayers from (.*)$", out, re.M)
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"imported {where}, not the installed wheel"
    assert not Path(where).resolve().is_relative_to(REPO)
    if importlib.util.find_spec("mypy") is not None:
        # PEP 561: a type checker looking at the clean venv takes the installed package as typed
        # (without py.typed: "module is installed, but missing library stubs or py.typed marker").
        mypy = [sys.executable, "-m", "mypy", "--python-executable", python, "--follow-imports=skip"]
        out = subprocess.run(
            [*mypy, "--no-incremental", "--config-file=", example],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, (
            f"mypy on the example, against the installed wheel:\n{out.stdout}{out.stderr}"
        )
