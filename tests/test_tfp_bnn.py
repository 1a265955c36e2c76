"""benchmarks/tfp_bnn.py (TFP's Bayesian MNIST example and its port, side by side) and the numpy
MNIST reader it shares with the other TFP workers (benchmarks/bench_data.py). The TFP worker
needs ``.tfp-venv``, which CI has not: its run is recorded in docs/porting.md."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from problayers.vae.data import synthetic_mnist

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tfp_bnn = _load("tfp_bnn")
bench_data = _load("bench_data")


def _idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    """Seven-segment digits (generated) as the four MNIST IDX files: 320 training, 80 test."""
    for (images_name, labels_name), (n, seed) in zip(
        bench_data.SPLIT_FILES.values(), ((320, 0), (80, 1)), strict=True
    ):
        images, labels = synthetic_mnist(n, seed=seed)
        (tmp_path / f"{images_name}.gz").write_bytes(gzip.compress(_idx(2051, images.numpy())))
        (tmp_path / labels_name).write_bytes(_idx(2049, labels.numpy()))  # one raw, one .gz
    return tmp_path


def test_load_split_reads_images_and_labels(mnist_dir):
    images, labels = bench_data.load_split(str(mnist_dir), "test")
    want_images, want_labels = synthetic_mnist(80, seed=1)
    assert images.dtype == np.uint8 and images.shape == (80, 28, 28)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, want_images.numpy())
    np.testing.assert_array_equal(labels, want_labels.numpy())


def test_load_split_names_a_label_file_that_is_not_one(mnist_dir):
    (mnist_dir / "t10k-labels-idx1-ubyte").write_bytes(_idx(2051, np.zeros((80, 28, 28))))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: not an IDX label file"):
        bench_data.load_split(str(mnist_dir), "test")


def _expected_kl_term(n: int = 2_000_000) -> float:
    """E[sum of KL(q(w) || N(0, 1)) over LeNet-5's kernels] / 60000 at TFP's default start:
    loc ~ N(0, 0.1^2), scale = softplus(u), u ~ N(-3, 0.1^2) (``default_mean_field_normal_fn``)."""
    rng = np.random.default_rng(0)
    loc, scale = rng.normal(0, 0.1, n), np.logaddexp(0, rng.normal(-3, 0.1, n))
    per_weight = (-np.log(scale) + (scale**2 + loc**2) / 2 - 0.5).mean()
    kernels = 5 * 5 * 6 + 5 * 5 * 6 * 16 + 5 * 5 * 16 * 120 + 120 * 7 * 7 * 84 + 84 * 10
    return per_weight * kernels / tfp_bnn.NUM_TRAIN


def test_the_port_trains_and_reports(mnist_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data-dir", str(mnist_dir), "--libraries", "problayers", "--seeds", "3", "--epochs", "2"]
    argv += ["--mc-draws", "2", "--out", str(out)]
    assert tfp_bnn.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["problayers-seed3.json"]  # no temporary left
    result = json.loads((out / "problayers-seed3.json").read_text())
    assert result["library"] == "problayers" and result["seed"] == 3 and result["n_losses"] == 5
    assert "--epochs 2" in result["command"] and result["cpu"]
    # The port starts where TFP's default posteriors do (TFP 0.25 measured 23.002 for seed 0).
    assert result["init"]["kl"] == pytest.approx(_expected_kl_term(), rel=0.005)
    first, second = result["epochs"]
    assert first["steps"] == second["steps"] == 3  # 320 images in batches of 128, the last one kept
    assert second["kl"] < first["kl"] < result["init"]["kl"]  # training lowers the KL term
    for epoch in result["epochs"]:
        assert epoch["loss"] > epoch["kl"] * 0.99 and 0 <= epoch["accuracy"] <= 1
    final = result["final"]
    assert 0 <= final["test_accuracy"] <= 1 and final["test_nll"] > 0 and final["example_heldout_nats"] < 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("problayers seed 3: KL term at start")
    # The log line's time is the table's: the median epoch's (a mean would count a compile).
    assert line.endswith(f"; {tfp_bnn._median_ms(result['epochs']):.1f} ms/step")
    assert tfp_bnn.main(["--table", str(out)]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1 == rule.count("---")
    kls = [result["init"]["kl"], first["kl"], second["kl"], second["kl"]]  # start, 1, 5 (the last), last
    assert cells[:3] == ["problayers", "3", ", ".join(f"{v:.2f}" for v in kls)]
    assert cells[6] == f"{final['example_heldout_nats']:.2f}"


def test_unknown_library_and_missing_tfp_venv_are_one_line(tmp_path, monkeypatch, capsys):
    argv = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert tfp_bnn.main([*argv, "--libraries", "problayers,jax"]) == 2
    expected = "tfp,tfp-onednn,problayers,problayers-compile"
    assert capsys.readouterr().out.strip() == f"--libraries: expected some of {expected}, got jax"
    monkeypatch.setattr(tfp_bnn, "TFP_PYTHON", tmp_path / "none" / "python")
    assert tfp_bnn.main([*argv, "--libraries", "tfp-onednn"]) == 2
    assert "none/python: not found" in capsys.readouterr().out


def test_data_dir_is_required_except_for_the_table(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        tfp_bnn.main(["--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--data-dir is required" in capsys.readouterr().err


def test_a_table_of_a_directory_without_results_is_one_line(tmp_path, capsys):
    assert tfp_bnn.main(["--table", str(tmp_path)]) == 2
    assert capsys.readouterr().out.strip() == f"--table {tmp_path}: no results (*-seed*.json) there"


def test_a_failed_worker_is_reported_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data-dir", str(tmp_path / "absent"), "--libraries", "problayers", "--out", str(out)]
    assert tfp_bnn.main(argv) == 1
    printed = capsys.readouterr().out
    assert "problayers seed 0: the worker failed" in printed and "not found" in printed
    assert list(out.iterdir()) == []


def test_the_kl_only_check_trains_the_port_on_its_kl_term(monkeypatch, tmp_path, capsys):
    check = _load("check_tfp_bnn_kl")
    start, end = check._problayers(3)  # steps 0 and 3
    assert start == pytest.approx(_expected_kl_term(), rel=0.005)
    # Keras' Adam moves each posterior parameter by about lr at first, all of them against the KL.
    assert 0.001 < start - end < 0.05
    monkeypatch.setattr(check, "TFP_PYTHON", tmp_path / "none" / "python")
    assert check.main(["--steps", "1"]) == 2
    assert "none/python: not found" in capsys.readouterr().out


def test_step_time_is_the_median_epochs():
    epochs = [{"train_seconds": s, "steps": 100} for s in (40.0, 6.0, 5.0)]  # a compile, then two
    assert tfp_bnn._median_ms(epochs) == pytest.approx(60.0)  # the mean would say 170 ms


DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("results", ["tfp-bnn-cpu", "tfp-bnn-zen4"])
def test_porting_md_tables_are_the_committed_results(results, capsys):
    """Each row of porting.md's per-seed tables is `tfp_bnn.py --table` of its result files."""
    assert tfp_bnn.main(["--table", str(DOCS / "results" / results)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 + (4 if results == "tfp-bnn-cpu" else 10)
    doc = (DOCS / "porting.md").read_text().splitlines()
    assert [row for row in rows if row not in doc] == []


@pytest.mark.parametrize(
    ("metric", "digits", "label"),
    [
        ("epochs.4.kl", 3, "KL term after epoch 5"),
        ("epochs.-1.kl", 3, "KL term after epoch 10"),
        ("final.test_accuracy", 4, "test accuracy, 50 draws"),
        ("final.test_nll", 4, "test NLL, nats"),
    ],
)
def test_porting_md_five_seed_summary_is_tfp_gaps(metric, digits, label, capsys):
    """porting.md's five-seed summary row is what `tfp_gap.py --metric` prints for those files."""
    gap = _load("tfp_gap")
    d = DOCS / "results" / "tfp-bnn-zen4"
    groups = [
        f"{lib}=" + ",".join(str(d / f"{lib}-seed{s}.json") for s in range(5))
        for lib in ("tfp", "problayers")
    ]
    assert gap.main(["--metric", metric, "--digits", str(digits), *groups]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    tfp, port = ([c.strip() for c in row.strip("|").split("|")] for row in table[2:])
    (row,) = [
        r for r in (DOCS / "porting.md").read_text().splitlines() if r.startswith(f"| {label} (`{metric}`)")
    ]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [f"{tfp[3]} (sd {tfp[4]})", f"{port[3]} (sd {port[4]})", port[5], port[6]]
