"""Which EMA decay? One training run, the test -ELBO of several weight averages after each epoch.

Trains one run exactly as ``problayers train`` would with the same options (the same setup
code, so the trained weights, ``online`` below, are those of that command), and keeps, next to
it, an :class:`~problayers.train.averaging.EMA` of the weights for each decay in ``--decays``, updated
after every optimizer step. After each epoch it records the test -ELBO of the trained weights
(``test_neg_elbo``) and of each average (``ema<decay>_test_neg_elbo``, same seeded evaluation) in
the run directory's ``metrics.jsonl``, and prints a table at the end.

Example (docs/results/ema-study-cpu/, 2-core CPU, about 35 minutes; docs/quality.md)::

    python benchmarks/ema_study.py --data-dir ../shared/data/mnist --out runs/cos2e3 \
        --lr 2e-3 --lr-schedule cosine --decays 0.999

With the decay's warm-up (:mod:`problayers.train.averaging`) every decay above ~0.997 averages the
same in a 3,510-step run, so several decays are only worth comparing below that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True, help="run directory (must not hold a run)")
    p.add_argument("--decays", default="0.999", help="comma-separated EMA decays")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr-schedule", default="constant")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init", default="torch", help="ModelConfig.init")
    p.add_argument("--device", default="auto")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--synthetic", type=int, default=0)
    args = p.parse_args(argv)

    from problayers.train.averaging import EMA
    from problayers.train.checkpoint import write_json
    from problayers.vae import experiment
    from problayers.vae.models import ModelConfig

    decays = [float(d) for d in args.decays.split(",")]
    cfg = experiment.RunConfig(
        model=ModelConfig(init=args.init),
        epochs=args.epochs,
        seed=args.seed,
        lr_schedule=args.lr_schedule,
        lr=args.lr,
        device=args.device,
        data_dir=args.data_dir,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        synthetic=args.synthetic,
        progress=False,
        **experiment.step_options(args.fast, args.device),
    )
    run_dir = Path(args.out)
    if (run_dir / "checkpoint.pt").exists():
        raise SystemExit(f"--out: {run_dir} already holds a run")
    trainer = experiment._setup(cfg, run_dir)  # the CLI's own setup: same weights, batches, noise
    emas = {d: EMA(trainer.model, d) for d in decays}
    step, evaluate = trainer.step_fn, trainer.evaluate

    def step_and_average(batch):
        out = step(batch)
        for ema in emas.values():
            ema.update(trainer.model)
        return out

    def evaluate_all(model, epoch):
        record = evaluate(model, epoch)
        for d, ema in emas.items():
            record[f"ema{d}_test_neg_elbo"] = evaluate(ema.module, epoch)["test_neg_elbo"]
        return record

    trainer.step_fn, trainer.evaluate = step_and_average, evaluate_all
    write_json(run_dir / "config.json", cfg.to_json())  # a run directory `problayers evaluate` reads
    write_json(run_dir / "ema_study.json", {"decays": decays})
    history = trainer.fit()

    columns = ["test_neg_elbo"] + [f"ema{d}_test_neg_elbo" for d in decays]
    print("epoch  online  " + "  ".join(f"ema {d}" for d in decays))
    for r in history:
        print(f"{r['epoch']:5d}  " + "  ".join(f"{r[c]:7.2f}" for c in columns))
    print(json.dumps({"lr_schedule": cfg.lr_schedule, "final": {c: history[-1][c] for c in columns}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
