"""A Bayesian neural-network classifier on two moons, with ``pl.DenseFlipout`` layers.

What it shows: a 2-32-32-2 network whose kernels have mean-field normal posteriors (Flipout
perturbations; the biases are point estimates, TFP's default), trained on 2-D "two moons" by
minimizing ``cross-entropy + KL / N`` (the negative ELBO per example; each layer records its
``KL(q(w) || p(w)) / N``, summed by ``pl.collect_losses``). Predictions average the softmax over
weight draws. It prints the test accuracy, the predictive entropy (nats; at most ln 2 = 0.693)
on the test points and on a circle far from the data, and its epistemic part, the mutual
information between the label and the weights (the entropy of the mean prediction less the
draws' mean entropy): the weight draws disagree more far from the data, so it is larger there.
The predictive probability and entropy over the plane go to ``OUT/bayesian_classifier.png``.
``--to-bayesian`` instead trains an ordinary ``nn.Linear`` network for half the steps and makes
it Bayesian with ``pl.to_bayesian`` (its weights become the posterior means) for the other half.

Run (seconds)::

    .venv/bin/python examples/bayesian_classifier.py --steps 2000 --out runs/examples
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import problayers as pl

DRAWS = 50  # weight draws per prediction


def two_moons(n: int, gen: torch.Generator, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``(n, 2)`` of two interleaved half circles, labels ``(n,)`` in {0, 1}."""
    labels = torch.randint(0, 2, (n,), generator=gen)
    angle = math.pi * torch.rand(n, generator=gen)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], 1)
    x = torch.where(labels[:, None] == 0, upper, lower) + noise * torch.randn(n, 2, generator=gen)
    return x - torch.tensor([0.5, 0.25]), labels  # centred


def flipout_net(n_train: int) -> nn.Sequential:
    kl = 1 / n_train  # the data term is a mean over the batch, so the KL is divided by N
    return nn.Sequential(
        pl.DenseFlipout(2, 32, kl_weight=kl, activation=torch.relu),
        pl.DenseFlipout(32, 32, kl_weight=kl, activation=torch.relu),
        pl.DenseFlipout(32, 2, kl_weight=kl),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, gen) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx]) + pl.collect_losses(model, clear=True)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def predictive(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(N, 2)`` (the softmax averaged over ``DRAWS`` weight draws) and the
    mutual information between the label and the weights ``(N,)``: the predictive entropy less
    the mean entropy of the draws, the part of the uncertainty that comes from the weights."""
    draws = torch.stack([model(x).softmax(-1) for _ in range(DRAWS)])  # (DRAWS, N, 2)
    pl.clear_losses(model)
    probs = draws.mean(0)
    return probs, entropy(probs) - entropy(draws).mean(0)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--to-bayesian", action="store_true", help="pl.to_bayesian of a trained nn.Linear net"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="where the picture goes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x, y = two_moons(1000, gen)
    x_test, y_test = two_moons(1000, gen)
    if args.to_bayesian:
        net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        train(net, x, y, args.steps // 2, args.batch_size, gen)
        model = pl.to_bayesian(net, kl_weight=1 / len(x), estimator="flipout", init_scale=0.05)
        train(model, x, y, args.steps - args.steps // 2, args.batch_size, gen)
    else:
        model = flipout_net(len(x))
        train(model, x, y, args.steps, args.batch_size, gen)
    print("layers:", ", ".join(type(m).__name__ for m in model))

    probs, mi = predictive(model, x_test)
    angle = 2 * math.pi * torch.rand(500, generator=gen)
    far = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)  # a circle of radius 4 around the data
    far_probs, far_mi = predictive(model, far)
    print(f"test accuracy: {float((probs.argmax(-1) == y_test).float().mean()):.3f}")
    print(f"predictive entropy on test points: {float(entropy(probs).mean()):.3f} nats")
    print(f"predictive entropy far from the data: {float(entropy(far_probs).mean()):.3f} nats")
    print(f"mutual information on test points: {float(mi.mean()):.4f} nats")
    print(f"mutual information far from the data: {float(far_mi.mean()):.4f} nats")

    from matplotlib.figure import Figure  # no pyplot: nothing global, renders with Agg

    g = torch.linspace(-4.5, 4.5, 100)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    p, _ = predictive(model, torch.stack([gx.flatten(), gy.flatten()], 1))
    fig = Figure(figsize=(11, 4.5))
    for i, (title, values, cmap) in enumerate(
        [("P(class 1)", p[:, 1], "RdBu_r"), ("predictive entropy (nats)", entropy(p), "viridis")]
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.pcolormesh(
            gx.numpy(), gy.numpy(), values.reshape(gx.shape).numpy(), cmap=cmap, shading="auto"
        )
        pts, labels = x[:300].numpy(), y[:300].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="bwr", s=4, edgecolors="k", linewidths=0.2)
        ax.set(title=title, aspect="equal")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "bayesian_classifier.png", dpi=80)
    print(f"picture: {args.out / 'bayesian_classifier.png'}")


if __name__ == "__main__":
    main()
