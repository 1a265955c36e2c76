"""The time-to-NLL leaderboard: one markdown row per recorded run, from its files.

    python benchmarks/zoo_leaderboard.py docs/results/zoo-cpu/* [--json docs/results/zoo-leaderboard.json]

Each run directory holds what ``problayers train`` and ``problayers evaluate`` wrote:
``config.json``, ``metrics.jsonl`` (per epoch: test -ELBO, seconds), and ``eval.json`` (the
IWAE bound; optional), plus ``run.json``: ``{"hardware": ..., "date": ..., "command": ...,
"eval_command": ...}`` written by whoever ran it. The row gives the model and its options,
parameters (counted from the config), epochs, training time (the sum of the epochs' seconds,
evaluation excluded), the last test -ELBO, the IWAE NLL and its K, and the training seconds
at which the test -ELBO first reached 100 / 95 / 90 nats ("-" if never). An ``eval.json`` of
another epoch than the last (the run was resumed after its evaluation) is not shown as the
run's NLL: the row says which epoch it is of.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

THRESHOLDS = (100.0, 95.0, 90.0)


def _options(model: dict) -> str:
    from problayers.vae.models import ModelConfig
    from problayers.vae.models.registry import MODEL_DEFAULTS

    defaults = {**ModelConfig().__dict__, **MODEL_DEFAULTS.get(model["name"], {})}
    shown = [f"{k}={v}" for k, v in model.items() if k != "name" and v != defaults.get(k)]
    return model["name"] + (f" ({', '.join(shown)})" if shown else "")


def _parameters(model: dict) -> int:
    from problayers.vae.models import ModelConfig, build_model

    return sum(p.numel() for p in build_model(ModelConfig.from_dict(model)).parameters())


def summarize(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    last = epochs[-1]["epoch"] if epochs else None
    stale = evaluation.get("epoch") is not None and evaluation["epoch"] != last
    if stale:  # the weights evaluated are not the last epoch's
        evaluation = {"stale_epoch": evaluation["epoch"]}
    elapsed, reached = 0.0, {}
    for record in epochs:
        elapsed += record["seconds"]
        for t in THRESHOLDS:
            if t not in reached and record.get("test_neg_elbo", float("inf")) <= t:
                reached[t] = elapsed
    return {
        "run": run.name,
        "model": _options(config["model"]),
        "parameters": _parameters(config["model"]),
        "epochs": len(epochs),
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "lr_schedule": config.get("lr_schedule", "constant"),
        "train_seconds": elapsed,
        "test_neg_elbo": epochs[-1].get("test_neg_elbo") if epochs else None,
        "iwae_nll": evaluation.get("iwae_nll"),
        "iwae_samples": evaluation.get("iwae_samples"),
        "iwae_examples": evaluation.get("num_examples"),
        "eval_seconds": evaluation.get("seconds"),
        "eval_of_epoch": evaluation.get("stale_epoch"),
        "seconds_to": {str(int(t)): reached.get(t) for t in THRESHOLDS},
        **meta,
    }


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    cols = ["model", "params", "epochs", "training", "test -ELBO", "IWAE NLL (K, images)"]
    cols += ["s to 100 / 95 / 90", "hardware"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: r["iwae_nll"] if r["iwae_nll"] is not None else float("inf")):
        nll = "-"
        if r.get("eval_of_epoch") is not None:
            nll = f"- (eval.json is of epoch {r['eval_of_epoch']}: run problayers evaluate again)"
        elif r["iwae_nll"] is not None:
            nll = f"**{r['iwae_nll']:.2f}** ({r['iwae_samples']}, {r['iwae_examples']})"
        to = " / ".join(_cell(r["seconds_to"][str(int(t))], ".0f") for t in THRESHOLDS)
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['epochs']} "
            f"| {r['train_seconds'] / 60:.1f} min | {_cell(r['test_neg_elbo'], '.2f')} | {nll} | {to} "
            f"| {r.get('hardware', '?')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = [summarize(run) for run in args.runs if (run / "metrics.jsonl").is_file()]
    print(table(rows))
    if args.json is not None:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
