"""Precision of the distribution maths: under ``torch.autocast`` the layers build and evaluate
their distributions in fp32, with autocast off (see :mod:`problayers.coercible`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["autocast_device", "fp32_inputs", "in_fp32", "wide_dtype"]

_HALF = (torch.bfloat16, torch.float16)
#: The device types this torch has an autocast for (torch 2.4 has none for mps, and raises when
#: asked whether it is on).
_AUTOCAST_DEVICES = tuple(d for d in ("cuda", "cpu", "xpu", "mps") if torch.amp.is_autocast_available(d))


def wide_dtype(device: torch.device) -> torch.dtype:
    """The dtype to accumulate many terms in on ``device`` (a test set's sums, a step count's
    ratio): float64 where the device has it, float32 on mps (which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def autocast_device() -> str | None:
    """The device type whose ``torch.autocast`` is on here (``None`` outside autocast)."""
    for device_type in _AUTOCAST_DEVICES:
        if torch.is_autocast_enabled(device_type):
            return device_type
    return None


def fp32_inputs(value: Any) -> Any:
    """bf16/fp16 tensors (also inside tuples, lists and dicts, and coercibles' values) -> fp32;
    anything else (fp64 too) unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(fp32_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: fp32_inputs(v) for k, v in value.items()}
    return value


def in_fp32(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; under autocast with autocast off and bf16/fp16 args cast to fp32 (the
    distribution maths of the layers, and of anything else that evaluates densities: a matrix
    product under autocast would otherwise run in half precision)."""
    device_type = autocast_device()
    if device_type is None:
        return fn(*args)
    with torch.autocast(device_type, enabled=False):
        return fn(*fp32_inputs(args))
