"""A small, model-agnostic training loop: epochs of ``loss_fn(model, batch)`` steps.

The trainer knows nothing about VAEs. It runs the steps, keeps running sums of the loss and the
metrics on the device (a host sync only every ``log_every`` steps, for the progress bar and the
non-finite check), calls ``evaluate`` after each epoch, and, with a run directory, writes after
each epoch an atomic checkpoint (model, optimizer, RNG states, history) and ``metrics.jsonl``.
A run resumed from its checkpoint continues exactly where it stopped (same batches, same RNG).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint

__all__ = ["NonFiniteLossError", "Trainer", "TrainerConfig", "fit"]

LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 15
    log_every: int = 25  # steps between progress-bar updates (each one syncs with the device)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


class Trainer:
    """Train ``model`` with ``optimizer`` on ``batches(epoch)`` for ``config.epochs`` epochs.

    Args:
        model, optimizer: as usual.
        loss_fn: ``(model, batch) -> loss`` or ``-> (loss, {name: 0-dim tensor})``.
        batches: ``epoch -> iterable of batches`` (epoch counts from 0); deterministic per
            epoch if resumed runs must match uninterrupted ones.
        config: :class:`TrainerConfig`.
        evaluate: ``(model, epoch) -> {name: float}`` after each epoch (e.g. test metrics).
        run_dir: where the checkpoint and ``metrics.jsonl`` go (``None``: nothing written).
        meta: JSON-able description stored in each checkpoint (e.g. the run's config).
        on_epoch_end: ``(trainer, record)`` after each epoch's checkpoint (e.g. pictures).
        step_fn: replaces the default step ``(batch) -> (loss, metrics)`` (e.g. a compiled one).
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
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.batches, self.config, self.evaluate = batches, config, evaluate
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.meta = meta or {}
        self.on_epoch_end = on_epoch_end
        self.step_fn = step_fn or self.step
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []

    # -- one step -------------------------------------------------------------------------
    def step(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on ``batch``; returns the detached loss and metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss_fn(self.model, batch)
        loss, metrics = out if isinstance(out, tuple) else (out, {})
        loss.backward()
        self.optimizer.step()
        return loss.detach(), metrics

    # -- epochs ---------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; returns the per-epoch history."""
        while self.epoch < self.config.epochs:
            record = self.train_epoch(self.epoch)
            if self.evaluate is not None:
                record.update(self.evaluate(self.model, self.epoch))
            self.epoch += 1
            self.history.append(record)
            if self.run_dir is not None:
                self.save()
            self.log(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, record)
        return self.history

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        bar = None
        batches = self.batches(epoch)
        if self.config.progress:
            from tqdm.auto import tqdm

            total = len(batches) if hasattr(batches, "__len__") else None
            bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False)
            batches = bar
        sums: dict[str, torch.Tensor] = {}
        steps = images = 0
        start = time.perf_counter()
        for batch in batches:
            loss, metrics = self.step_fn(batch)
            for name, value in (("loss", loss), *metrics.items()):
                sums[name] = sums[name] + value if name in sums else value.clone()
            steps += 1
            images += _batch_size(batch)
            if steps % self.config.log_every == 0:
                means = self._means(sums, steps, epoch)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.2f}" for k, v in means.items()})
        if steps == 0:
            raise ValueError(f"batches({epoch}) yielded no batch")
        means = self._means(sums, steps, epoch)  # one sync per epoch at least
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({f"train_{k}": v for k, v in means.items()})
        record.update(seconds=seconds, images_per_s=images / seconds, steps=steps)
        return record

    def _means(self, sums: dict[str, torch.Tensor], steps: int, epoch: int) -> dict[str, float]:
        stacked = torch.stack([v.float() for v in sums.values()]) / steps
        means = dict(zip(sums, stacked.tolist(), strict=True))
        if not math.isfinite(means["loss"]):
            raise NonFiniteLossError(
                f"loss is {means['loss']} in epoch {epoch + 1} (within its first {steps} steps); "
                f"training stopped, the last good checkpoint (epoch {self.epoch}) is kept"
            )
        return means

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "history": json.dumps(self.history),
            "meta": json.dumps(self.meta),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["rng_cpu"])
        cuda = state.get("rng_cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    def save(self) -> None:
        """Write the checkpoint, then ``metrics.jsonl`` from the same history, atomically."""
        assert self.run_dir is not None
        save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())
        lines = "".join(json.dumps(r) + "\n" for r in self.history).encode()
        atomic_write(self.run_dir / METRICS, lambda f: f.write(lines))

    def resume(self, path: str | Path | None = None) -> dict[str, Any]:
        """Load the last complete checkpoint (default ``run_dir/checkpoint.pt``); returns its meta."""
        path = Path(path) if path is not None else self.run_dir / CHECKPOINT
        state = load_checkpoint(path)
        self.load_state_dict(state)
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
    """Train like any model: ``epochs`` passes over ``data`` (re-iterable: a list, a DataLoader).

    ``loss_fn(model, batch)`` returns the loss (e.g. ``-model(x).log_prob(x).mean() +
    pl.collect_losses(model, clear=True)``) or ``(loss, metrics)``. Returns one dict per epoch.
    """
    config = TrainerConfig(epochs=epochs, progress=progress)
    return Trainer(
        model, optimizer, loss_fn, lambda epoch: data, config, evaluate=evaluate, log=lambda msg: None
    ).fit()
