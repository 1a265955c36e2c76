"""Probabilistic regression in 1-D: no uncertainty, aleatoric, epistemic, both (TFP's example).

Data (:func:`make_dataset`): ``x ~ Uniform(-20, 60)``, ``y = 0.125 x (1 + sin x) + 5 + s(x) eps``
with ``eps ~ N(0, 1)`` and a noise std growing linearly with x, ``s(x) = 3 (0.1 + g)``,
``g = (x + 20) / 80`` in ``[0, 1]`` (0.3 at the left end, 3.3 at the right). 150 training points.

Every model is linear in the known basis ``phi(x) = [x_n, x_n^2, sin x, x_n sin x]`` with
``x_n = (x - 20) / 40`` in ``[-1, 1]`` (:class:`Features`), so that the mean is representable
and the uncertainty, the point of the demo, is what the four cases differ in:

1. ``no_uncertainty``: ``Linear(4, 1)`` -> ``Normal(loc, 1)``;
2. ``aleatoric``: ``Linear(4, 2)`` -> ``Normal(loc, 1e-3 + softplus(raw))`` (learned noise);
3. ``epistemic``: ``DenseVariational(4, 1)`` (mean-field posterior, trainable prior,
   ``kl_weight = 1 / N``) -> ``Normal(loc, 1)``;
4. ``both``: ``DenseVariational(4, 2)`` -> ``Normal(loc, 1e-3 + softplus(raw))``.

Each is fit by full-batch Adam on ``-mean log p(y | x) + collect_losses(model)`` and plotted to
``regression_<case>.png`` (data, mean, +-2 std bands; posterior draws for the variational
cases). :func:`run` returns the held-out numbers and writes them to ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from ..layers import DenseVariational, DistributionLambda, posterior_mean_field, prior_trainable
from ..losses import collect_losses
from ..numerics import logsumexp
from ..train.checkpoint import atomic_write, write_json

__all__ = ["CASES", "Features", "build_model", "main", "make_dataset", "noise_std", "run"]

W0, B0 = 0.125, 5.0
X_RANGE = (-20.0, 60.0)
N_TRAIN, N_TEST = 150, 1000
DEFAULT_EPOCHS = 1000
LEARNING_RATE = 0.05
#: Posterior draws for the variational cases' predictive (NLL, bands, spread).
N_DRAWS = 200
CASES = ("no_uncertainty", "aleatoric", "epistemic", "both")


def noise_std(x: torch.Tensor) -> torch.Tensor:
    """The true noise std ``3 (0.1 + g)``, ``g = (x - lo) / (hi - lo)``; same shape as ``x``."""
    g = (x - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0])
    return 3.0 * (0.1 + g)


def make_dataset(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of the heteroscedastic data set: ``x`` and ``y``, each ``(n, 1)`` float32."""
    lo, hi = X_RANGE
    x = lo + (hi - lo) * torch.rand(n, 1, generator=generator)  # (n, 1)
    eps = torch.randn(n, 1, generator=generator)  # (n, 1)
    y = W0 * x * (1.0 + torch.sin(x)) + B0 + noise_std(x) * eps  # (n, 1)
    return x, y


class Features(nn.Module):
    """``(*B, 1)`` raw x -> ``(*B, 4)`` basis ``[x_n, x_n^2, sin x, x_n sin x]``,
    ``x_n = (x - 20) / 40``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        center, half = (X_RANGE[0] + X_RANGE[1]) / 2, (X_RANGE[1] - X_RANGE[0]) / 2
        xn = (x - center) / half  # (*B, 1)
        s = torch.sin(x)
        return torch.cat([xn, xn.square(), s, xn * s], dim=-1)  # (*B, 4)


class NormalHead(DistributionLambda):
    """``(*B, 1)`` or ``(*B, 2)`` -> ``Normal`` with batch ``(*B, 1)``, in standardized units:
    ``loc = y_mean + y_std * t[..., :1]``; scale 1 (one input) or
    ``y_std * (1e-3 + softplus(t[..., 1:]))`` (two inputs)."""

    def __init__(self, learned_scale: bool, y_mean: float, y_std: float) -> None:
        super().__init__()
        self.learned_scale, self.y_mean, self.y_std = learned_scale, y_mean, y_std

    def make_distribution(self, t: torch.Tensor) -> D.Normal:
        loc = self.y_mean + self.y_std * t[..., :1]  # (*B, 1)
        if not self.learned_scale:
            return D.Normal(loc, torch.ones_like(loc))
        return D.Normal(loc, self.y_std * (1e-3 + F.softplus(t[..., 1:])))


def build_model(case: str, y_mean: float = 0.0, y_std: float = 1.0, n_train: int = N_TRAIN) -> nn.Sequential:
    """The model of ``case`` (one of :data:`CASES`): ``(N, 1)`` x -> ``Normal`` with batch ``(N, 1)``.

    ``y_mean``/``y_std`` standardize the output (the training targets' mean and std)."""
    if case not in CASES:
        raise ValueError(f"case: expected one of {CASES}, got {case!r}")
    learned_scale = case in ("aleatoric", "both")
    outputs = 2 if learned_scale else 1
    dense: nn.Module
    if case in ("epistemic", "both"):
        dense = DenseVariational(4, outputs, posterior_mean_field, prior_trainable, kl_weight=1.0 / n_train)
    else:
        dense = nn.Linear(4, outputs)
    return nn.Sequential(Features(), dense, NormalHead(learned_scale, y_mean, y_std))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: Iterable) -> float:
    """Full-batch Adam on ``-mean log p(y | x) + added losses``; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss = torch.zeros(())
    for _ in steps:
        opt.zero_grad()
        loss = -model(x).log_prob(y).mean() + collect_losses(model, clear=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-draw predictive means and stds at ``x``: each ``(draws, N)`` (one draw if deterministic)."""
    outs = [model(x) for _ in range(draws)]
    collect_losses(model, clear=True)
    return torch.stack([o.mean[..., 0] for o in outs]), torch.stack([o.stddev[..., 0] for o in outs])


def _heldout_nll(means: torch.Tensor, stds: torch.Tensor, y: torch.Tensor) -> float:
    """``-mean_n log (1/S) sum_s N(y_n; mean_sn, std_sn)`` (the posterior predictive's NLL)."""
    lp = D.Normal(means, stds).log_prob(y[:, 0])  # (S, N)
    return float(-(logsumexp(lp, 0) - math.log(lp.shape[0])).mean())


def _plot(path: Path, case: str, x, y, grid, means, stds) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend state (renders with Agg)

    g = grid[:, 0].numpy()
    mean = means.mean(0)  # (G,) predictive mean (mixture over draws)
    std = (stds.square().mean(0) + means.var(0, unbiased=False)).sqrt()  # (G,) predictive std
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.scatter(x[:, 0].numpy(), y[:, 0].numpy(), s=8, color="0.4", label="data")
    if means.shape[0] > 1:
        for draw in means[:15]:
            ax.plot(g, draw.numpy(), color="tab:red", lw=0.6, alpha=0.5)
        ax.plot([], [], color="tab:red", lw=0.6, label="posterior draws (mean)")
        spread = means.std(0)  # (G,) the epistemic part
        band = (mean - 2 * spread).numpy(), (mean + 2 * spread).numpy()
        ax.fill_between(g, *band, color="tab:red", alpha=0.35, label="mean +- 2 std over draws")
    ax.plot(g, mean.numpy(), color="tab:blue", lw=2, label="predictive mean")
    band = (mean - 2 * std).numpy(), (mean + 2 * std).numpy()
    ax.fill_between(g, *band, color="tab:blue", alpha=0.2, label="mean +- 2 std (predictive)")
    truth = W0 * grid[:, 0] * (1 + torch.sin(grid[:, 0])) + B0
    ax.plot(g, truth.numpy(), color="k", lw=0.8, ls=":", label="true mean")
    ax.axvspan(*X_RANGE, color="0.93", zorder=-1, label="training range")
    ax.set(title=f"regression: {case.replace('_', ' ')}", xlabel="x", ylabel="y", ylim=(-15, 30))
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def run(
    out_dir: str | Path, *, epochs: int | None = None, seed: int = 0, show_progress: bool = False
) -> dict:
    """Fit and plot the four cases; write ``regression_<case>.png`` and ``metrics.json`` to ``out_dir``.

    Args:
        out_dir: output directory (created).
        epochs: full-batch Adam steps per case (default 1000).
        seed: seeds the data and the models (the global RNG is restored afterwards).
        show_progress: a tqdm bar per case.

    Returns:
        ``nll_<case>``: held-out NLL per point (1000 fresh points; variational cases: of the
        posterior predictive over 200 draws); ``aleatoric_std_rel_error``: mean
        ``|learned std / true std - 1|`` of the aleatoric model on a grid over the data range;
        ``epistemic_spread_inside``/``_outside``: the std over posterior draws of the
        epistemic model's mean, averaged over the data range and over ``x`` in ``[65, 85]``;
        ``files``: the PNGs written.
    """
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if show_progress:
        from tqdm.auto import tqdm

    results: dict = {}
    files: list[str] = []
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(seed)
        x, y = make_dataset(N_TRAIN, gen)
        x_test, y_test = make_dataset(N_TEST, gen)
        grid = torch.linspace(X_RANGE[0] - 10, X_RANGE[1] + 25, 400)[:, None]  # (G, 1)
        inside = (grid[:, 0] >= X_RANGE[0]) & (grid[:, 0] <= X_RANGE[1])
        outside = (grid[:, 0] >= 65) & (grid[:, 0] <= 85)
        for i, case in enumerate(CASES):
            torch.default_generator.manual_seed(seed * 1000 + i)  # the CPU's, which is forked
            model = build_model(case, float(y.mean()), float(y.std()))
            steps = tqdm(range(epochs), desc=case, leave=False) if show_progress else range(epochs)
            results[f"train_loss_{case}"] = _fit(model, x, y, steps)
            draws = N_DRAWS if case in ("epistemic", "both") else 1
            means, stds = _predict(model, x_test, draws)
            results[f"nll_{case}"] = _heldout_nll(means, stds, y_test)
            g_means, g_stds = _predict(model, grid, draws)
            if case == "aleatoric":
                rel = g_stds[0, inside] / noise_std(grid[inside, 0]) - 1
                results["aleatoric_std_rel_error"] = float(rel.abs().mean())
            if case == "epistemic":
                spread = g_means.std(0)  # (G,)
                results["epistemic_spread_inside"] = float(spread[inside].mean())
                results["epistemic_spread_outside"] = float(spread[outside].mean())
            files.append(str(_plot(out_dir / f"regression_{case}.png", case, x, y, grid, g_means, g_stds)))
    results["files"] = files
    write_json(out_dir / "metrics.json", results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m problayers.demos.regression [--out DIR] [--epochs N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/regression", help="output directory")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="Adam steps per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs <= 0:
        parser.error(f"--epochs: expected a positive int, got {args.epochs}")
    results = run(args.out, epochs=args.epochs, seed=args.seed, show_progress=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
