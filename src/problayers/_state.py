"""Walks over a distribution's state (its ``__dict__``, base distributions and transforms)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributions as D

__all__ = ["exporting", "first_floating_tensor", "graph_tensors", "requires_grad"]


def first_floating_tensor(obj: Any, depth: int = 0) -> torch.Tensor | None:
    """A floating tensor of a distribution's state (its parameters; base distributions and
    transforms searched too): the dtype and device its samples have."""
    if depth > 4:
        return None
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else None
    if items is None:
        items = vars(obj).values() if isinstance(obj, (D.Distribution, D.Transform)) else ()
    nested = []
    for value in items:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
        if isinstance(value, (D.Distribution, D.Transform, list, tuple)):
            nested.append(value)
    for value in nested:
        found = first_floating_tensor(value, depth + 1)
        if found is not None:
            return found
    return None


def _tensors(obj: Any, out: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    """The tensors of a distribution's state (nested distributions and transforms too)."""
    if depth > 16:
        return out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, out, depth + 1)
    elif isinstance(obj, (D.Distribution, D.Transform)):
        _tensors(vars(obj), out, depth + 1)
    return out


def graph_tensors(obj: Any) -> list[torch.Tensor]:
    """The non-leaf tensors of a distribution's state (nested distributions and transforms too)."""
    return [t for t in _tensors(obj, []) if t.grad_fn is not None]


def requires_grad(obj: Any) -> bool:
    """Whether a tensor of a distribution's state (nested distributions and transforms too)
    requires grad: a parameter or a tensor computed from one with autograd on. (``requires_grad``,
    not ``grad_fn``: dynamo traces the one, not the other.)"""
    return any(t.requires_grad for t in _tensors(obj, []))


def versions(obj: Any) -> tuple[int, ...]:
    """The version counters of a distribution's tensors: an in-place change (``scale.fill_(0.5)``)
    bumps one, so a copy made before it can be told stale. Inference tensors count as 0."""
    return tuple(0 if t.is_inference() else t._version for t in _tensors(obj, []))


def in_inference_mode() -> bool:
    """Whether ``torch.inference_mode`` is on, where anything kept would become an inference
    tensor; ``False`` under ``torch.compile`` (dynamo cannot trace the query, and a compiled
    forward does not run in it)."""
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


def exporting() -> bool:
    """Whether ``torch.export`` is tracing (``torch.compiler.is_exporting``, torch >= 2.7; False
    before, where torch has no way to tell)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False
