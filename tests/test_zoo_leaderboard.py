"""benchmarks/zoo_leaderboard.py: a row describes one state of the model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_leaderboard.py"
_spec = importlib.util.spec_from_file_location("_zoo_leaderboard", SCRIPT)
assert _spec is not None and _spec.loader is not None
leaderboard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(leaderboard)


def _run(tmp_path: Path, eval_epoch: int) -> Path:
    run = tmp_path / f"run{eval_epoch}"
    run.mkdir()
    config = {"model": {"name": "mlp", "latent_size": 2, "hidden_size": 4}, "batch_size": 8, "lr": 1e-3}
    (run / "config.json").write_text(json.dumps(config))
    records = [{"epoch": e, "seconds": 10.0, "test_neg_elbo": 120.0 - 10 * e} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    evaluation = {
        "epoch": eval_epoch,
        "iwae_nll": 95.5,
        "iwae_samples": 10,
        "num_examples": 8,
        "seconds": 1.0,
    }
    (run / "eval.json").write_text(json.dumps(evaluation))
    return run


def test_an_evaluation_of_an_earlier_epoch_is_not_the_runs_nll(tmp_path):
    # A run resumed after `problayers evaluate` kept the old eval.json: the row gave the last
    # epoch's -ELBO (90) beside the NLL of epoch 2's weights (long-runs audit).
    current, stale = (leaderboard.summarize(_run(tmp_path, e)) for e in (3, 2))
    assert current["iwae_nll"] == 95.5 and current["eval_of_epoch"] is None
    assert stale["iwae_nll"] is None and stale["eval_of_epoch"] == 2 and stale["test_neg_elbo"] == 90.0
    rows = leaderboard.table([current, stale]).splitlines()[2:]
    assert "**95.50** (10, 8)" in rows[0]
    assert "| - (eval.json is of epoch 2: run problayers evaluate again) |" in rows[1]
