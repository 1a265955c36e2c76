"""The CLI's one error path: the exit status and the one line printed for an exception (a
traceback only with ``--debug`` or ``PROBLAYERS_DEBUG=1``); see docs/reliability.md."""

from __future__ import annotations

import os
import re

import torch.distributed

from ..train.checkpoint import CheckpointError
from ..train.cudagraph import CaptureError
from ..train.divergence import NonFiniteLossError
from ..train.errors import ProblayersError, Terminated, WriteError, one_line, os_reason
from ..vae.data import MNISTDownloadError, MNISTError

__all__ = ["DEBUG_ENV", "debug_requested", "describe"]

DEBUG_ENV = "PROBLAYERS_DEBUG"


def _out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the CPU allocator's failure."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def _peer_stopped(err: BaseException) -> bool:
    """A collective failed because another process of a data-parallel run stopped (gloo's
    closed or reset connection, NCCL's remote process; a RuntimeError or one of torch's
    ``DistError``). Not any ``DistError``: a busy port or a rendezvous timeout is no peer's stop."""
    signs = (
        "Connection closed by peer",
        "Connection reset by peer",
        "remote worker crash",
        "remote process exit",
    )
    return isinstance(err, RuntimeError) and any(sign in str(err) for sign in signs)


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(err: BaseException) -> tuple[int, str]:
    """The exit status and the one line the CLI prints for ``err``."""
    if isinstance(err, Terminated):
        return 143, "problayers: terminated (SIGTERM); the last complete checkpoint, if any, is kept"
    if isinstance(err, KeyboardInterrupt):
        return 130, "problayers: interrupted; the last complete checkpoint, if any, is kept"
    if isinstance(err, NonFiniteLossError):
        return 1, f"problayers: {one_line(err)}"
    if isinstance(err, (WriteError, CaptureError, MNISTDownloadError)):  # the environment's fault
        return 1, f"problayers: error: {one_line(err)}"
    if isinstance(err, (ValueError, MNISTError, CheckpointError, ProblayersError)):
        return 2, f"problayers: error: {one_line(err)}"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return 1, f"problayers: error: {where}{os_reason(err)}"
    if _peer_stopped(err):
        return 1, (
            "problayers: error: another process of this data-parallel run stopped (its own message "
            f"says why), so this one stopped too (torch.distributed: {one_line(err)[:500]})"
        )
    if isinstance(err, getattr(torch.distributed, "DistError", ())):  # a busy port, a rendezvous timeout
        return 1, f"problayers: error: torch.distributed: {one_line(err)[:500]}"
    if _out_of_memory(err):
        wanted = re.search(r"allocate (\d+) bytes", str(err))
        size = f" ({int(wanted.group(1)) / 2**30:.3g} GiB asked for at once)" if wanted else ""
        return 1, (
            f"problayers: error: out of memory{size}: the model or the batch is too large for this "
            "machine (see --batch-size, --latent-size, --hidden-size, --prior-components, "
            "--num-samples; for evaluate --batch-size, --chunk-size)"
        )
    return 1, (
        f"problayers: internal error: {type(err).__name__}: {one_line(err)[:500]} "
        f"(set {DEBUG_ENV}=1 or pass --debug for the traceback)"
    )
