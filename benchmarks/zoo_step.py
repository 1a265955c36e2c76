"""Time the eager training step of a zoo model (forward, objective, backward, Adam) on random
binary images: the median over ``--repeats`` windows of ``--steps`` steps, after warm-up.

    python benchmarks/zoo_step.py --model mlp --prior vamp --objective iwae --num-samples 5

Run it with ``PYTHONPATH`` pointing at another checkout's ``src`` to compare two versions of the
code on the same machine (alternate the two, several times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import problayers
from problayers.train.cpu import cpu_label
from problayers.vae.models import ModelConfig, build_model, vae_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--prior", default="normal")
    parser.add_argument("--objective", default="elbo")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    given = {"prior": args.prior, "objective": args.objective, "num_samples": args.num_samples}
    defaults = {"prior": "normal", "objective": "elbo", "num_samples": 1}
    # only what differs from the defaults: for_model refuses an option a model does not use
    cfg = ModelConfig.for_model(args.model, **{k: v for k, v in given.items() if v != defaults[k]})
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = (torch.rand(args.batch_size, 1, 28, 28) < 0.3).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = vae_loss(model, x)
        (out[0] if isinstance(out, tuple) else out).backward()
        optimizer.step()

    for _ in range(5):
        step()
    windows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        windows.append((time.perf_counter() - start) / args.steps * 1e3)
    print(
        f"{problayers.__file__}: {cpu_label()}, torch {torch.__version__}, "
        f"{args.threads} threads; step ms median {statistics.median(windows):.1f} "
        f"(min {min(windows):.1f}, max {max(windows):.1f})"
    )


if __name__ == "__main__":
    main()
