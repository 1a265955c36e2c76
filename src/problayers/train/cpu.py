"""What this machine's CPU is, as far as a step's speed depends on it: its name and family, the
ISA torch dispatches to, whether oneDNN computes bf16 natively (its instructions present and not
excluded by an ISA limit), torch's version and threads. :mod:`problayers.train.probe` keeps its
measurements apart by this signature."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_has_native_bf16", "cpu_label", "machine_signature", "onednn_isa_limit"]


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


#: oneDNN's ISA limits (``ONEDNN_MAX_CPU_ISA``) below any with bf16 instructions: capped there,
#: oneDNN emulates bf16 with fp32 arithmetic even on a CPU that has them.
_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def onednn_isa_limit() -> str | None:
    """The ISA limit a user set for oneDNN (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``),
    upper-cased, or ``None``. It changes which kernels run, so measurements are kept apart by it."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively here: the CPU has bf16 instructions (AVX512-BF16,
    AMX or AVX-NE-CONVERT), oneDNN supports bf16, and no ISA limit set for oneDNN excludes them.

    oneDNN's own query is true on every AVX-512 CPU, where bf16 without those instructions is
    emulated (slower than fp32), so the CPU's flags are checked as well."""
    flags = set(_cpuinfo().get("flags", "").split())
    if flags:
        hardware = bool(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})
    else:  # no /proc/cpuinfo (not Linux): torch's own CPU feature query
        is_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        hardware = bool((is_bf16 and is_bf16()) or (is_amx and is_amx()))
    if not hardware or onednn_isa_limit() in _ISAS_WITHOUT_BF16:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: the instructions decide
        return True


def machine_signature() -> dict[str, Any]:
    """What a measurement depends on besides the workload: the CPU (name, family/model, the
    ISA that matters, torch's and oneDNN's ISA limits), the torch version and the intra-op threads."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": " ".join(
            (
                info.get("vendor_id", "?"),
                "family",
                info.get("cpu family", "?"),
                "model",
                info.get("model", "?"),
            )
        ),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa_limit": onednn_isa_limit(),
        "bf16_native": cpu_has_native_bf16(),
        "amx": bool(flags & {"amx_bf16", "amx_tile"}),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cpu_label(signature: Mapping[str, Any] | None = None) -> str:
    """The CPU in one label for a figure's header: its name and vendor/family/model, e.g.
    ``AMD EPYC (AuthenticAMD family 25 model 1)``. A name alone does not tell CPUs apart: a KVM
    guest calls Zen 1, Zen 3 and Zen 4 alike "AMD EPYC".

    Args:
        signature: a :func:`machine_signature` (one recorded with a measurement); default: this
            machine's.
    """
    sig = machine_signature() if signature is None else signature
    name, cpu_id = sig.get("cpu") or "unknown CPU", sig.get("cpu_id")
    return f"{name} ({cpu_id})" if cpu_id else str(name)
