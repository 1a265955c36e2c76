"""What a :class:`~problayers.train.trainer.Trainer` checkpoint holds: writing it, checking it, restoring it.

:func:`trainer_state` gathers the model, optimizer, scheduler, averaged weights, history and every
rank's random state; :func:`check_trainer_state` checks a loaded one's structure first, so that a
damaged or foreign file fails with one line naming it (not deep inside ``load_state_dict`` or at
the next optimizer step); :func:`load_trainer_state` restores it, on any number of processes."""

from __future__ import annotations

import json
from typing import Any

import torch

from .checkpoint import CheckpointError, check_state_dict, parse_json
from .errors import one_line
from .rng import device_generator

__all__ = ["check_trainer_state", "load_trainer_state", "trainer_state"]


def _rng(value: Any, what: str, source: str, cpu: bool = True) -> None:
    """A CPU random state (uint8, the CPU generator's length), or another device's (a uint8 vector)."""
    want = torch.get_rng_state().shape if cpu else None
    shape_ok = isinstance(value, torch.Tensor) and (value.shape == want if cpu else value.dim() == 1)
    if not shape_ok or value.dtype != torch.uint8:
        got = (
            f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        )
        kind = (
            f"a CPU random state (uint8 {tuple(want)})"
            if want is not None
            else "a random state (a uint8 vector)"
        )
        raise CheckpointError(f"{source}: {what}: expected {kind}, got {got}")


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
        history = parse_json(state["history"]) if isinstance(state["history"], str) else None
        meta = parse_json(state["meta"]) if isinstance(state["meta"], str) else None
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
    key, generator = _device_rng(trainer)
    value = state.get(key)
    if generator is not None and value is not None:
        _rng(value, key, source, cpu=False)
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise CheckpointError(f"{source}: world_size: expected an int >= 1, got {world!r}")
    if ranks is not None and len(ranks) != world:
        raise CheckpointError(f"{source}: rng_cpu_ranks: {len(ranks)} states for world_size {world}")
    # either way round: resumed without its scheduler a run's lr stays where it stopped, and
    # without its averaging the average is dropped at the next checkpoint
    for key, ours, what in (
        ("scheduler", trainer.scheduler, "a learning-rate scheduler"),
        ("averaged", trainer.averaged, "weight averaging"),
    ):
        if (ours is None) != (key not in state):
            written, resumed = ("without", "with") if ours is not None else ("with", "without")
            raise CheckpointError(f"{source}: written {written} {what}, resumed {resumed} it")
    if trainer.averaged is not None and "averaged" in state:
        check_state_dict(trainer.averaged, state["averaged"], "averaged", source)
    for key in ("scheduler",):
        if key in state and not isinstance(state[key], dict):
            raise CheckpointError(f"{source}: {key}: expected a dict, got a {type(state[key]).__name__}")
    if trainer.scheduler is not None:  # another kind of schedule: its own fields are not there
        missing = sorted(set(trainer.scheduler.state_dict()) - set(state["scheduler"]) - {"verbose"})
        if missing:
            raise CheckpointError(
                f"{source}: scheduler: written by another kind of learning-rate scheduler than this "
                f"run's {type(trainer.scheduler).__name__} (it has no {', '.join(missing)})"
            )


def _device(trainer: Any) -> torch.device:
    param = next(trainer.model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _device_rng(trainer: Any) -> tuple[str, Any]:
    """The checkpoint key of the model's device's own random state (``"rng_mps"``...) and the
    module that reads and sets it; ``None`` for the CPU and CUDA (kept as ``rng_cuda*``) and
    data-parallel runs (whose devices are CUDA's or the CPU)."""
    device = _device(trainer)
    generator = None if device.type == "cuda" or trainer.dist is not None else device_generator(device)
    return f"rng_{device.type}", generator


def trainer_state(trainer: Any) -> dict[str, Any]:
    """The checkpoint of ``trainer``; data-parallel, every rank must call it (it gathers the
    random states of all ranks)."""
    state = {
        "epoch": trainer.epoch,
        "model": trainer.model.state_dict(),  # the unwrapped model: no "module." prefix
        "optimizer": trainer.optimizer.state_dict(),  # the same on every rank
        "rng_cpu": torch.get_rng_state(),
        "history": json.dumps(trainer.history),
        "meta": json.dumps(trainer.meta),
        "world_size": trainer.world_size,
    }
    if trainer.scheduler is not None:
        state["scheduler"] = trainer.scheduler.state_dict()
    if trainer.averaged is not None:
        state["averaged"] = trainer.averaged.state_dict()
    if trainer.dist is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        key, generator = _device_rng(trainer)
        if generator is not None:  # mps, xpu...: the generator the training noise comes from
            state[key] = generator.get_rng_state(_device(trainer))
        return state
    device = _device(trainer)
    mine = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    ranks = trainer.dist.all_gather_object(mine)
    state["rng_cpu"] = ranks[0]["cpu"]
    state["rng_cpu_ranks"] = [r["cpu"] for r in ranks]
    if device.type == "cuda":
        state["rng_cuda_ranks"] = [r["cuda"] for r in ranks]
    return state


#: An optimizer's param-group flags that choose its kernels, not its state.
_STEP_KERNEL_FLAGS = ("fused", "foreach", "capturable", "differentiable")
#: Settings that say which algorithm the optimizer is (Adam or AdamW, maximizing or not) and that
#: no schedule moves (lr, betas, momentum and eps may be): the run's, as it built them.
_ALGORITHM_SETTINGS = (
    "weight_decay",
    "decoupled_weight_decay",
    "maximize",
    "amsgrad",
    "nesterov",
    "dampening",
)


def load_trainer_state(trainer: Any, state: Any, source: str) -> None:
    """Check ``state`` (:func:`check_trainer_state`), then restore it into ``trainer``; see
    :meth:`~problayers.train.trainer.Trainer.load_state_dict` for the random streams."""
    check_trainer_state(trainer, state, source)
    model_state = dict(state["model"])
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(model_state, "module.")
    trainer.model.load_state_dict(model_state)
    # How the optimizer steps (fused, foreach, capturable) is this run's choice, for its device,
    # and which algorithm it is (weight decay, maximize...) is the run's as built: torch's
    # load_state_dict would bring back those of whatever wrote the checkpoint.
    built = (*_STEP_KERNEL_FLAGS, *_ALGORITHM_SETTINGS)  # a checkpoint's would replace them
    kernels = [{k: g[k] for k in built if k in g} for g in trainer.optimizer.param_groups]
    settings = [set(g) - {"params"} for g in trainer.optimizer.param_groups]
    before = trainer.optimizer.state_dict()
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{source}: optimizer: does not fit ({one_line(err)})") from None
    # Another optimizer's groups lack this one's settings (SGD's momentum, Adam's betas); torch
    # fills in only the optional ones a newer version added.
    groups = trainer.optimizer.param_groups
    lacking = sorted(set().union(*(s - set(g) for s, g in zip(settings, groups, strict=True))))
    amsgrad = [g.get("amsgrad") for g in groups] != [k.get("amsgrad") for k in kernels]  # another state
    if lacking or amsgrad:
        trainer.optimizer.load_state_dict(before)
        raise CheckpointError(
            f"{source}: optimizer: written by another optimizer than this run's "
            f"{type(trainer.optimizer).__name__} (its parameter groups "
            + (f"have no {', '.join(lacking)})" if lacking else "differ in amsgrad)")
        )
    for group, flags in zip(trainer.optimizer.param_groups, kernels, strict=True):
        group.update(flags)
        on_device = bool(group.get("fused") or group.get("capturable"))  # else: torch's CPU step count
        for param in group["params"]:
            step = trainer.optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                trainer.optimizer.state[param]["step"] = step.to(param.device if on_device else "cpu")
    if trainer.scheduler is not None:
        try:
            trainer.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{source}: scheduler: does not fit ({one_line(err)})") from None
    if trainer.averaged is not None:
        decay = trainer.averaged.decay
        try:
            trainer.averaged.load_state_dict(state["averaged"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{source}: averaged: does not fit ({one_line(err)})") from None
        if trainer.averaged.decay != decay:
            raise CheckpointError(
                f"{source}: averaged: decay {trainer.averaged.decay} differs from the run's {decay}"
            )
    trainer.epoch = int(state["epoch"])
    trainer.history = json.loads(state["history"])
    _restore_rng(trainer, state)


def _restore_rng(trainer: Any, state: dict[str, Any]) -> None:
    """Each rank's own stream on the world size the checkpoint was written with; otherwise rank
    0's stream, from which the other ranks derive theirs."""
    saved_world = int(state.get("world_size", 1))
    rank, device = trainer.rank, _device(trainer)
    same = saved_world == trainer.world_size
    cpu_ranks = state.get("rng_cpu_ranks")
    torch.set_rng_state(cpu_ranks[rank] if same and cpu_ranks is not None else state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda_ranks" in state:
        cuda_ranks = state["rng_cuda_ranks"]
        torch.cuda.set_rng_state(cuda_ranks[rank] if same else cuda_ranks[0], device)
    else:
        cuda = state.get("rng_cuda")
        if cuda is not None and torch.cuda.is_available():
            if trainer.dist is None and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            elif device.type == "cuda" and device.index < len(cuda):
                torch.cuda.set_rng_state(cuda[device.index], device)
    key, generator = _device_rng(trainer)
    if generator is not None and key in state:
        generator.set_rng_state(state[key], device)
    if trainer.dist is not None and not same:
        trainer.dist.split_rng()
