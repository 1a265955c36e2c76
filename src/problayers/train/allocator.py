"""Keep freed memory in the process on the CPU, so each training step does not page-fault its
activations in afresh.

torch allocates CPU tensors with the C library's ``malloc``. glibc serves a block of more than
its *mmap threshold* (128 KiB at first, raised dynamically up to 32 MiB) with a fresh ``mmap``
and gives it back with ``munmap`` when the tensor is freed; freed heap memory above its *trim
threshold* (128 KiB) is returned to the system too. A training step allocates and frees the same
large activations every time, so every step touches brand-new pages: the kernel zero-fills each
4 KiB page on first touch: time in the kernel instead of arithmetic (measured for the seed VAE
and its IWAE evaluation in docs/benchmarks.md).

:func:`retain_freed_memory` sets glibc's thresholds once for the process (``mallopt``), as the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables would at start-up:
blocks up to :data:`MMAP_THRESHOLD` come from the heap, and up to :data:`TRIM_THRESHOLD` of freed
heap stays with the process for the next step. It changes no number a program computes, only
where its memory comes from. It is the application's choice (``problayers train``/``evaluate`` on
a CPU with ``--fast``), never made at import. Elsewhere (not glibc, or an allocator or malloc
settings given through the environment) it changes nothing and says why.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "AllocatorSetting", "retain_freed_memory"]

#: Blocks up to this size come from the heap (glibc's largest allowed threshold on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed heap memory up to this much stays with the process.
TRIM_THRESHOLD = 256 * 1024 * 1024

# glibc's <malloc.h> parameter numbers for mallopt.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Environment that already decides the allocator or its thresholds: left as the user set it.
_ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class AllocatorSetting:
    """What :func:`retain_freed_memory` did: ``applied``, and a one-line ``reason``."""

    applied: bool
    reason: str

    def record(self) -> dict[str, object]:
        return {"applied": self.applied, "reason": self.reason}


def _environment_decides() -> str | None:
    given = [name for name in _ENV_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        given.append("GLIBC_TUNABLES")
    if given:
        return f"malloc settings given by the environment ({', '.join(given)})"
    preload = os.environ.get("LD_PRELOAD", "")
    other = [name for name in _OTHER_ALLOCATORS if name in preload]
    if other:
        return f"{other[0]} preloaded (LD_PRELOAD)"
    return None


def retain_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> AllocatorSetting:
    """Let glibc keep freed memory for reuse instead of unmapping it (process-wide, idempotent).

    Args:
        mmap_threshold: bytes, ``1 <= n <= 32 MiB``: larger blocks are still mapped on demand.
        trim_threshold: bytes ``>= 1``: freed heap memory kept before returning any to the system.

    Returns:
        An :class:`AllocatorSetting`: applied, or not (not glibc; the environment decides) and why.
    """
    for name, value, high in (
        ("mmap_threshold", mmap_threshold, MMAP_THRESHOLD),
        ("trim_threshold", trim_threshold, None),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high and value > high):
            bound = f"an int in [1, {high}]" if high else "an int >= 1"
            raise ValueError(f"{name}: expected {bound} bytes, got {value!r}")
    if not sys.platform.startswith("linux"):
        return AllocatorSetting(False, f"unchanged: {sys.platform} is not glibc")
    decided = _environment_decides()
    if decided:
        return AllocatorSetting(False, f"unchanged: {decided}")
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):  # a C library that does not name itself (musl)
        glibc = ""
    if not glibc.startswith("glibc"):
        return AllocatorSetting(False, "unchanged: the C library is not glibc")
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, trim_threshold)):
        return AllocatorSetting(False, "unchanged: glibc refused the thresholds")
    mib = 1024 * 1024
    return AllocatorSetting(
        True,
        f"glibc keeps freed memory (blocks <= {mmap_threshold / mib:g} MiB from the heap, "
        f"up to {trim_threshold / mib:g} MiB kept)",
    )
