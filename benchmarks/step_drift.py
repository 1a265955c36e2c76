"""Why a CPU training step slows down as the model trains, and what the two remedies give back.

torch's CPU ``exp`` and ``sqrt`` of fp32 go through MKL's vector maths on the x86 wheels, which
takes a slow path for arguments whose exp underflows and for zeros under sqrt. A trained
mixture prior's components lie far apart (``logsumexp`` exponentiates differences of hundreds of
nats), and Adam's per-parameter loop takes the sqrt of second moments that are exactly zero for
parameters without gradient. This script times

1. ``exp`` and ``sqrt`` of 100k fp32 values in the ranges that matter (one thread), and
2. training steps of a run's trained model and of a fresh one (same shapes, same batches), with
   torch's ``logsumexp`` or :func:`problayers.numerics.logsumexp`, and Adam's loop or its fused
   kernel: the eight steps take turns batch by batch, so that the machine's slow spells (this
   VM has them, ~30%) fall on all alike; the median and quartiles of each.

    python benchmarks/step_drift.py runs/zoo/mlp-vamp-iwae5 --precision bf16

The run is any ``problayers train`` output directory (its config and checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch

from problayers import numerics
from problayers.train.allocator import retain_freed_memory
from problayers.train.cpu import cpu_label
from problayers.train.fastpath import make_train_step
from problayers.vae import data as mnist
from problayers.vae.experiment import load_run
from problayers.vae.models import build_model, vae_loss


def _us(fn, x, repeats: int = 100) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats * 1e6


def kernels() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = 100_000
    print(f"\nexp and sqrt of {n} fp32 values, 1 thread (us per call)")
    print("| values | exp | sqrt |\n|---|---|---|")
    for label, lo, hi in (
        ("[-5, 0] (ordinary)", -5, 0),
        ("[-87, -85] (still normal results)", -87, -85),
        ("[-100, -88] (subnormal results)", -100, -88),
        ("[-1000, -110] (results 0)", -1000, -110),
    ):
        x = torch.empty(n).uniform_(lo, hi)
        print(f"| {label} | {_us(torch.exp, x):.0f} | - |")
    for label, x in (("ones", torch.ones(n)), ("zeros", torch.zeros(n))):
        print(f"| {label} | - | {_us(torch.sqrt, x):.0f} |")
    torch.set_num_threads(threads)


def steps(run: str, precision: str, n_steps: int) -> None:
    retain_freed_memory()  # as `problayers train` on a CPU
    trained, cfg, info = load_run(run, "cpu")
    if cfg.synthetic or not cfg.data_dir:
        raise SystemExit(f"{run}: expected a run trained on MNIST (a data_dir), got synthetic data")
    images, _ = mnist.load_mnist(cfg.data_dir, split="train")
    images = images[: cfg.batch_size * (n_steps + 5)]
    batches = list(mnist.EpochBatches(images, cfg.batch_size, seed=0).epoch(0))
    torch.manual_seed(0)
    models = {f"trained (epoch {info['epoch']})": trained, "fresh": build_model(cfg.model)}
    floors = {"torch.logsumexp": math.inf, "numerics.logsumexp": numerics.UNDERFLOW_FLOOR}
    configs = [(name, lse, adam) for lse in floors for adam in ("Adam loop", "Adam fused") for name in models]
    built = []
    for name, _, adam in configs:
        twin = copy.deepcopy(models[name]).train()
        opt = torch.optim.Adam(twin.parameters(), lr=1e-5, fused=True if adam == "Adam fused" else None)
        built.append(make_train_step(twin, opt, vae_loss, precision=precision))
    times: list[list[float]] = [[] for _ in configs]
    for i, b in enumerate(batches[: n_steps + 5]):
        for k, (step, (_, lse, _)) in enumerate(zip(built, configs, strict=True)):
            numerics.UNDERFLOW_FLOOR = floors[lse]  # inf: max - inf = -inf, nothing raised: torch's own
            start = time.perf_counter()
            step(b)
            if i >= 5:  # warm-up
                times[k].append(time.perf_counter() - start)
    numerics.UNDERFLOW_FLOOR = floors["numerics.logsumexp"]
    print(f"\ntraining step of {run} ({cfg.model.name}, batch {cfg.batch_size}, {precision}), ms: the"
          f" {len(configs)} steps take turns, step by step, over {n_steps} batches")  # fmt: skip
    print("| model | logsumexp | Adam | median | quartiles |\n|---|---|---|---|---|")
    for (name, lse, adam), ts in zip(configs, times, strict=True):
        q = [v * 1e3 for v in statistics.quantiles(ts, n=4)]  # quartiles
        print(f"| {name} | {lse} | {adam} | {q[1]:.2f} | {q[0]:.2f} - {q[2]:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a problayers train output directory")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=100, help="timed steps per configuration")
    args = p.parse_args()
    print(f"# {cpu_label()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    kernels()
    steps(args.run, args.precision, args.steps)


if __name__ == "__main__":
    main()
