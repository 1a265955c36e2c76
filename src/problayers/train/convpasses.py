"""What the convolution-pass layers share (:mod:`problayers.train.transposed`,
:mod:`problayers.train.narrowconv`): autocast as torch casts a convolution's inputs, memory
layouts, and switching a model's layers to another class in place."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["apply_autocast", "in_format", "memory_format_of", "switch"]


def _vmapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is a ``torch.func`` transform's wrapper (vmap, grad, jacrev): it has no
    strides to ask about (``is_contiguous(memory_format=...)`` is not implemented on it), and
    its layout is the transform's business."""
    if torch.compiler.is_compiling():  # dynamo traces plain (fake) tensors, and not this query
        return False
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout ``x`` is in: channels_last (3d) where its strides say so, else contiguous
    (also for a ``torch.func`` wrapper)."""
    if _vmapped(x):
        return torch.contiguous_format
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def apply_autocast(function: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any, *args: Any) -> Any:
    """``function.apply(x, weight, bias, *args)``, its tensors cast as autocast casts a
    convolution's: floating tensors other than float64 (which autocast leaves alone)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        dtype = torch.get_autocast_dtype(device)

        def cast(t: Any) -> Any:
            return t.to(dtype) if t is not None and t.dtype != torch.float64 else t

        with torch.autocast(device, enabled=False):
            return function.apply(cast(x), cast(weight), cast(bias), *args)
    return function.apply(x, weight, bias, *args)


def in_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` with the strides of ``memory_format`` spelled out: for one channel ``contiguous``
    keeps NCHW strides (the layouts coincide), which makes oneDNN pick its NCHW kernels."""
    if memory_format == torch.contiguous_format:
        return t.contiguous()
    wanted = torch.empty(t.shape, device="meta", memory_format=memory_format).stride()
    return t if t.stride() == wanted else torch.empty_like(t, memory_format=memory_format).copy_(t)


def switch(
    model: nn.Module, classes: dict[type, type], dry_run: bool, accept: Any = lambda module: True
) -> int:
    """Switch each submodule whose exact class is a key of ``classes`` (and that ``accept``
    takes) to the value's class, in place unless ``dry_run``; how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    count = 0
    for module in model.modules():
        target = classes.get(type(module))
        if target is not None and accept(module):
            count += 1
            if not dry_run:
                module.__class__ = target
    return count
