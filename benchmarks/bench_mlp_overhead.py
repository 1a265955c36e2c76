"""The library's own cost on a small model: an MLP VAE's eager training step built from the
layers against the same maths written by hand with ``torch.distributions``.

Both models have the same weights (copied), the same parameter count and the same operations:
an ``IndependentNormal`` encoder output with a ``KLDivergenceRegularizer`` (exact KL) and an
``IndependentBernoulli`` decoder output, against ``Independent(Normal(loc, softplus(raw)))``,
``rsample``, ``kl_divergence`` and ``Independent(Bernoulli(logits))`` (every distribution with
``validate_args=False``, as the layers build theirs). Each step is forward, backward and Adam.
The two steps are timed in alternating windows (ABAB...), and the report is the median over the
windows of each step's time and of their paired ratio, with the 10th-90th percentiles::

    .venv/bin/python benchmarks/bench_mlp_overhead.py                       # 784-300-300-40
    .venv/bin/python benchmarks/bench_mlp_overhead.py --hidden 64 --latent 8

One thread (``--threads``), so that the machine's other core does not enter the timing. The
difference is per-call Python: the layers add a few tensor operations (a reshape, a view, the
KL weight's product), measured by the profile in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import time

import torch
import torch.distributions as D
from torch import nn
from torch.nn import functional as F

import problayers as pl
from problayers.train.cpu import cpu_label


def _trunks(hidden: int, latent: int) -> tuple[nn.Sequential, nn.Sequential]:
    act = nn.LeakyReLU
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, hidden),
        act(),
        nn.Linear(hidden, hidden),
        act(),
        nn.Linear(hidden, 2 * latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, 784)
    )
    return encoder, decoder


class Layers(nn.Module):
    """The VAE from the library's layers (the encoder adds its KL)."""

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential, latent: int) -> None:
        super().__init__()
        prior = D.Independent(D.Normal(torch.zeros(latent), 1.0, validate_args=False), 1)
        kl = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)
        self.encoder = nn.Sequential(*encoder, pl.IndependentNormal(latent, activity_regularizer=kl))
        self.decoder = nn.Sequential(*decoder, pl.IndependentBernoulli((1, 28, 28)))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        px = self.decoder(self.encoder(x))  # batch (B,), event (1, 28, 28)
        return -px.log_prob(x).mean() + pl.collect_losses(self, clear=True)


class ByHand(nn.Module):
    """The same maths with torch.distributions, written out."""

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential, latent: int) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.register_buffer("zero", torch.zeros(latent))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, raw = self.encoder(x).chunk(2, -1)  # (B, L) each
        q = D.Independent(D.Normal(loc, F.softplus(raw), validate_args=False), 1)
        z = q.rsample()  # (B, L)
        logits = self.decoder(z).view(-1, 1, 28, 28)
        px = D.Independent(D.Bernoulli(logits=logits, validate_args=False), 3)
        prior = D.Independent(D.Normal(self.zero, 1.0, validate_args=False), 1)
        return -px.log_prob(x).mean() + D.kl_divergence(q, prior).mean()


def _step(model: nn.Module, x: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x).backward()
        opt.step()

    return step


def _q(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--latent", type=int, default=40)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20, help="steps per window")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, decoder = _trunks(args.hidden, args.latent)
    models = {
        "layers": Layers(copy.deepcopy(encoder), copy.deepcopy(decoder), args.latent),
        "by hand": ByHand(copy.deepcopy(encoder), copy.deepcopy(decoder), args.latent),
    }
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert len(set(sizes.values())) == 1, sizes
    x = torch.bernoulli(torch.full((args.batch, 1, 28, 28), 0.3))
    steps = {name: _step(m, x) for name, m in models.items()}
    for step in steps.values():  # warm-up
        for _ in range(10):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for w in range(args.windows):
        for name in list(steps) if w % 2 == 0 else list(steps)[::-1]:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(cpu_label())
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"{args.threads} thread(s); load {os.getloadavg()[0]:.2f}; MLP VAE 784-{args.hidden}-{args.hidden}-"
        f"{args.latent}, batch {args.batch}, {sizes['layers']} parameters; {args.windows} windows x "
        f"{args.steps} steps"
    )
    for name, t in times.items():
        spread = f"[{_q(t, 0.1) * 1e3:.3f}-{_q(t, 0.9) * 1e3:.3f}]"
        print(f"{name:8s} {statistics.median(t) * 1e3:8.3f} ms/step  {spread}")
    ratio = [a / b for a, b in zip(times["layers"], times["by hand"], strict=True)]
    print(f"layers / by hand: {statistics.median(ratio):.3f} [{_q(ratio, 0.1):.3f}-{_q(ratio, 0.9):.3f}]")


if __name__ == "__main__":
    main()
