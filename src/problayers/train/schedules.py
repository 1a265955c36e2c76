"""Learning-rate schedules of a training run, by name (``RunConfig.lr_schedule``, ``--lr-schedule``).

Each entry of :data:`LR_SCHEDULES` builds a ``torch.optim.lr_scheduler`` (or ``None``) for an
optimizer whose ``lr`` is the peak rate, stepped once per optimizer step over ``total_steps``:

``constant``
    no scheduler: ``lr`` throughout (the seed configuration).
``cosine``
    linear warm-up from ``lr / 25`` over the first 5% of the steps, then cosine decay to 0.
``wsd``
    warm-up, stable, decay: the same warm-up, then ``lr`` until the last 20% of the steps, which
    decay linearly to 0 (the "cooldown" schedule of Hägele et al. 2024, arXiv:2405.18392).
``onecycle``
    ``torch.optim.lr_scheduler.OneCycleLR`` (warm-up over 30% of the steps from ``lr / 25``,
    cosine annealing to ``(lr / 25) / 1e4 = lr / 2.5e5``: torch's defaults) with the
    optimizer's momentum left alone (``cycle_momentum=False``: a CUDA-graph step fixes Adam's
    betas at capture). torch's phases need room: over fewer than about 5 steps the warm-up
    has none (one step: the rate is 0 at its only step; two: about 0.8 ``lr``, then 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["LR_SCHEDULES", "make_scheduler"]

Scheduler = torch.optim.lr_scheduler.LRScheduler
WARMUP_FRACTION = 0.05
WARMUP_START = 1 / 25
DECAY_FRACTION = 0.2  # wsd: the share of the steps that decays to 0


def _constant(optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler | None:
    return None


def _cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
    warmup = max(1, round(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:  # multiplies the optimizer's lr after `step` steps
        if step < warmup:
            return WARMUP_START + (1 - WARMUP_START) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _wsd(optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    decay_start = max(warmup, total_steps - round(DECAY_FRACTION * total_steps))

    def factor(step: int) -> float:  # multiplies the optimizer's lr after `step` steps
        if step < warmup:
            return WARMUP_START + (1 - WARMUP_START) * step / warmup
        if step < decay_start:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _onecycle(optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
    peak = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=total_steps, cycle_momentum=False
    )


#: name -> ``(optimizer, total_steps) -> scheduler or None``.
LR_SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], Scheduler | None]] = {
    "constant": _constant,
    "cosine": _cosine,
    "wsd": _wsd,
    "onecycle": _onecycle,
}


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler | None:
    """The schedule ``name`` (a key of :data:`LR_SCHEDULES`) for ``optimizer`` over ``total_steps``
    optimizer steps (``>= 1``); ``None`` for ``"constant"``."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {sorted(LR_SCHEDULES)}, got {name!r}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"total_steps: expected a positive int, got {total_steps!r}")
    return LR_SCHEDULES[name](optimizer, total_steps)
