"""Does a fast-path configuration train as well as fp32 eager? Test -ELBO after each epoch.

Trains the seed VAE from the same seed (same initial weights, same batches) once per
configuration: ``eager`` (the trainer's default step) and ``fast-OPTS`` (``make_train_step``
options, ``OPTS`` from ``compile``, ``cl``, ``bf16`` joined by ``+``; ``fast`` =
``fastest_defaults(device)``), and prints the test -ELBO (nats, analytic KL, sampling seeded as in
``problayers train``) of each after each epoch, with the difference to ``eager``. The issue's
criterion for a default: within 0.5 nats of fp32 eager after the full 15 epochs. Shorter runs
(``--epochs``, ``--train-subset``) give a quicker, noisier check; the sampling noise between two
runs that differ only in their random draws is part of the difference.

Example::

    python benchmarks/check_nats.py --data-dir /work/shared/data/mnist --epochs 2 \\
        --configs eager,fast-compile+cl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def train_one(config: str, args, train_u8, test_x) -> list[dict[str, Any]]:
    import torch
    from bench_train import _split_outside, fast_options

    from problayers.train.fastpath import make_train_step
    from problayers.train.trainer import Trainer, TrainerConfig
    from problayers.vae.data import EpochBatches
    from problayers.vae.evaluation import evaluate
    from problayers.vae.models import ModelConfig, build_model, vae_loss

    device = train_u8.device
    opts, outside = _split_outside(fast_options(config, device.type) if config != "eager" else {})
    torch.backends.cudnn.benchmark = outside["cudnn_benchmark"]
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig()).to(device)
    fused = outside["fused_adam"] or bool(opts.get("cuda_graph"))
    graph = bool(opts.get("cuda_graph"))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-3, **({"fused": True, "capturable": graph} if fused else {})
    )
    batches = EpochBatches(train_u8, args.batch_size, seed=args.seed)
    step_fn = None
    if config != "eager":
        step_fn = make_train_step(model, optimizer, vae_loss, **opts)

    def test_metrics(m, epoch):
        m.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(1234)
            out = evaluate(m.encode, m.decode, m.prior(), test_x, batch_size=500)
        m.train()
        return {"test_neg_elbo": out["neg_elbo"], "test_recon": out["recon"], "test_kl": out["kl"]}

    trainer = Trainer(
        model,
        optimizer,
        vae_loss,
        batches.epoch,
        TrainerConfig(epochs=args.epochs, progress=False),
        evaluate=test_metrics,
        step_fn=step_fn,
        log=lambda msg: print(f"[{config}] {msg}", file=sys.stderr, flush=True),
    )
    return trainer.fit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="eager,fast")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-subset", type=int, default=None, help="first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: 6000 synthetic digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)

    sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]
    import torch

    from problayers.vae import data as mnist

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.data_dir:
        train, _ = mnist.load_mnist(args.data_dir, split="train", download=False)
        test, _ = mnist.load_mnist(args.data_dir, split="test", download=False)
    else:
        train, _ = mnist.synthetic_mnist(6000, seed=args.seed)
        test, _ = mnist.synthetic_mnist(1000, seed=args.seed + 1)
    train = train[: args.train_subset] if args.train_subset else train
    test = test[: args.test_subset] if args.test_subset else test
    train_u8 = train.to(device)
    test_x = mnist.binarize_fixed(test).to(device)

    results: dict[str, Any] = {}
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        start = time.perf_counter()
        history = train_one(config, args, train_u8, test_x)
        results[config] = {"history": history, "seconds": time.perf_counter() - start}
    names = list(results)
    print(f"# torch {torch.__version__}, device {device}, {len(train)} train / {len(test)} test images, "
          f"{args.epochs} epochs, seed {args.seed}")  # fmt: skip
    print("epoch  " + "  ".join(f"{n:>16}" for n in names) + ("  (test -ELBO, nats; diff vs eager)"))
    for e in range(args.epochs):
        cells = []
        for n in names:
            value = results[n]["history"][e]["test_neg_elbo"]
            diff = value - results["eager"]["history"][e]["test_neg_elbo"] if "eager" in results else 0.0
            cells.append(f"{value:8.2f} ({diff:+.2f})" if n != "eager" else f"{value:16.2f}")
        print(f"{e + 1:5d}  " + "  ".join(f"{c:>16}" for c in cells))
    for n in names:
        print(f"# {n}: {results[n]['seconds']:.0f} s in all (evaluation included)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
