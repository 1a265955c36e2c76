"""Data-parallel training with ``torch.distributed``: the torchrun environment, the process group,
each rank's device, and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m problayers train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous) in their environment. :func:`launch` turns that
into a :class:`DistContext` (``None`` when the process was not started by torchrun, or with
``WORLD_SIZE=1``: then everything runs single-process, exactly as without torchrun).

The process group has gloo for CPU tensors and, where CUDA is available, NCCL for CUDA tensors
(``"cpu:gloo,cuda:nccl"``): DDP's gradient all-reduce and the metric reductions run on the
training device (NCCL on GPUs, each rank on ``cuda:LOCAL_RANK``; gloo on CPU), while the rare
object collectives (the epoch record, the checkpoint on resume, RNG states) go through gloo on the
CPU, so the backend does not depend on the device a run is resumed on.

Everything here is PyTorch's own machinery (``init_process_group``, ``DistributedDataParallel``,
``all_reduce``, ``broadcast_object_list``, ``all_gather_object``); nothing is home-made.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .rng import derived_seed

__all__ = [
    "DistContext",
    "RankZeroError",
    "check_device_spec",
    "check_global_batch",
    "current",
    "env_ranks",
    "init_from_env",
    "launch",
    "mean_over_ranks",
    "shutdown",
    "sync_batch_norm",
]

T = TypeVar("T")

#: The variables torchrun sets for every worker (MASTER_ADDR/MASTER_PORT come with them).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

_CURRENT: DistContext | None = None


class RankZeroError(RuntimeError):
    """Raised on ranks > 0 when a step that rank 0 runs for everyone (reading the run directory,
    checking the options) failed there; rank 0 raises (and prints) the original error, of which
    ``error`` is a copy where it pickles (``None`` otherwise), e.g. for the same exit status."""

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.error = error


def _portable(err: BaseException) -> BaseException | None:
    """``err`` if it survives pickling (what a broadcast does to it), else ``None``."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return None
    return err


def env_ranks(environ: dict[str, str] | None = None) -> tuple[int, int, int, int] | None:
    """``(rank, world_size, local_rank, local_world_size)`` from the torchrun environment, or
    ``None`` when neither ``RANK`` nor ``WORLD_SIZE`` is set (not launched by torchrun)."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [name for name in ENV_VARS if name not in env]
    if missing:
        raise ValueError(
            f"torch.distributed environment: {', '.join(missing)} not set (launch with "
            "torchrun --nproc-per-node N -m problayers train ..., which sets RANK, WORLD_SIZE and LOCAL_RANK)"
        )
    try:
        rank, world, local = (int(env[name]) for name in ENV_VARS)
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        got = {name: env.get(name) for name in (*ENV_VARS, "LOCAL_WORLD_SIZE")}
        raise ValueError(f"torch.distributed environment: expected integers, got {got}") from None
    if world < 1 or not 0 <= rank < world or local < 0 or local_world < 1 or local >= local_world:
        raise ValueError(
            f"torch.distributed environment: inconsistent RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local}, LOCAL_WORLD_SIZE={local_world}"
        )
    return rank, world, local, local_world


def check_global_batch(batch_size: int, world_size: int, resuming: bool = False) -> None:
    """``--batch-size`` is the global batch: it must split evenly over the processes. A resumed
    run keeps its batch size, so the advice is then a number of processes."""
    if batch_size % world_size:
        if resuming:
            counts = [str(n) for n in range(1, min(batch_size, 1024) + 1) if batch_size % n == 0]
            listed = f"{', '.join(counts[:-1])} or {counts[-1]}" if len(counts) > 1 else "1"
            raise ValueError(
                f"batch_size: the run's global batch {batch_size} must be divisible by the number "
                f"of processes (world size {world_size}), and cannot change on resume; resume on "
                f"{listed} processes"
            )
        lo, hi = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise ValueError(
            f"batch_size: {batch_size} is the global batch and must be divisible by the number of "
            f"processes (world size {world_size}); use e.g. {lo or hi} or {hi}"
        )


def check_device_spec(spec: str, local_world_size: int) -> None:
    """Under torchrun each process takes ``cuda:LOCAL_RANK``; one fixed ``cuda:N`` for several
    processes of a machine would put them all on one GPU."""
    if spec.startswith("cuda:") and local_world_size > 1:
        raise ValueError(
            f"device: {spec!r} names one GPU for the {local_world_size} processes of this machine; "
            "under torchrun pass --device cuda (or auto): each process uses cuda:LOCAL_RANK"
        )


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` (detached) averaged over the ranks of an initialized process group where
    gradients are being computed (a training step: every rank calls it); ``value.detach()``
    otherwise (single-process; an evaluation, which rank 0 runs alone). For decisions that must
    be the global batch's, not each shard's (free bits' floor)."""
    out = value.detach()
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world > 1:
            out = out.clone()
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            out = out / world
    return out


def sync_batch_norm(model: nn.Module, device: torch.device) -> tuple[nn.Module, str | None]:
    """``model`` with its BatchNorm layers synchronized over the ranks (``nn.SyncBatchNorm``:
    batch statistics of the global batch, as one process computes them) where ``device`` can
    (CUDA), and a note saying why not where it cannot (the CPU: torch's SyncBatchNorm needs a
    GPU; each rank then normalizes its own share). Parameters and buffers are shared with the
    layers they replace, so an optimizer built before keeps them. ``(model, None)`` without
    BatchNorm."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, None
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), None
    return model, (
        f"BatchNorm layers normalize each process's share of the batch on {device.type} "
        "(torch's SyncBatchNorm needs a GPU), so this training differs from one process's"
    )


@dataclass(frozen=True)
class DistContext:
    """This process's place in an initialized default process group (see :func:`init_from_env`)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    # -- devices and the model ------------------------------------------------------------
    def device_for(self, spec: str) -> torch.device:
        """This rank's device for the ``--device`` value ``spec``: ``auto`` and ``cuda`` give
        ``cuda:LOCAL_RANK`` (``cpu`` where ``auto`` finds no GPU); ``cpu`` gives the CPU."""
        check_device_spec(spec, self.local_world_size)
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(spec)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device: {spec!r} was asked for but no CUDA device is available")
            index = self.local_rank if device.index is None else device.index
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device: process {self.rank} (LOCAL_RANK {self.local_rank}) needs cuda:{index} but "
                    f"this machine has {torch.cuda.device_count()} GPU(s); start at most that many "
                    "processes per node (--nproc-per-node) or use --device cpu"
                )
            device = torch.device("cuda", index)
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise ValueError(f"device: distributed training runs on cpu or cuda, got {spec!r}")
        return device

    def wrap(
        self, model: nn.Module, log: Callable[[str], None] | None = None, **ddp_kwargs: Any
    ) -> nn.parallel.DistributedDataParallel:
        """``DistributedDataParallel(model)`` on the model's device (rank 0's parameters are
        broadcast to every rank; gradients are averaged over the ranks during ``backward``), its
        BatchNorm layers synchronized on a GPU (:func:`sync_batch_norm`; where they cannot be,
        rank 0 gives the note to ``log``, by default standard error)."""
        param = next(model.parameters(), None)
        device = torch.device("cpu") if param is None else param.device
        model, note = sync_batch_norm(model, device)
        if note is not None and self.is_main:
            (log or (lambda msg: print(msg, file=sys.stderr, flush=True)))(f"note: {note}")
        if device.type == "cuda":
            ddp_kwargs.setdefault("device_ids", [device.index])
            ddp_kwargs.setdefault("output_device", device.index)
        return nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    # -- collectives ----------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place, on its device; returns it."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; for small things: records, states)."""
        box: list[Any] = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result to every rank. If it raises, rank 0
        re-raises the error and the other ranks raise :class:`RankZeroError` (so the error is
        printed once, by rank 0, and every rank stops)."""
        result: tuple[bool, Any, BaseException | None] = (True, None, None)
        error: BaseException | None = None
        if self.is_main:
            try:
                result = (True, fn(), None)
            except Exception as err:  # relayed, then re-raised below
                error = err
                result = (False, f"{type(err).__name__}: {err}", _portable(err))
        ok, value, relayed = self.broadcast_object(result)
        if error is not None:
            raise error
        if not ok:
            raise RankZeroError(f"rank 0 failed: {value}", relayed)
        return value

    @contextmanager
    def local_main_first(self) -> Iterator[None]:
        """The body runs on each machine's LOCAL_RANK 0 first, then on the others (e.g. a
        download into a cache shared by the machine's processes happens once). Where it raises
        on a LOCAL_RANK 0, that process raises its error and the others
        :class:`RankZeroError` (printed once, not as a broken connection on every rank)."""
        if self.local_rank != 0:  # one collective each: before the body here, after it there
            outcomes: list[tuple[int, str, BaseException | None] | None] = self.all_gather_object(None)
            failed = [f for f in outcomes if f is not None]
            if failed:
                raise RankZeroError(f"rank {failed[0][0]} failed: {failed[0][1]}", failed[0][2])
            yield
            return
        try:
            yield
        except Exception as err:
            self.all_gather_object((self.rank, f"{type(err).__name__}: {err}", _portable(err)))
            raise
        self.all_gather_object(None)

    # -- random numbers -------------------------------------------------------------------
    def split_rng(self) -> None:
        """Give ranks > 0 their own random stream, derived from the current one and the rank.

        Called where every rank has the same generator state (same seed, same model built),
        it leaves rank 0 on the single-process stream and makes the others draw different
        (but reproducible) noise, e.g. the reparameterization noise of their examples."""
        if self.rank == 0:
            return
        state = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        torch.manual_seed(derived_seed("rank", state, self.rank))  # CPU and every CUDA device


def current() -> DistContext | None:
    """The context :func:`init_from_env` set up (``None`` when single-process)."""
    return _CURRENT


def init_from_env(*, timeout: timedelta | None = None) -> DistContext | None:
    """Initialize the default process group from the torchrun environment.

    Returns ``None`` (and initializes nothing) outside torchrun or with ``WORLD_SIZE=1``. Backend:
    ``"cpu:gloo,cuda:nccl"`` where CUDA is available, else ``"gloo"``.
    """
    global _CURRENT
    ranks = env_ranks()
    if ranks is None or ranks[1] == 1:
        return None
    rank, world, local, local_world = ranks
    if _CURRENT is not None:
        return _CURRENT
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        # torch._dynamo first imported while a process group lives (DDP imports it) keeps the
        # group's gloo threads running past destroy_process_group (torch 2.13, measured):
        # imported before, they are joined by shutdown() (tests/test_distributed.py).
        importlib.import_module("torch._dynamo")
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    _CURRENT = DistContext(rank=rank, world_size=world, local_rank=local, local_world_size=local_world)
    return _CURRENT


def shutdown() -> None:
    """Destroy the process group :func:`init_from_env` created (no-op when there is none).

    Garbage is collected first, so that DDP wrappers no longer referenced (a model in a reference
    cycle outlives its last use) release the group: destroying it then drops its last reference
    and joins gloo's worker threads now, with the GIL released. Left alive until interpreter
    finalization, a worker that still drops a finished collective's tensors there needs the GIL
    and aborts the process ("terminate called without an active exception", pytorch/pytorch#179291).
    A model the caller still holds keeps the group alive; release it before leaving :func:`launch`.
    """
    global _CURRENT
    _CURRENT = None
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextmanager
def launch(*, timeout: timedelta | None = None) -> Iterator[DistContext | None]:
    """``with launch() as ctx:`` the torchrun process group for the body (``ctx`` is ``None``
    single-process). On a normal exit the ranks meet at a barrier, then the group is destroyed."""
    ctx = init_from_env(timeout=timeout)
    try:
        yield ctx
        if ctx is not None:
            ctx.barrier()
    finally:
        if ctx is not None:
            shutdown()
