"""Eager vs ``torch.compile`` of a user's own model, side by side in one run.

What a PyTorch user does with problayers: build a VAE from the layers, write the loss, and
``torch.compile`` it. Two models:

* ``mlp``: an MLP VAE on 784-pixel binarized images, 784-256-256 -> IndependentNormal(16)
  with a Monte Carlo KL regularizer, 16-256-256-784 -> IndependentBernoulli(784), batch 100;
* ``mlp-small``: the same at width 64 and latent 8 (a step of well under a millisecond of
  arithmetic, where Python and dispatch overhead, which compile removes, weigh most);
* ``seed``: the seed VAE (TFP's conv architecture, MultivariateNormalTriL(16)), batch 256.

Each model runs in its own subprocess, one copy of it per mode with the same initial weights:
``eager`` (the plain step), ``compile`` (``torch.compile(loss_fn, fullgraph=True)``: the
forward, loss and backward as one graph; the Adam step eager) and ``compile+opt`` (the Adam
step compiled too). Throughput: images/s, the median
of ``--windows`` windows of ``--steps`` optimizer steps after ``--warmup`` steps (compilation
included in the warm-up); the windows of the modes alternate, and each ratio to eager is the
median of the paired windows' ratios. The data are random binary images (speed does not depend on them).

Example (the command docs/benchmarks.md records)::

    python benchmarks/bench_compile.py --models mlp,seed --json runs/bench_compile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: ``compile+opt``: the optimizer step compiled as well (``torch.compile(optimizer.step)``,
#: PyTorch's recipe for the whole step).
MODES = ("eager", "compile", "compile+opt")
sys.path.insert(0, str(HERE))


#: MLP sizes: (hidden width, latent size).
MLP_SIZES = {"mlp": (256, 16), "mlp-small": (64, 8)}


def build(model: str):
    import torch
    import torch.distributions as D
    from torch import nn

    import problayers as pl

    if model == "seed":
        from problayers.vae.models import ModelConfig, build_model

        return build_model(ModelConfig()), (1, 28, 28), 256
    if model not in MLP_SIZES:
        raise SystemExit(f"--models: expected seed or one of {sorted(MLP_SIZES)}, got {model!r}")
    h, d = MLP_SIZES[model]
    prior = D.Independent(D.Normal(torch.zeros(d), 1.0), 1)
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, h),
        nn.ReLU(),
        nn.Linear(h, h),
        nn.ReLU(),
        nn.Linear(h, pl.IndependentNormal.params_size(d)),
        pl.IndependentNormal(d, activity_regularizer=pl.KLDivergenceRegularizer(prior)),
    )
    decoder = nn.Sequential(
        nn.Linear(d, h),
        nn.ReLU(),
        nn.Linear(h, h),
        nn.ReLU(),
        nn.Linear(h, 784),
        pl.IndependentBernoulli((1, 28, 28)),
    )
    return nn.Sequential(encoder, decoder), (1, 28, 28), 100


def run_model(model_name: str, steps: int, windows: int, warmup: int, threads: int) -> list[dict]:
    """Both modes of one model in this process, their timed windows interleaved (eager,
    compile, eager, ...) so that a background load hits both alike."""
    import copy

    import torch

    import problayers as pl

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, shape, batch = build(model_name)
    data = [(torch.rand(batch, *shape) < 0.3).float() for _ in range(8)]
    runs = {}
    for mode in MODES:
        net = copy.deepcopy(model)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)

        def loss_fn(x, net=net):
            rv_x = net(x)
            return -rv_x.log_prob(x).mean() + pl.collect_losses(net, clear=True)

        forward = loss_fn if mode == "eager" else torch.compile(loss_fn, fullgraph=True)
        optimizer_step = torch.compile(optimizer.step) if mode == "compile+opt" else optimizer.step

        def step(i: int, forward=forward, optimizer=optimizer, optimizer_step=optimizer_step) -> None:
            optimizer.zero_grad(set_to_none=True)
            forward(data[i % len(data)]).backward()
            optimizer_step()

        start = time.perf_counter()
        for i in range(warmup):
            step(i)
        runs[mode] = {"step": step, "warmup_s": time.perf_counter() - start, "rates": []}
    for _ in range(windows):
        for run in runs.values():
            start = time.perf_counter()
            for i in range(steps):
                run["step"](i)
            run["rates"].append(steps * batch / (time.perf_counter() - start))
    eager = runs["eager"]["rates"]
    ratios = {m: [r / e for r, e in zip(run["rates"], eager, strict=True)] for m, run in runs.items()}
    return [
        {
            "model": model_name,
            "mode": mode,
            "batch": batch,
            "img_per_s": statistics.median(run["rates"]),
            "min": min(run["rates"]),
            "max": max(run["rates"]),
            "warmup_s": run["warmup_s"],
            "ratio_to_eager_median": statistics.median(ratios[mode]),
        }
        for mode, run in runs.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,seed", help="comma-separated: mlp, seed")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows (the median is reported)")
    p.add_argument("--warmup", type=int, default=5, help="steps before timing (compilation included)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: MODEL in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_model(args.one, args.steps, args.windows, args.warmup, args.threads)))
        return
    import torch
    from bench_train import cpu_model

    print(f"# CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads")
    results = []
    for model in args.models.split(","):
        cmd = [sys.executable, __file__, "--one", model, "--steps", str(args.steps)]
        cmd += ["--windows", str(args.windows), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for r in json.loads(out.strip().splitlines()[-1]):
            results.append(r)
            print(
                f"{model:9s} {r['mode']:11s} batch {r['batch']:4d}: {r['img_per_s']:9.1f} img/s "
                f"({r['min']:.1f}-{r['max']:.1f}), warm-up {r['warmup_s']:.1f} s, x eager "
                f"{r['ratio_to_eager_median']:.2f} (median of the paired windows' ratios)",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
