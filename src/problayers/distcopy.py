"""Copies of a ``torch.distributions`` object with its tensors moved (another device or dtype),
for a prior that must sit where the posterior's parameters are: torch's distributions have no
``.to()``, and rebuilding one from its constructor's arguments would lose what it computed from
them (an ``Independent``'s base, a ``TransformedDistribution``'s transforms, cached properties).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.distributions as D

from ._state import in_inference_mode

__all__ = ["distribution_to", "kept_copy", "map_tensors"]


def distribution_to(dist: D.Distribution, device: torch.device, dtype: torch.dtype) -> D.Distribution:
    """A copy of ``dist`` (same batch/event shapes) whose floating tensors (parameters, cached
    properties, base distributions) live on ``device`` with ``dtype``."""
    return map_tensors(dist, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype))


def kept_copy(dist: D.Distribution, device: torch.device, dtype: torch.dtype) -> D.Distribution:
    """:func:`distribution_to` for a copy the regularizer keeps across calls: never of inference
    tensors (made inside ``torch.inference_mode``, a validation forward, a kept copy would fail
    every later training step's backward)."""
    if in_inference_mode():
        with torch.inference_mode(False):
            return distribution_to(dist, device, dtype)
    return distribution_to(dist, device, dtype)


def map_tensors(
    obj: D.Distribution | D.Transform, fn: Callable[[torch.Tensor], torch.Tensor], memo: dict | None = None
) -> Any:
    """A copy of a distribution (or transform) with ``fn`` applied to its tensors: parameters,
    cached properties, base distributions, transforms (a ``TransformedDistribution``'s ``loc``
    and ``scale`` too) and lists of them. ``memo`` (id -> copy) maps each object once, so a
    reference cycle (a transform and its ``inv``) stays a cycle among the copies."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    out = memo[id(obj)] = copy.copy(obj)
    for name, value in vars(obj).items():
        mapped = _mapped(value, fn, memo)
        if mapped is not value:
            setattr(out, name, mapped)
    return out


def _mapped(value: Any, fn: Callable[[torch.Tensor], torch.Tensor], memo: dict) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (D.Distribution, D.Transform)):
        return map_tensors(value, fn, memo)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [_mapped(v, fn, memo) for v in value]
        if any(a is not b for a, b in zip(items, value, strict=True)):
            return type(value)(items)
    return value
