"""A small, model-agnostic training loop: epochs of ``loss_fn(model, batch)`` steps.

The trainer knows nothing about VAEs. It runs the steps, keeps running sums of the loss and the
metrics on the device (a host sync only every ``log_every`` steps, for the progress bar and the
non-finite check), calls ``evaluate`` after each epoch, and, with a run directory, writes after
each epoch an atomic checkpoint (model, optimizer, RNG states, history) and ``metrics.jsonl``.
A run resumed from its checkpoint continues exactly where it stopped (same batches, same RNG).

Data-parallel (``dist``, a :class:`~problayers.train.distributed.DistContext`): the model is wrapped in
``DistributedDataParallel`` and ``loss_fn`` gets the wrapped model, so gradients are averaged over
the ranks in ``backward``; each rank's ``batches(epoch)`` must yield its shard of every global
batch, the same number of steps on every rank (unequal lengths, where known, are a ``ValueError``
on every rank before the epoch's first step). The metric sums are all-reduced (one collective per
logging point, with a per-rank non-finite flag, so a NaN on any rank stops every rank at the same
step); ``evaluate`` runs on every rank and rank 0's record is the epoch's record; rank 0 alone
writes the checkpoint (the unwrapped model's ``state_dict``, every rank's RNG state) and
``metrics.jsonl``, logs, calls the ``loggers`` (:mod:`problayers.train.loggers`) and
``on_epoch_end``. A checkpoint resumes on any number of processes; see
:meth:`Trainer.load_state_dict` for the random streams.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .divergence import NonFiniteLossError, as_metric, check_weights, reduced_means
from .trainerargs import (
    batch_size,
    check_equal_steps,
    check_trainer_args,
    check_trainer_config,
    epoch_length,
    epoch_metrics,
    step_output,
)
from .trainstate import load_trainer_state, trainer_state

if TYPE_CHECKING:
    from .averaging import EMA
    from .distributed import DistContext
    from .loggers import Logger

__all__ = ["NonFiniteLossError", "Trainer", "TrainerConfig", "fit"]

LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class TrainerConfig:
    """How long to train and what to show: ``epochs``, ``log_every``, ``progress`` (a tqdm bar)."""

    epochs: int = 15
    log_every: int = 25  # steps between progress-bar updates (each one syncs with the device)
    progress: bool = True

    def __post_init__(self) -> None:
        check_trainer_config(self)


class Trainer:
    """Train ``model`` with ``optimizer`` on ``batches(epoch)`` for ``config.epochs`` epochs.

    Args:
        model, optimizer: as usual (``model`` may already be a ``DistributedDataParallel``).
        loss_fn: ``(model, batch) -> loss`` or ``-> (loss, {name: number or one-element tensor})``.
        batches: ``epoch -> iterable of batches`` (epoch counts from 0); deterministic per
            epoch if resumed runs must match uninterrupted ones (a DataLoader's own
            ``generator`` is not in the checkpoint: seed its order from ``epoch``).
        config: :class:`TrainerConfig`.
        evaluate: ``(model, epoch) -> {name: float}`` after each epoch (e.g. test metrics).
        run_dir: where the checkpoint and ``metrics.jsonl`` go (``None``: nothing written).
        meta: JSON-able description stored in each checkpoint (e.g. the run's config).
        on_epoch_end: ``(trainer, record)`` after each epoch's checkpoint (e.g. pictures).
        step_fn: replaces the default step ``(batch) -> (loss, metrics)`` (e.g. a compiled one,
            or :meth:`step` with ``torch.nn.utils.clip_grad_norm_`` between ``backward`` and the
            optimizer step; data-parallel, it must run the forward through ``trainer.train_model``).
        scheduler: a ``torch.optim.lr_scheduler`` of ``optimizer``, stepped after every optimizer
            step (whatever ``step_fn``); its state is part of the checkpoint.
        averaged: an :class:`~problayers.train.averaging.EMA` of ``model``, updated after every
            optimizer step (after the scheduler) and part of the checkpoint. ``evaluate`` is
            then called with the averaged model (its metrics are the epoch's) and with the
            trained one (recorded with the prefix ``online_``); :attr:`result_model` is the
            averaged model.
        dist: the process group's :class:`~problayers.train.distributed.DistContext` for data-parallel
            training (``None``: single-process). With it, ``loss_fn`` is called with the
            ``DistributedDataParallel`` wrapper, ``evaluate`` is called on every rank (rank 0's
            result is recorded: a sharded evaluation reduces inside ``evaluate``), and
            ``on_epoch_end``, ``log`` and ``loggers`` run on rank 0 only.
        loggers: :class:`~problayers.train.loggers.Logger` objects: the training metrics' mean
            over every ``log_every`` steps (``train/<name>``, at the global step), each epoch's
            record, ``close()`` when :meth:`fit` ends.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        batches: Callable[[int], Iterable[Any]],
        config: TrainerConfig = TrainerConfig(),
        *,
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        run_dir: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
        step_fn: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
        log: Callable[[str], None] | None = None,
        dist: DistContext | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        averaged: EMA | None = None,
        loggers: Sequence[Logger] = (),
    ) -> None:
        callables = {"evaluate": evaluate, "on_epoch_end": on_epoch_end, "step_fn": step_fn, "log": log}
        check_trainer_args(
            model, optimizer, loss_fn, batches, config, TrainerConfig, scheduler, meta, callables
        )
        self.scheduler = scheduler
        self.averaged = averaged
        self.dist = dist if dist is not None and dist.world_size > 1 else None
        self.model: nn.Module
        self.train_model: nn.Module  # the model itself or its DistributedDataParallel wrapper
        if isinstance(model, nn.parallel.DistributedDataParallel):
            if self.dist is None:
                raise ValueError(
                    "model: a DistributedDataParallel model needs dist= "
                    "(problayers.train.distributed.launch()) so that metrics are reduced and rank 0 "
                    "alone writes"
                )
            self.model, self.train_model = model.module, model
        elif self.dist is not None:
            self.model, self.train_model = model, self.dist.wrap(model, log)
        else:
            self.model = self.train_model = model
        self.optimizer, self.loss_fn = optimizer, loss_fn
        self.batches, self.config, self.evaluate = batches, config, evaluate
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.meta = meta or {}
        self.on_epoch_end = on_epoch_end
        self._step_fn = step_fn  # None: self.step (not stored: a bound method kept is a cycle)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.loggers = list(loggers)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        if self.dist is not None:
            self.dist.split_rng()  # ranks > 0 draw their own noise (a resume restores theirs)

    @property
    def result_model(self) -> nn.Module:
        """The model the run's results are of: the averaged one if any, else the trained one."""
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def global_step(self) -> int:
        """Optimizer steps of the completed epochs (from the history: a resumed run continues)."""
        return sum(int(r.get("steps", 0)) for r in self.history)

    @property
    def rank(self) -> int:
        return 0 if self.dist is None else self.dist.rank

    @property
    def world_size(self) -> int:
        return 1 if self.dist is None else self.dist.world_size

    @property
    def is_main(self) -> bool:
        """True on rank 0 (and single-process): the process that writes, logs and prints."""
        return self.rank == 0

    # -- one step -------------------------------------------------------------------------
    @property
    def step_fn(self) -> Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The step the epochs run: the ``step_fn`` given (or assigned), else :meth:`step`."""
        return self._step_fn or self.step

    def step(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on ``batch``; returns the detached loss and metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = step_output(self.loss_fn(self.train_model, batch))
        loss.backward()  # data-parallel: DDP averages the gradients over the ranks here
        self.optimizer.step()
        return loss.detach(), metrics

    # -- epochs ---------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; returns the per-epoch history. Closes the loggers."""
        try:
            while self.epoch < self.config.epochs:
                record = self.train_epoch(self.epoch)
                check_weights(self.model, self.epoch, self._kept())
                if self.evaluate is not None:
                    record.update(epoch_metrics(self.evaluate(self.result_model, self.epoch)))
                    if self.averaged is not None:
                        online = epoch_metrics(self.evaluate(self.model, self.epoch))
                        record.update({f"online_{k}": v for k, v in online.items()})
                if self.dist is not None:
                    record = self.dist.broadcast_object(record)  # rank 0's record, on every rank
                self.epoch += 1
                self.history.append(record)
                if self.run_dir is not None:
                    self.save()
                if self.is_main:
                    self.log(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
                    for logger in self.loggers:
                        logger.log_epoch(record["epoch"], record)
                    if self.on_epoch_end is not None:
                        self.on_epoch_end(self, record)
        finally:
            if self.is_main:
                for logger in self.loggers:
                    logger.close()
        return self.history

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.train_model.train()
        bar = None
        batches = self.batches(epoch)
        total = epoch_length(batches)
        if self.dist is not None:  # one small collective per epoch
            check_equal_steps(self.dist.all_gather_object(total), epoch)
        if self.config.progress and self.is_main:
            from tqdm.auto import tqdm

            desc = f"epoch {epoch + 1}/{self.config.epochs}"
            batches = bar = tqdm(batches, total=total, desc=desc, leave=False)
        sums: dict[str, torch.Tensor] = {}
        steps = images = 0
        logged: tuple[int, dict[str, float]] = (0, {})  # the steps and means last sent to the loggers
        first = self.global_step
        start = time.perf_counter()
        step_fn = self.step_fn
        for batch in batches:
            loss, metrics = step_fn(batch)
            if self.scheduler is not None:
                self.scheduler.step()
            if self.averaged is not None:
                self.averaged.update(self.model)
            for name, value in (("loss", loss), *metrics.items()):
                value = as_metric(name, value, loss)
                sums[name] = sums[name] + value if name in sums else value.clone()
            steps += 1
            images += batch_size(batch)
            if steps % self.config.log_every == 0:
                means, _ = self._means(sums, steps, epoch, images)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.2f}" for k, v in means.items()})
                logged = self._log_window(first, steps, means, logged)
        if steps == 0:
            raise ValueError(f"batches({epoch}) yielded no batch (epoch {epoch + 1}: no data)")
        means, images = self._means(sums, steps, epoch, images)  # one sync per epoch at least
        seconds = time.perf_counter() - start
        if steps > logged[0]:  # the epoch's last steps
            self._log_window(first, steps, means, logged)
        if bar is not None:
            bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({f"train_{k}": v for k, v in means.items()})
        record.update(seconds=seconds, images_per_s=images / seconds, steps=steps)
        if self.dist is not None:
            record["world_size"] = self.world_size
        return record

    def _log_window(
        self, first: int, steps: int, means: dict[str, float], logged: tuple[int, dict[str, float]]
    ) -> tuple[int, dict[str, float]]:
        """Send the metrics' means over the steps since ``logged`` (the steps and epoch means sent
        last) to the loggers, at the global step ``first + steps``; returns the new ``logged``."""
        if self.loggers and self.is_main:
            before, old = logged
            window = {
                f"train/{k}": (v * steps - old.get(k, 0.0) * before) / (steps - before)
                for k, v in means.items()
            }
            for logger in self.loggers:
                logger.log_scalars(first + steps, window)
        return steps, means

    def _means(
        self, sums: dict[str, torch.Tensor], steps: int, epoch: int, images: int
    ) -> tuple[dict[str, float], int]:
        """The metrics' means so far (over all ranks) and the images seen by all ranks
        (:func:`~problayers.train.divergence.reduced_means`)."""
        where = f"in epoch {epoch + 1} (within its first {steps} steps)"
        return reduced_means(sums, steps, images, self.dist, where=where, kept=self._kept())

    def _kept(self) -> str:
        if self.run_dir is None:
            return "nothing was saved (no run directory)"
        if self.epoch == 0:
            return "no checkpoint was written (no epoch completed)"
        return f"the last good checkpoint (epoch {self.epoch}) is kept"

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Data-parallel, every rank must call it (it gathers the RNG states)."""
        return trainer_state(self)

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore a checkpoint written with any number of processes.

        Model and optimizer are the same on every rank. Random streams: on the world size the
        checkpoint was written with, every rank gets its own stream back (the run continues as
        if uninterrupted); on another world size, rank 0 continues rank 0's stream and the other
        ranks derive theirs from it (:meth:`~problayers.train.distributed.DistContext.split_rng`), so
        the run continues from the checkpoint reproducibly but not bitwise like an uninterrupted
        run (the reparameterization noise of an example depends on the rank that draws it).
        A state that does not fit raises a one-line
        :class:`~problayers.train.checkpoint.CheckpointError` naming ``source``.
        """
        load_trainer_state(self, state, source)

    def save(self) -> None:
        """Write the checkpoint, then ``metrics.jsonl`` from the same history, atomically (rank 0;
        data-parallel, every rank must call it)."""
        assert self.run_dir is not None
        state = self.state_dict()
        if not self.is_main:
            return
        from .errors import interrupts_deferred

        lines = self._metrics_lines()
        with interrupts_deferred():  # a SIGTERM or Ctrl-C now: both files are written, then the run stops
            save_checkpoint(self.run_dir / CHECKPOINT, state)
            atomic_write(self.run_dir / METRICS, lambda f: f.write(lines))

    def _metrics_lines(self) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in self.history).encode()

    def repair_metrics(self) -> bool:
        """Rewrite ``run_dir/metrics.jsonl`` from the loaded history where it differs (a SIGKILL
        or a power loss between a checkpoint and its metrics leaves the file an epoch behind, and
        a finished run writes no more checkpoints to mend it). Rank 0; returns whether it wrote."""
        if self.run_dir is None or not self.is_main:
            return False
        path, lines = self.run_dir / METRICS, self._metrics_lines()
        with contextlib.suppress(OSError):  # not a regular file (a FIFO, /dev/zero): never read
            if path.is_file() and path.stat().st_size == len(lines) and path.read_bytes() == lines:
                return False
        atomic_write(path, lambda f: f.write(lines))
        return True

    def resume(self, path: str | Path | None = None) -> dict[str, Any]:
        """Load the last complete checkpoint (default ``run_dir/checkpoint.pt``); returns its meta.
        Data-parallel, rank 0 reads the file and broadcasts it (only rank 0 needs the run directory)."""
        if path is None and self.run_dir is None:
            raise ValueError("path: needed, the trainer has no run_dir")
        path = Path(path) if path is not None else self.run_dir / CHECKPOINT  # type: ignore[operator]
        if self.dist is None:
            state = load_checkpoint(path)
        else:
            state = self.dist.run_on_main(lambda: load_checkpoint(path))
        self.load_state_dict(state, source=str(path))
        self.repair_metrics()
        return json.loads(state["meta"])


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fit(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int = 1,
    *,
    progress: bool = False,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Train like any model: ``epochs`` passes over ``data`` (re-iterable: a list, a DataLoader;
    a generator or other iterator only with ``epochs=1``).

    ``loss_fn(model, batch)`` returns the loss (e.g. ``-model(x).log_prob(x).mean() +
    pl.collect_losses(model, clear=True)``) or ``(loss, metrics)``. Returns one dict per epoch.
    """
    config = TrainerConfig(epochs=epochs, progress=progress)
    if epochs > 1 and isinstance(data, Iterator):  # iter(data) is data: used up after one epoch
        raise ValueError(
            f"data: expected a re-iterable (a list, a DataLoader) for {epochs} epochs, "
            f"got a {type(data).__name__}, which one epoch uses up"
        )
    return Trainer(
        model, optimizer, loss_fn, lambda epoch: data, config, evaluate=evaluate, log=lambda msg: None
    ).fit()
