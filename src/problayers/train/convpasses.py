"""What the convolution-pass layers share (:mod:`problayers.train.transposed`,
:mod:`problayers.train.narrowconv`): autocast as torch casts a convolution's inputs, forward-mode
AD, memory layouts, and switching a model's layers to another class in place."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["apply_autocast", "in_format", "memory_format_of", "switch", "with_forward_mode"]


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


def with_forward_mode(function: Any) -> Any:
    """A subclass of the custom Function ``function`` with forward-mode AD (``jvp``: ``torch.func``'s
    ``jvp``, ``jacfwd``, ``hessian``; ``torch.autograd.forward_ad``), for eager calls only: dynamo
    does not trace a Function that defines ``jvp``, so compiled code takes ``function`` itself.

    ``function.forward(x, weight, bias, *conf)`` must be a convolution's kind of map: linear in
    ``x`` and in ``weight`` each, plus ``bias``; its tangent is then ``forward`` again:
    ``f(tx, W, tb) + f(x, tW, None)``.
    """

    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        function.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1])
        ctx.forward_conf = inputs[3:]

    def jvp(ctx: Any, tx: Any, tweight: Any, tbias: Any, *_: Any) -> torch.Tensor:
        x, weight = ctx.saved_tensors
        conf = ctx.forward_conf
        dx = tx if tx is not None else torch.zeros_like(x)
        if tweight is None:
            return function.forward(dx, weight, tbias, *conf)  # f(tx, W) + tb
        dw = function.forward(x, tweight, None, *conf)  # f(x, tW)
        if tx is None and tbias is None:
            return dw
        return function.forward(dx, weight, tbias, *conf) + dw

    return type(
        f"{function.__name__}WithJvp",
        (function,),
        {"setup_context": staticmethod(setup_context), "jvp": staticmethod(jvp), "__doc__": function.__doc__},
    )


def apply_autocast(function: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any, *args: Any) -> Any:
    """``function.apply(x, weight, bias, *args)``, its tensors cast as autocast casts a
    convolution's: floating tensors other than float64 (which autocast leaves alone). Eager
    calls take ``function.with_jvp`` (:func:`with_forward_mode`), compiled code ``function``."""
    if not torch.compiler.is_compiling():
        function = function.with_jvp
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
