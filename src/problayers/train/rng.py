"""The random generators a run on a device draws from: the CPU's, and the device's own.

``torch.manual_seed`` seeds every generator torch has (the CPU's, CUDA's, mps'...), but
``torch.random.fork_rng`` saves and restores the CPU's and those of one device type only, CUDA's
unless told another. :func:`fork_rng` forks exactly the generators a seeded evaluation on
``device`` moves, whatever its type, and :func:`manual_seed` seeds those and no other (a
``torch.manual_seed`` inside the fork left every other device's generator re-seeded);
:func:`device_generator` is the module whose
``get_rng_state``/``set_rng_state`` a checkpoint uses for a device other than the CPU and CUDA
(which :mod:`problayers.train.trainstate` keeps per rank)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

__all__ = ["derived_seed", "device_generator", "fork_rng", "manual_seed"]


def derived_seed(*parts: object) -> int:
    """A seed for a generator of its own, fixed by ``parts`` (a run's seed, an epoch, a rank):
    63 bits of the SHA-256 of their ``repr``, valid for every torch generator and the same on
    every machine and Python (``hash`` of a string is salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def manual_seed(device: torch.device, seed: int) -> None:
    """Seed the CPU's generator and ``device``'s (of its index, else the current one) with
    ``seed``, as ``torch.manual_seed`` seeds them, and no other device's."""
    torch.default_generator.manual_seed(seed)
    module: Any = device_generator(device)
    if module is None:
        return
    if device.index is not None and hasattr(module, "device"):
        with module.device(device.index):
            module.manual_seed(seed)
    else:
        module.manual_seed(seed)


@contextlib.contextmanager
def fork_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Within the block, draw freely (seeded with ``seed`` where given, by :func:`manual_seed`):
    on leaving it, the CPU's generator and ``device``'s are as they were. Forks no other device
    (``fork_rng`` without ``devices`` touches every CUDA device), so seed within it with
    :func:`manual_seed`, not ``torch.manual_seed``."""
    forked: dict[str, Any] = {"devices": []}  # the CPU's generator alone
    if device_generator(device) is not None:
        forked = {"devices": [device], "device_type": device.type}
    with torch.random.fork_rng(**forked):
        if seed is not None:
            manual_seed(device, seed)
        yield
