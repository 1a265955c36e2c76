"""Constructor-argument checks shared by the layers: each error names the argument."""

from __future__ import annotations

import torch

__all__ = ["callable_or_none", "non_negative_number", "positive_int"]


def positive_int(value, name: str) -> int:
    """``value`` if it is a positive ``int``; ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


def non_negative_number(value, name: str) -> float | torch.Tensor:
    """``value`` if it is a number (or 0-dim tensor) ``>= 0``; raise naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a non-negative number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        raise ValueError(f"{name}: expected a number or a 0-dim tensor, got shape {tuple(value.shape)}")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative number, got {float(value)}")
    return value


def callable_or_none(value, name: str):
    """``value`` if it is ``None`` or callable; ``TypeError`` naming ``name`` otherwise."""
    if value is not None and not callable(value):
        raise TypeError(f"{name}: expected a callable or None, got {type(value).__name__}")
    return value
