"""How the trainer notices that training diverged: a non-finite loss or weight.

The metric sums are reduced to means (over the ranks too, with one all-reduce that also carries
a non-finite flag per rank, so a NaN on any rank stops every rank at the same step), and the
weights are checked once per epoch: an epoch's last updates come after its last loss, so finite
losses do not vouch for the weights that are saved.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..precision import wide_dtype

if TYPE_CHECKING:
    from .distributed import DistContext

__all__ = ["NonFiniteLossError", "as_metric", "check_weights", "reduced_means"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


def as_metric(name: str, value: object, loss: torch.Tensor) -> torch.Tensor:
    """A step's metric as a one-element tensor: a tensor of one element, or a Python number (put
    beside ``loss``); anything else is a one-line ``ValueError`` naming it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:  # no host sync: shapes only
        return value.detach() if value.dim() == 0 else value.detach().reshape(())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((), float(value), device=loss.device)  # a fill, no host-to-device copy
    got = (
        f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    )
    raise ValueError(f"metric {name!r}: expected a number or a one-element tensor (e.g. a mean), got {got}")


def reduced_means(
    sums: dict[str, torch.Tensor], steps: int, images: int, dist: DistContext | None, *, where: str, kept: str
) -> tuple[dict[str, float], int]:
    """The metrics' means over ``steps`` steps (averaged over the ranks) and the images seen by
    all ranks.

    Args:
        sums: ``name -> 0-dim tensor``, the sums over the steps (``"loss"`` among them).
        steps, images: the steps taken and the images seen by this rank.
        dist: the process group (``None``: single-process).
        where: what the error message says of the steps (``"in epoch 3 (within its first 40 steps)"``).
        kept: what the error message says was kept (the last good checkpoint).

    Raises:
        NonFiniteLossError: on every rank, when a rank's loss (or the sum over ranks) is not finite.
    """
    stacked = torch.stack([v.float() for v in sums.values()]) / steps  # (metrics,)
    if dist is None:
        means = dict(zip(sums, stacked.tolist(), strict=True))
        bad: list[int] = []
    else:
        # One all-reduce: [per-rank means..., images, non-finite flag per rank].
        dtype = wide_dtype(stacked.device)
        flags = torch.zeros(dist.world_size, dtype=dtype, device=stacked.device)
        flags[dist.rank] = (~torch.isfinite(stacked[0])).to(dtype)
        count = torch.tensor([images], dtype=dtype, device=stacked.device)
        reduced = dist.all_reduce_sum(torch.cat([stacked.to(dtype), count, flags])).tolist()
        n = len(sums)
        means = {k: v / dist.world_size for k, v in zip(sums, reduced[:n], strict=True)}
        images = round(reduced[n])
        bad = [r for r, flag in enumerate(reduced[n + 1 :]) if flag]
    if bad or not math.isfinite(means["loss"]):
        ranks = ""
        if dist is not None and bad:
            ranks = f" on rank(s) {', '.join(map(str, bad))} of {dist.world_size}"
        elif dist is not None:  # no rank's own loss: only their sum overflowed
            ranks = f" (summed over {dist.world_size} ranks)"
        raise NonFiniteLossError(
            f"loss is {means['loss']}{ranks} {where}; "
            f"training stopped{' on every rank' if ranks else ''}, {kept}"
        )
    return means, images


def check_weights(model: nn.Module, epoch: int, kept: str) -> None:
    """Raise :class:`NonFiniteLossError` if a weight of ``model`` is not finite after ``epoch``
    (0-based; one host sync; the same on every rank, whose weights are the same)."""
    named = list(model.named_parameters())
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()
    if all(finite):
        return
    bad = [name for (name, _), ok in zip(named, finite, strict=True) if not ok]
    raise NonFiniteLossError(
        f"weight(s) {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} not finite after epoch "
        f"{epoch + 1} (its last update diverged); training stopped, {kept}"
    )
