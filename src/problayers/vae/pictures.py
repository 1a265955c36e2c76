"""PNG pictures of a trained VAE: prior samples, reconstructions, the loss curve.

Image grids are assembled with tensor ops and written with Pillow; the loss curve uses
matplotlib (Agg). Every file is written atomically.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from ..train.checkpoint import atomic_write, parse_json
from ..train.rng import fork_rng
from .models import VAE

__all__ = ["image_grid", "loss_curve", "picture_arrays", "save_pictures"]

PRIOR_SAMPLES = "prior_samples.png"
RECONSTRUCTIONS = "reconstructions.png"
LOSS_CURVE = "loss_curve.png"


def image_grid(rows: list[torch.Tensor], path: str | Path, *, scale: int = 2, pad: int = 2) -> Path:
    """Save rows of images as one PNG. Each row: ``(n, 1, H, W)`` (or ``(n, H, W)``) in [0, 1];
    all rows have the same ``n``. Images are separated by ``pad`` pixels of mid-grey."""
    from PIL import Image

    if not rows:
        raise ValueError("rows: expected at least one row of images, got none")
    n, h, w = rows[0].shape[0], rows[0].shape[-2], rows[0].shape[-1]
    grid = torch.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad), 0.5)
    for r, row in enumerate(rows):
        row = row.detach().float().cpu().reshape(-1, h, w).clamp(0, 1)  # (n, H, W)
        if row.shape[0] != n:
            raise ValueError(f"rows: every row must have {n} images, row {r} has {row.shape[0]}")
        for c in range(n):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[top : top + h, left : left + w] = row[c]
    pixels = (grid * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels, mode="L").resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    )
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


@torch.no_grad()
def save_pictures(
    model: VAE,
    test_x: torch.Tensor,
    out_dir: str | Path,
    *,
    n: int = 10,
    seed: int = 0,
    metrics: str | Path | None = None,
) -> list[Path]:
    """The TFP notebook's pictures, into ``out_dir``:

    * ``prior_samples.png``: ``n`` draws z ~ p(z) decoded, as rows sample / mode / mean;
    * ``reconstructions.png``: the first ``n`` test digits (float ``(N, 1, 28, 28)``), then
      their reconstructions (decoder mean at z ~ q(z|x)), sample and mode;
    * ``loss_curve.png`` from ``metrics`` (default ``out_dir/metrics.jsonl``) if it exists.

    A statistic the decoder's distribution does not implement (torch's ``MixtureSameFamily``
    and ``ContinuousBernoulli`` have no ``mode``) is left out: its row is not drawn.
    """
    out_dir = Path(out_dir)
    metrics = Path(metrics) if metrics is not None else out_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else None  # a damaged one: before any file
    was_training = model.training
    model.eval()
    with fork_rng(test_x.device, seed), torch.no_grad():
        z = model.prior().sample((n,))  # (n, D)
        rv = model.decode(z)  # batch (n,), event (1, 28, 28)
        paths = [image_grid(_rows(rv, "sample", "mode", "mean"), out_dir / PRIOR_SAMPLES)]
        x = test_x[:n]
        rv_x = model(x)
        paths.append(image_grid([x, *_rows(rv_x, "mean", "sample", "mode")], out_dir / RECONSTRUCTIONS))
    model.train(was_training)
    if records is not None:
        paths.append(loss_curve(records, out_dir / LOSS_CURVE))
    return paths


def _rows(rv: Any, *statistics: str) -> list[torch.Tensor]:
    """``rv``'s statistics in order (``"sample"``: a draw), those it implements."""
    rows = []
    for name in statistics:
        with contextlib.suppress(NotImplementedError):
            rows.append(rv.sample() if name == "sample" else getattr(rv, name))
    return rows


def read_metrics(metrics_jsonl: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl``; a one-line ``ValueError`` naming it if damaged."""
    try:
        text = Path(metrics_jsonl).read_text()
        records = [parse_json(line) for line in text.splitlines() if line.strip()]
        if not all(isinstance(r, dict) and "epoch" in r for r in records):
            raise ValueError("a line is not an epoch record")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{metrics_jsonl}: expected JSON lines of epoch records ({err})") from None
    return records


def loss_curve(metrics: str | Path | list[dict[str, Any]], path: str | Path) -> Path:
    """Plot train loss and test -ELBO per epoch from ``metrics.jsonl`` (or its records) to a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    records = metrics if isinstance(metrics, list) else read_metrics(metrics)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in records]
    # the training loss is the run's objective (an ELBO with an MC or exact KL, an IWAE bound):
    # named as such, not as an ELBO
    for key, label in (("train_loss", "train loss (the run's objective)"), ("test_neg_elbo", "test -ELBO")):
        if all(key in r for r in records):
            ax.plot(epochs, [r[key] for r in records], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def picture_arrays(model: VAE, test_x: torch.Tensor) -> dict[str, Any]:
    """The grids :func:`save_pictures` draws, as ``(H, W)`` uint8 arrays by tag
    (``"pictures/prior_samples"``, ...) for a logger: drawn into a temporary directory, so they
    are the same pictures as the run's PNGs."""
    import tempfile

    import numpy as np
    from PIL import Image

    images = {}
    with tempfile.TemporaryDirectory(prefix="problayers-pictures-") as tmp:
        save_pictures(model, test_x, tmp)  # no metrics.jsonl there: no loss curve
        for name in (PRIOR_SAMPLES, RECONSTRUCTIONS):
            with Image.open(Path(tmp) / name) as image:
                images[f"pictures/{Path(name).stem}"] = np.asarray(image.convert("L"))
    return images
