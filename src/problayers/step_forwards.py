"""The forwards a fast training step runs in place of the layers' own (used by
:mod:`problayers.fastpath`), and ``bf16_autocast`` for use outside a step.

* ``compile``: every layer that uses :class:`~problayers.DistributionLambda`'s own ``forward``
  runs :func:`_traceable_forward` instead: the same maths (``make_distribution`` -> the static
  ``new(params)``, the same tensor-coercible class, the same activity regularizer recorded with
  ``set_added_loss``) written so that dynamo traces it into one graph.
* ``precision="bf16"``: every distribution layer (and each ``KLDivergenceAddLoss``) runs with
  autocast off on inputs cast to fp32, so the distribution maths stay fp32.

The replacement forwards are instance attributes installed only for the duration of a step
(:func:`forwards_replaced`): outside a step the model is exactly the library's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from . import coercible as _coercible
from .layers.base import DistributionLambda
from .losses import set_added_loss
from .regularizers import KLDivergenceAddLoss

__all__ = [
    "bf16_autocast",
    "channels_last_batch",
    "forwards_replaced",
    "model_device",
    "replacement_forwards",
]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer; else the CPU)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_fp32(value: Any) -> Any:
    """bf16/fp16 tensors (in tuples/lists) -> fp32; anything else (fp64 too) unchanged."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_fp32(v) for v in value)
    return value


def channels_last_batch(batch: Any) -> Any:
    """4-D floating tensors of ``batch`` (a tensor, or a tuple/list/dict of them) in channels_last."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(channels_last_batch(b) for b in batch)
    if isinstance(batch, dict):
        return {k: channels_last_batch(v) for k, v in batch.items()}
    return batch


def _traceable_forward(layer: DistributionLambda, fp32: str | None) -> Callable[..., Any]:
    """``DistributionLambda.forward`` of ``layer`` written so that dynamo traces it in one graph.

    Same steps as the library's forward: ``make_distribution`` (the static ``new(params)``),
    the tensor-coercible subclass of the distribution's class with the same state, the activity
    regularizer recorded under the same name. Only the object's construction differs
    (``object.__new__`` + ``__dict__`` instead of ``copy.copy`` + ``__class__`` assignment).
    With ``fp32`` (a device type), it runs with autocast off on inputs cast to fp32.
    """

    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(fp32, enabled=False) if fp32 else contextlib.nullcontext():
            if fp32:
                args, kwargs = _to_fp32(args), {k: _to_fp32(v) for k, v in kwargs.items()}
            dist = layer.make_distribution(*args, **kwargs)
            if not isinstance(dist, torch.distributions.Distribution):
                raise TypeError(
                    f"{type(layer).__name__}: make_distribution_fn returned {type(dist).__name__}, "
                    "expected a torch.distributions.Distribution"
                )
            if isinstance(dist, _coercible.TensorCoercible):
                dist = dist.distribution
            fn = _coercible._resolve_convert_fn(layer.convert_to_tensor_fn, dist)
            out = object.__new__(_coercible._coercible_class(type(dist)))
            out.__dict__.update(dist.__dict__)
            out._tc_fn = fn
            out._tc_value = None
            if layer.activity_regularizer is not None:
                set_added_loss(layer, "activity_regularizer", layer.activity_regularizer(out))
        return out

    return forward


def _fp32_forward(forward: Callable[..., Any], device_type: str) -> Callable[..., Any]:
    """``forward`` run with autocast off, on its floating inputs cast to fp32."""

    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(*_to_fp32(args), **{k: _to_fp32(v) for k, v in kwargs.items()})

    return wrapped


def replacement_forwards(model: nn.Module, *, traceable: bool, fp32: str | None) -> dict[nn.Module, Any]:
    """module -> the forward it runs during a step (only modules that need one)."""
    out: dict[nn.Module, Any] = {}
    for module in model.modules():
        own = "forward" in module.__dict__  # already patched by the user: leave its forward alone
        if (
            traceable
            and not own
            and isinstance(module, DistributionLambda)
            and type(module).forward is DistributionLambda.forward
        ):
            out[module] = _traceable_forward(module, fp32)
        elif fp32 and isinstance(module, (DistributionLambda, KLDivergenceAddLoss)):
            out[module] = _fp32_forward(module.forward, fp32)
    return out


_MISSING = object()


@contextlib.contextmanager
def forwards_replaced(forwards: dict[nn.Module, Any]) -> Iterator[None]:
    """Install the replacement forwards as instance attributes for the duration of a step."""
    saved = []
    try:
        for module, forward in forwards.items():
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.__dict__["forward"] = forward
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous


@contextlib.contextmanager
def bf16_autocast(model: nn.Module) -> Iterator[None]:
    """``precision="bf16"`` outside a training step (e.g. around evaluation): bf16 autocast on the
    model's device, with the model's distribution layers run in fp32 (autocast off, fp32 inputs)
    for the duration of the block. Changes the numbers like bf16 training does (see above)."""
    device_type = model_device(model).type
    forwards = replacement_forwards(model, traceable=False, fp32=device_type)
    with torch.autocast(device_type, dtype=torch.bfloat16), forwards_replaced(forwards):
        yield
