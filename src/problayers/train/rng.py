"""The random generators a run on a device draws from: the CPU's, and the device's own.

``torch.manual_seed`` seeds every generator torch has (the CPU's, CUDA's, mps'...), but
``torch.random.fork_rng`` saves and restores the CPU's and those of one device type only, CUDA's
unless told another. :func:`fork_rng` forks exactly the generators a seeded evaluation on
``device`` moves, whatever its type; :func:`device_generator` is the module whose
``get_rng_state``/``set_rng_state`` a checkpoint uses for a device other than the CPU and CUDA
(which :mod:`problayers.train.trainstate` keeps per rank)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

__all__ = ["device_generator", "fork_rng"]


def device_generator(device: torch.device) -> ModuleType | None:
    """``torch.get_device_module(device.type)`` (``torch.mps``, ``torch.xpu``...) where it has a
    random state to save; ``None`` for the CPU, the meta device and a type without one."""
    if device.type in ("cpu", "meta"):
        return None
    try:
        module: Any = torch.get_device_module(device.type)
    except RuntimeError:  # a type torch has no module for
        return None
    has_state = hasattr(module, "get_rng_state") and hasattr(module, "set_rng_state")
    return module if has_state else None


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Within the block, draw (and seed) freely: on leaving it, the CPU's generator and
    ``device``'s are as they were. Forks no other device (``fork_rng`` without ``devices``
    touches every CUDA device)."""
    if device_generator(device) is None:
        with torch.random.fork_rng(devices=[]):
            yield
        return
    with torch.random.fork_rng(devices=[device], device_type=device.type):
        yield
