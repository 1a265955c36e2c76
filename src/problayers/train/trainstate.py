"""Structural checks of a :class:`~problayers.train.trainer.Trainer` checkpoint before it is loaded,
so that a damaged or foreign file fails with one line naming it (not deep inside
``load_state_dict`` or at the next optimizer step)."""

from __future__ import annotations

import json
from typing import Any

import torch

from .checkpoint import CheckpointError, check_state_dict

__all__ = ["check_trainer_state"]


def _rng(value: Any, what: str, source: str) -> None:
    want = torch.get_rng_state()
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.shape != want.shape:
        got = (
            f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        )
        raise CheckpointError(
            f"{source}: {what}: expected a CPU random state (uint8 {tuple(want.shape)}), got {got}"
        )


def _optimizer(trainer: Any, state: Any, source: str) -> None:
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("param_groups"), list)
        or not isinstance(state.get("state"), dict)
    ):
        raise CheckpointError(f"{source}: optimizer: expected an optimizer state dict (state, param_groups)")
    groups = trainer.optimizer.param_groups
    if len(state["param_groups"]) != len(groups):
        raise CheckpointError(
            f"{source}: optimizer: {len(state['param_groups'])} parameter groups, the model's optimizer has "
            f"{len(groups)}"
        )
    params = [p for g in groups for p in g["params"]]
    for saved, group in zip(state["param_groups"], groups, strict=True):
        if not isinstance(saved, dict) or len(saved.get("params", ())) != len(group["params"]):
            raise CheckpointError(f"{source}: optimizer: its parameter groups do not fit the model")
    for index, entry in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise CheckpointError(
                f"{source}: optimizer: state for parameter {index!r} does not fit the model"
            )
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(
                    f"{source}: optimizer: {name} of parameter {index}: expected shape "
                    f"{tuple(params[index].shape)}, got {tuple(value.shape)}"
                )


def check_trainer_state(trainer: Any, state: Any, source: str) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` fits ``trainer``."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: not a checkpoint (expected a dict, got a {type(state).__name__})")
    missing = [k for k in ("epoch", "model", "optimizer", "rng_cpu", "history", "meta") if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a trainer checkpoint (missing {', '.join(map(repr, missing))})")
    epoch = state["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= trainer.config.epochs:
        raise CheckpointError(
            f"{source}: epoch: expected an int in 0..{trainer.config.epochs} (the epochs to train), "
            f"got {epoch!r}"
        )
    try:
        history = json.loads(state["history"]) if isinstance(state["history"], str) else None
        meta = json.loads(state["meta"]) if isinstance(state["meta"], str) else None
    except ValueError:
        history = meta = None
    if not isinstance(history, list) or len(history) != epoch or not isinstance(meta, dict):
        raise CheckpointError(
            f"{source}: history/meta: expected JSON text of {epoch} epoch records and a dict"
        )
    model_state = state["model"]
    if isinstance(model_state, dict):
        model_state = dict(model_state)
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(model_state, "module.")
    check_state_dict(trainer.model, model_state, "model", source)
    _optimizer(trainer, state["optimizer"], source)
    _rng(state["rng_cpu"], "rng_cpu", source)
    ranks = state.get("rng_cpu_ranks")
    if ranks is not None:
        if not isinstance(ranks, list):
            raise CheckpointError(f"{source}: rng_cpu_ranks: expected a list, got a {type(ranks).__name__}")
        for rank, value in enumerate(ranks):
            _rng(value, f"rng_cpu_ranks[{rank}]", source)
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise CheckpointError(f"{source}: world_size: expected an int >= 1, got {world!r}")
    if ranks is not None and len(ranks) != world:
        raise CheckpointError(f"{source}: rng_cpu_ranks: {len(ranks)} states for world_size {world}")
    if trainer.averaged is not None and "averaged" in state:
        check_state_dict(trainer.averaged, state["averaged"], "averaged", source)
    for key in ("scheduler",):
        if key in state and not isinstance(state[key], dict):
            raise CheckpointError(f"{source}: {key}: expected a dict, got a {type(state[key]).__name__}")
