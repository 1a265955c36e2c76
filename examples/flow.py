"""A masked autoregressive flow (MAF) fitted to a 2-D density, with ``pl.AutoregressiveTransform``.

What it shows: two ``pl.AutoregressiveTransform`` layers (each a MADE, ``pl.AutoregressiveNetwork``,
giving a shift and a log-scale per dimension; the second in the reverse order, so each dimension
is transformed given the other) stacked on a standard normal in ``nn.Sequential``. The model's
output is a ``TransformedDistribution`` over R^2: training minimizes its negative log-likelihood
``-log_prob(x)`` by Adam on samples of TFP's "banana" (``x2 ~ N(0, 4)``, ``x1 ~ N(x2^2 / 4, 1)``,
the density of ``tfp.layers.AutoregressiveTransform``'s example). It prints the held-out NLL (nats
per point) before and after training and the best possible one (the density's entropy, 3.531), and
draws the data, the flow's samples and its density into ``OUT/flow.png``.

Run (seconds)::

    .venv/bin/python examples/flow.py --steps 3000 --out runs/examples
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.distributions as D
from torch import nn

import problayers as pl


def banana(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points ``(n, 2)`` of TFP's example density (``tfp.layers.AutoregressiveTransform``'s
    docstring): ``x2 ~ N(0, 2^2)``, ``x1 | x2 ~ N(x2^2 / 4, 1)``."""
    x2 = 2 * torch.randn(n, generator=gen)
    x1 = torch.randn(n, generator=gen) + x2 * x2 / 4
    return torch.stack([x1, x2], 1)


# Its differential entropy, the lowest NLL any model can reach on average: H(x2) + H(x1 | x2).
TRUE_ENTROPY = 0.5 * math.log(2 * math.pi * math.e * 4) + 0.5 * math.log(2 * math.pi * math.e)


def made(order: str) -> pl.AutoregressiveNetwork:
    return pl.AutoregressiveNetwork(params=2, event_shape=2, hidden_units=(64, 64), input_order=order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="where flow.png goes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    train, test = banana(4000, gen), banana(2000, gen)

    base = D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1)  # the flow's input: N(0, I) on R^2
    flow = nn.Sequential(
        pl.AutoregressiveTransform(made("left-to-right")),
        pl.AutoregressiveTransform(made("right-to-left")),
    )

    def nll(x: torch.Tensor) -> torch.Tensor:
        return -flow(base).log_prob(x).mean()  # flow(base): a TransformedDistribution over R^2

    with torch.no_grad():
        print(f"initial NLL: {float(nll(test)):.3f} nats")
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(args.steps):
        loss = nll(train[torch.randint(0, len(train), (args.batch_size,), generator=gen)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        print(f"final NLL: {float(nll(test)):.3f} nats (training batch: {float(loss):.3f})")
        print(f"best possible NLL (the density's entropy): {TRUE_ENTROPY:.3f} nats")
        samples = flow(base).sample((2000,))  # (2000, 2)
        gx, gy = torch.meshgrid(torch.linspace(-3, 10, 150), torch.linspace(-6, 6, 150), indexing="xy")
        density = flow(base).log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).exp().reshape(gx.shape)

    from matplotlib.figure import Figure  # no pyplot: nothing global, renders with Agg

    fig = Figure(figsize=(12, 4))
    for i, (title, pts) in enumerate([("data (held out)", test), ("flow samples", samples)]):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5)
        ax.set(title=title, xlabel="x1", ylabel="x2", xlim=(-3, 10), ylim=(-6, 6))
    ax = fig.add_subplot(1, 3, 3)
    ax.pcolormesh(gx.numpy(), gy.numpy(), density.numpy(), shading="auto")
    ax.set(title="flow density", xlabel="x1", ylabel="x2")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "flow.png", dpi=80)
    print(f"picture: {args.out / 'flow.png'}")


if __name__ == "__main__":
    main()
