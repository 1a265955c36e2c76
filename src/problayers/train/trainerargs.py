"""The :class:`~problayers.train.trainer.Trainer`'s inputs checked where they come in: its
arguments when it is built, ``loss_fn``'s result at each step and ``evaluate``'s after each
epoch, each mistake a one-line error naming the argument (not a traceback from torch's insides,
nor a failure to write the checkpoint after a whole epoch)."""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["batch_size", "check_step_args", "check_trainer_args", "epoch_metrics", "step_output"]


def _name(value: Any) -> str:
    return type(value).__name__


def check_trainer_args(
    model: Any,
    optimizer: Any,
    loss_fn: Any,
    batches: Any,
    config: Any,
    config_type: type,
    scheduler: Any,
    meta: Any,
    callables: Mapping[str, Any],
) -> None:
    """A one-line ``TypeError``/``ValueError`` naming the first argument of the wrong kind."""
    check_step_args(model, optimizer, loss_fn)
    if not callable(batches):
        hint = (
            " (data itself: pass lambda epoch: data, or use fit())" if isinstance(batches, Iterable) else ""
        )
        raise TypeError(
            f"batches: expected a callable epoch -> iterable of batches, got {_name(batches)}{hint}"
        )
    if not isinstance(config, config_type):
        raise TypeError(f"config: expected a {config_type.__name__}, got {_name(config)}")
    for name, fn in callables.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}: expected a callable or None, got {_name(fn)}")
    if scheduler is not None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise TypeError(
                "scheduler: ReduceLROnPlateau steps on a metric, and the trainer steps its scheduler "
                "after every optimizer step without one; step it yourself from on_epoch_end"
            )
        if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(
                f"scheduler: expected a torch.optim.lr_scheduler.LRScheduler, got {_name(scheduler)}"
            )
        if scheduler.optimizer is not optimizer:
            raise ValueError("scheduler: it schedules another optimizer than the trainer's")
    if meta is not None:
        if not isinstance(meta, dict):
            raise TypeError(f"meta: expected a dict, got {_name(meta)}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:  # written with every checkpoint: fail now, not then
            raise TypeError(f"meta: expected JSON values (it is saved in each checkpoint): {err}") from None


def plain_numbers(config: Any) -> None:
    """A frozen dataclass config's numpy (or other integral and real) numbers made Python's
    ``int`` and ``float``, by each field's annotation (``int``, ``float``, ``... | None``): a
    sweep over ``np.arange`` passes numpy's, and JSON writes only Python's. Called first in
    ``__post_init__``, before the checks."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = str(field.type).split(" | ")[0]
        if isinstance(value, bool) or type(value) in (int, float):  # (a numpy bool is no Integral)
            continue
        if kind == "int" and isinstance(value, numbers.Integral):
            object.__setattr__(config, field.name, int(value))
        elif kind == "float" and isinstance(value, numbers.Real):
            object.__setattr__(config, field.name, float(value))


def check_trainer_config(config: Any) -> None:
    """A :class:`~problayers.train.trainer.TrainerConfig`'s fields (numpy numbers made Python's)."""
    plain_numbers(config)
    epochs, log_every, progress = config.epochs, config.log_every, config.progress
    for name, value in (("epochs", epochs), ("log_every", log_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if not isinstance(progress, bool):  # a string would be true: a bar for "no"
        raise TypeError(f"progress: expected True or False, got {progress!r}")


def check_step_args(model: Any, optimizer: Any, loss_fn: Any) -> None:
    """A one-line ``TypeError`` naming the first of a step's model, optimizer and loss function
    of the wrong kind (the trainer's and :func:`~problayers.train.fastpath.make_train_step`'s)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {_name(model)}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {_name(optimizer)}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (model, batch) -> loss, got {_name(loss_fn)}")
    if isinstance(loss_fn, nn.modules.loss._Loss):  # Keras' compile(loss=...) habit
        name = type(loss_fn).__name__
        raise TypeError(
            f"loss_fn: expected a callable (model, batch) -> loss, got the torch loss {name} "
            f"(wrap it: lambda model, batch: {name}()(model(batch[0]), batch[1]))"
        )


def step_output(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """``loss_fn``'s result as ``(loss, metrics)``, or a one-line error naming ``loss_fn``."""
    loss, metrics = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else _name(out)
        raise ValueError(f"loss_fn: expected a 0-dim loss tensor (or (loss, metrics)), got {got}")
    if not isinstance(metrics, dict):
        raise TypeError(f"loss_fn: expected its metrics as a dict {{name: value}}, got {_name(metrics)}")
    return loss, metrics


def epoch_metrics(values: Any) -> dict[str, Any]:
    """``evaluate``'s result with one-element tensors and numpy numbers as Python numbers (what
    ``metrics.jsonl`` and the checkpoint's history hold), or a one-line error naming it."""
    if not isinstance(values, dict):
        raise TypeError(f"evaluate: expected it to return a dict {{name: number}}, got {_name(values)}")
    out = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif isinstance(value, numbers.Real) and not isinstance(value, (int, float, bool)):
            value = int(value) if isinstance(value, numbers.Integral) else float(value)  # numpy's
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise TypeError(f"evaluate: {name!r}: expected a number, got {_name(value)}")
        out[name] = value
    return out


def batch_size(batch: Any) -> int:
    """The examples in a batch: the first dimension of its first tensor (of a tuple, a list or
    a dict of them); 1 where it holds no tensor."""
    if isinstance(batch, dict):
        batch = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


def epoch_length(batches: Any) -> int | None:
    """``len(batches)``, or ``None`` where it has no length (a generator; a ``DataLoader`` of an
    ``IterableDataset`` has ``__len__``, which raises ``TypeError``)."""
    try:
        return len(batches)
    except TypeError:
        return None


def check_equal_steps(lengths: list[int | None], epoch: int) -> None:
    """Data-parallel, every rank must take the same number of steps (each step's gradient
    all-reduce pairs the ranks' steps); ``lengths`` are the ranks' epoch lengths, ``None`` where
    unknown. Unequal known lengths are one line on every rank, not a collective that never pairs.
    """
    known = {rank: n for rank, n in enumerate(lengths) if n is not None}
    if len(set(known.values())) > 1:
        per_rank = ", ".join(f"{n} on rank {rank}" for rank, n in known.items())
        raise ValueError(
            f"batches({epoch}) has {per_rank}: every rank needs the same number of steps "
            "(its shard of every global batch)"
        )
