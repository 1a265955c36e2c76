"""The probabilistic regression demo: the fits, checked numerically, and its files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from problayers.demos import regression

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("regression")
    state = torch.random.get_rng_state()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = regression.run(out, epochs=300, seed=0)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    return out, results


def test_learned_scale_tracks_the_true_noise(fitted):
    _, r = fitted
    # mean |learned std / true std - 1| over the data range; the model's optimum is ~0.12 here
    # (150 points, softplus of a quadratic for a linear std)
    assert r["aleatoric_std_rel_error"] < 0.25


def test_epistemic_spread_is_larger_away_from_the_data(fitted):
    _, r = fitted
    assert r["epistemic_spread_outside"] > 1.8 * r["epistemic_spread_inside"] > 0


def test_held_out_nll_orders_the_models(fitted):
    _, r = fitted
    # The learned noise explains the data far better than a unit one; the oracle NLL is ~1.85.
    assert r["nll_aleatoric"] < r["nll_no_uncertainty"] - 0.8
    assert r["nll_both"] < r["nll_epistemic"] - 0.8
    assert 1.8 < r["nll_aleatoric"] < 2.1 and 1.8 < r["nll_both"] < 2.1


def test_files_are_pngs_and_metrics_json(fitted):
    out, r = fitted
    assert sorted(Path(f).name for f in r["files"]) == sorted(f"regression_{c}.png" for c in regression.CASES)
    for f in r["files"]:
        assert Path(f).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out / "metrics.json").read_text())
    assert saved.pop("files") == r["files"]
    assert saved == pytest.approx({k: v for k, v in r.items() if k != "files"})
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_dataset_noise_grows_as_documented():
    gen = torch.Generator().manual_seed(1)
    x, y = regression.make_dataset(20000, gen)
    resid = y - (regression.W0 * x * (1 + torch.sin(x)) + regression.B0)
    for lo, hi in ((-20, -10), (20, 30), (50, 60)):
        sel = (x >= lo) & (x < hi)
        mid = torch.tensor((lo + hi) / 2)
        assert resid[sel].std() == pytest.approx(float(regression.noise_std(mid)), rel=0.06)
    assert x.min() >= -20 and x.max() <= 60 and x.shape == y.shape == (20000, 1)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        regression.run(tmp_path, epochs=0)
    with pytest.raises(ValueError, match="case"):
        regression.build_model("aleatoric-ish")
    with pytest.raises(SystemExit) as exc:
        regression.main(["--out", str(tmp_path), "--epochs", "-1"])
    assert exc.value.code == 2


def test_main_and_no_side_effects_at_import(tmp_path):
    code = (
        "import sys, problayers, problayers.demos.regression as r;"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time';"
        f"r.main(['--out', {str(tmp_path)!r}, '--epochs', '3'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"]
    assert len(list(tmp_path.glob("regression_*.png"))) == 4


def test_regression_plot_band_is_the_mixture_predictive_std(tmp_path, monkeypatch):
    """The blue band of the plot is mean +- 2 std of the predictive over posterior draws, a
    mixture: std^2 = mean_s(std_s^2) + var_s(mean_s) (law of total variance). Two draws at one
    grid point with means 0, 2 and stds 1, 1: std^2 = 1 + 1 = 2. Catches the mutation (the band's std as
    the mean of the draws' stds, 1)."""
    from matplotlib.axes import Axes

    from problayers.demos import regression

    bands = []
    real = Axes.fill_between

    def spy(self, x, y1, y2=0, **kwargs):
        bands.append((kwargs.get("label"), np.asarray(y1), np.asarray(y2)))
        return real(self, x, y1, y2, **kwargs)

    monkeypatch.setattr(Axes, "fill_between", spy)
    grid = torch.zeros(1, 1)
    means = torch.tensor([[0.0], [2.0]])  # (draws, G)
    stds = torch.ones(2, 1)
    xy = torch.zeros(3, 1)
    regression._plot(tmp_path / "p.png", "both", xy, xy, grid, means, stds)
    ((lo, hi),) = [(y1, y2) for label, y1, y2 in bands if label == "mean +- 2 std (predictive)"]
    np.testing.assert_allclose(lo, [1.0 - 2 * math.sqrt(2.0)], rtol=1e-6)
    np.testing.assert_allclose(hi, [1.0 + 2 * math.sqrt(2.0)], rtol=1e-6)
