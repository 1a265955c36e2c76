"""Regression with probabilistic layers: TFP's TF Dev Summit 2019 demo, with problayers.

What it shows: four models of ``y`` given ``x`` on the same noisy 1-D data, each trained by
maximum likelihood (plus the weights' KL where they are uncertain), each a
``torch.distributions.Normal`` per point because its last layer is a distribution layer:

1. no uncertainty: ``nn.Linear(1, 1)`` -> ``Normal(loc, 1)``;
2. aleatoric (noise in the data): ``nn.Linear(1, 2)`` -> ``Normal(loc, softplus(...))``;
3. epistemic (uncertain weights): ``pl.DenseVariational(1, 1)`` (a mean-field posterior and a
   trainable prior, ``kl_weight = 1 / N``) -> ``Normal(loc, 1)``;
4. both: ``pl.DenseVariational(1, 2)`` -> ``Normal(loc, softplus(...))``.

As in the talk, every model is linear in ``x``, whose noise grows with ``x``; ``problayers
regression`` (``problayers.demos.regression``) fits a richer basis and checks the numbers.
It prints each model's held-out NLL per point (``nll <case>: ...``; the variational ones: of the
posterior predictive over 100 weight draws) and draws all four into ``OUT/regression.png``.

Run (seconds)::

    .venv/bin/python examples/regression.py --epochs 1000 --out runs/examples
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

import problayers as pl

W0, B0, X_RANGE = 0.125, 5.0, (-20.0, 60.0)  # the talk's data: y = w0 x (1 + sin x) + b0 + noise
CASES = ("no_uncertainty", "aleatoric", "epistemic", "both")
DRAWS = 100  # weight draws for the variational models' predictive


def load_dataset(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``x, y``, each ``(n, 1)``; the noise std ``3 (0.25 + g^2)`` grows with
    ``g = (x + 20) / 80`` in ``[0, 1]``."""
    lo, hi = X_RANGE
    x = lo + (hi - lo) * torch.rand(n, 1, generator=gen)
    g = (x - lo) / (hi - lo)
    y = W0 * x * (1 + torch.sin(x)) + B0 + 3 * (0.25 + g**2) * torch.randn(n, 1, generator=gen)
    return x, y


class Standardize(nn.Module):
    """``x`` -> ``(x - 20) / 40`` in ``[-1, 1]`` over the data (the talk fed raw ``x``; Adam
    converges in far fewer steps on the scaled one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - (X_RANGE[0] + X_RANGE[1]) / 2) / ((X_RANGE[1] - X_RANGE[0]) / 2)


def build(case: str, n_train: int) -> nn.Sequential:
    """``(N, 1)`` x -> a ``Normal`` with batch ``(N, 1)``."""
    learned_scale = case in ("aleatoric", "both")
    outputs = 2 if learned_scale else 1
    if case in ("epistemic", "both"):
        dense = pl.DenseVariational(
            1, outputs, pl.posterior_mean_field, pl.prior_trainable, kl_weight=1 / n_train
        )
    else:
        dense = nn.Linear(1, outputs)
    if learned_scale:
        head = pl.DistributionLambda(lambda t: D.Normal(t[..., :1], 1e-3 + F.softplus(t[..., 1:])))
    else:
        head = pl.DistributionLambda(lambda t: D.Normal(t, 1.0))
    return nn.Sequential(Standardize(), dense, head)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """Full-batch Adam on ``-mean log p(y | x)`` plus the recorded KL terms; the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        loss = -model(x).log_prob(y).mean() + pl.collect_losses(model, clear=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and stds at ``x`` for each weight draw: each ``(draws, N)``."""
    outs = [model(x) for _ in range(draws)]
    pl.clear_losses(model)
    return torch.stack([o.mean[:, 0] for o in outs]), torch.stack([o.stddev[:, 0] for o in outs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000, help="full-batch Adam steps per model")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="where regression.png goes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    x, y = load_dataset(150, gen)
    x_test, y_test = load_dataset(1000, gen)
    grid = torch.linspace(X_RANGE[0] - 10, X_RANGE[1] + 10, 300)[:, None]
    torch.manual_seed(args.seed)

    from matplotlib.figure import Figure  # no pyplot: nothing global, renders with Agg

    fig = Figure(figsize=(12, 7))
    for i, case in enumerate(CASES):
        model = build(case, len(x))
        fit(model, x, y, args.epochs, args.lr)
        draws = DRAWS if case in ("epistemic", "both") else 1
        means, stds = predict(model, x_test, draws)
        log_p = D.Normal(means, stds).log_prob(y_test[:, 0])  # (draws, N)
        nll = -(torch.logsumexp(log_p, 0) - math.log(draws)).mean()  # the predictive's NLL per point
        print(f"nll {case}: {float(nll):.3f}")

        means, stds = predict(model, grid, draws)
        ax = fig.add_subplot(2, 2, i + 1)
        ax.scatter(x[:, 0], y[:, 0], s=6, color="0.5", label="data")
        for m, s in list(zip(means, stds, strict=True))[:15]:
            ax.plot(grid[:, 0], m, color="tab:red", lw=0.8, alpha=0.6 if draws > 1 else 1)
            if case in ("aleatoric", "both"):
                ax.plot(grid[:, 0], m + 2 * s, color="tab:green", lw=0.5, alpha=0.6)
                ax.plot(grid[:, 0], m - 2 * s, color="tab:green", lw=0.5, alpha=0.6)
        ax.set(title=f"{case.replace('_', ' ')} (held-out NLL {float(nll):.2f})", ylim=(-10, 25))
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "regression.png", dpi=80)
    print(f"picture: {args.out / 'regression.png'}")


if __name__ == "__main__":
    main()
