"""The VAE training job: MNIST, a registered model, the generic trainer, test metrics, pictures.

``train(config, run_dir)`` writes into ``run_dir``: ``config.json``, ``checkpoint.pt`` (atomic,
every epoch), ``metrics.jsonl`` (per epoch: train loss/recon/KL, test -ELBO/recon/KL, seconds,
images/s), the final pictures, and with ``logger="tensorboard"`` TensorBoard event files in
``tensorboard/`` (the trainer's scalars, and the pictures of every epoch). ``resume(run_dir)``
continues a run from its last complete checkpoint; ``load_run(run_dir)`` gives the trained model
back for evaluation and sampling, after validating the checkpoint. ``train`` and ``resume`` hold
the run directory's lock (:mod:`problayers.vae.runlock`) and first remove the temporaries a
killed run left; see ``docs/reliability.md`` for what is promised.

Data-parallel (under ``torchrun``, see :mod:`problayers.train.distributed` and ``docs/distributed.md``):
``batch_size`` is the global batch (divisible by the world size); each rank trains on its slice of
every global batch (:class:`~problayers.vae.data.EpochBatches` with ``rank``/``world_size``: the same
examples and binarization as a single process); rank 0 reads the run directory (config,
checkpoint) and hands it to the others, evaluates the whole test set (so test metrics are those a
single process would compute for the same weights), and alone writes ``config.json``, checkpoints,
``metrics.jsonl`` and the pictures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

from ..train import distributed
from ..train.allocator import retain_freed_memory
from ..train.averaging import EMA
from ..train.checkpoint import load_checkpoint, remove_stale_temps, write_json
from ..train.distributed import DistContext
from ..train.errors import RunDirError
from ..train.keras_adam import ADAMS
from ..train.loggers import TensorBoardLogger, check_available
from ..train.rng import fork_rng
from ..train.schedules import make_scheduler
from ..train.trainer import CHECKPOINT, Trainer, TrainerConfig
from . import data as mnist
from .evaluation import evaluate
from .models import VAE, build_model, vae_loss
from .runconfig import (
    RESUME_OVERRIDES,
    STEP_OPTIONS,
    RunConfig,
    choose_step,
    resolve_device,
    step_misfit,
    step_options,
    train_step_args,
)
from .rundir import (
    CONFIG,
    OWN_FILES,
    check_consistent,
    check_has_checkpoint,
    check_new_run,
    check_run_state,
    check_weights_fit,
    made_dir,
    read_config,
    tensorboard_dir,
)
from .runlock import RunLock

__all__ = [
    "EVAL_SEED",
    "STEP_OPTIONS",
    "RunConfig",
    "load_run",
    "load_test_images",
    "read_config",
    "resolve_device",
    "resume",
    "step_options",
    "train",
]

#: Seed of the sampling inside per-epoch test evaluation (fixed: epochs are comparable).
EVAL_SEED = 1234


def _images(cfg: RunConfig, split: str) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` images of ``split`` (subset applied)."""
    if cfg.synthetic:
        # fixed sets, as MNIST's: the run's seed does not pick the data (it picked the test
        # set, another seed's training set, before 2026-12-07)
        images, _ = mnist.synthetic_mnist(cfg.synthetic, seed=int(split == "test"))
    else:
        where = "the run's data_dir (--data-dir, or its config.json)"
        images, _ = mnist.load_mnist(cfg.data_dir, split=split, source=where)
    subset = cfg.train_subset if split == "train" else cfg.test_subset
    if subset and subset > len(images):  # a run records what it used: never fewer silently
        raise ValueError(f"{split}_subset: expected at most the {len(images)} {split} images, got {subset}")
    return images[:subset].clone() if subset else images  # not a view that keeps all of them


def load_test_images(cfg: RunConfig, device: torch.device) -> torch.Tensor:
    """The test set binarized once with the fixed seed: float ``(N, 1, 28, 28)`` on ``device``."""
    return mnist.binarize_fixed(_images(cfg, "test")).to(device)


def test_metrics(model: VAE, test_x: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Test -ELBO and its parts (the exact KL where torch has a formula for the pair, else its
    one-sample Monte Carlo estimate), with the sampling seeded by ``EVAL_SEED``."""
    was_training = model.training
    model.eval()
    with fork_rng(test_x.device, EVAL_SEED), torch.no_grad():  # a trained prior's graph too
        out = evaluate(model.encode, model.decode, model.prior(), test_x, batch_size=batch_size)
    model.train(was_training)
    return {"test_neg_elbo": out["neg_elbo"], "test_recon": out["recon"], "test_kl": out["kl"]}


def _dist(dist: DistContext | None) -> DistContext | None:
    """The process group to train in: ``dist``, else the one :func:`distributed.init_from_env`
    set up (torchrun), else ``None`` (single-process); a world of one is single-process."""
    dist = dist if dist is not None else distributed.current()
    return dist if dist is not None and dist.world_size > 1 else None


def _on_main(dist: DistContext | None, fn: Any) -> Any:
    """``fn()`` on rank 0, its result (or its error) on every rank."""
    return fn() if dist is None else dist.run_on_main(fn)


def _check_options(cfg: RunConfig, dist: DistContext | None, resuming: bool = False) -> None:
    check_available(cfg.logger, f"--logger {cfg.logger}")  # its package is installed
    if dist is None:
        resolve_device(cfg.device)  # it exists here (config.json may come from another machine)
    else:
        distributed.check_global_batch(cfg.batch_size, dist.world_size, resuming)
        distributed.check_device_spec(cfg.device, dist.local_world_size)


def _setup(cfg: RunConfig, run_dir: Path, dist: DistContext | None = None) -> Trainer:
    torch.manual_seed(cfg.seed)
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)
    device = resolve_device(cfg.device) if dist is None else dist.device_for(cfg.device)
    test_x: torch.Tensor | None
    if dist is None:
        train_u8 = _images(cfg, "train").to(device)
        test_x = load_test_images(cfg, device)
    else:
        with dist.local_main_first():  # a download happens once per machine
            train_u8 = _images(cfg, "train").to(device)
            test_x = load_test_images(cfg, device) if dist.is_main else None  # rank 0 evaluates
    if cfg.batch_size > len(train_u8):
        raise ValueError(
            f"batch_size: expected at most the {len(train_u8)} training images, got {cfg.batch_size}"
        )
    batches = mnist.EpochBatches(train_u8, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    model = build_model(cfg.model).to(device)
    misfit = step_misfit(cfg, device)
    if misfit is not None:
        raise ValueError(misfit)
    fused = cfg.fused_adam or cfg.cuda_graph
    extra: dict[str, Any] = {"fused": True, "capturable": cfg.cuda_graph} if fused else {}
    optimizer = ADAMS[cfg.adam](model.parameters(), lr=cfg.lr, **extra)
    scheduler = make_scheduler(cfg.lr_schedule, optimizer, cfg.epochs * len(batches))
    averaged = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    if cfg.retain_memory and device.type == "cpu":  # before the probe, so that it measures with it
        print(f"memory: {retain_freed_memory().reason}", flush=True)
    if dist is None:  # --fast on a CPU: measure the step's options on this model and batch
        cfg = choose_step(cfg, model, optimizer, next(iter(batches.epoch(0))))

    step_fn = None
    step_args = train_step_args(cfg)
    if step_args is not None:
        if dist is not None:
            raise ValueError(
                f"{'/'.join(step_args)}: the fast step is single-process for now; "
                "drop these options for data-parallel training"
            )
        from ..train.fastpath import make_train_step

        if device.type == "cuda":  # let cuDNN time its algorithms for the step's fixed shapes
            torch.backends.cudnn.benchmark = True
        step_fn = make_train_step(model, optimizer, vae_loss, **step_args)

    def evaluate_fn(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        # Rank 0 evaluates the whole test set; the other ranks wait for its record.
        return {} if test_x is None else test_metrics(cast(VAE, model), test_x, cfg.eval_batch_size)

    def pictures_to_loggers(trainer: Trainer, record: dict[str, Any]) -> None:
        assert test_x is not None  # installed only where there is a test set (below)
        from .pictures import picture_arrays

        images = picture_arrays(cast(VAE, trainer.result_model), test_x)
        for logger in trainer.loggers:
            if hasattr(logger, "log_images"):
                logger.log_images(record["epoch"], images)

    return Trainer(
        model,
        optimizer,
        vae_loss,
        batches.epoch,
        TrainerConfig(epochs=cfg.epochs, log_every=cfg.log_every, progress=cfg.progress),
        evaluate=evaluate_fn,
        run_dir=run_dir,
        meta={"config": cfg.to_json()},
        dist=dist,
        step_fn=step_fn,
        scheduler=scheduler,
        averaged=averaged,
        on_epoch_end=pictures_to_loggers if cfg.logger != "none" and test_x is not None else None,
    )


def _attach_loggers(trainer: Trainer, cfg: RunConfig, run_dir: Path) -> None:
    """Rank 0: the run's logger; it hides what a killed run logged after its checkpoint (all of
    it for a run started again, killed before its first)."""
    if trainer.is_main and cfg.logger == "tensorboard":
        purge = trainer.global_step + 1 if trainer.epoch else 0
        trainer.loggers.append(
            TensorBoardLogger(tensorboard_dir(run_dir), purge_step=purge, what="--logger tensorboard")
        )


def _finish(trainer: Trainer, run_dir: Path) -> list[dict[str, Any]]:
    from .pictures import save_pictures

    cfg = RunConfig.from_json(trainer.meta["config"])
    _attach_loggers(trainer, cfg, run_dir)
    history = trainer.fit()
    if trainer.is_main:
        model = cast(VAE, trainer.result_model)
        save_pictures(model, load_test_images(cfg, next(model.parameters()).device), run_dir)
    return history


@contextmanager
def _locked(
    run_dir: str | Path,
    dist: DistContext | None,
    check: Callable[[], Any],
    *,
    create: bool = False,
    before: Callable[[], Any] | None = None,
) -> Iterator[Any]:
    """Rank 0 runs ``before`` (option checks), checks ``run_dir`` (``create``: makes it), takes
    its lock, removes stale temporaries and runs ``check``, whose result (or error) every rank
    gets; the lock is held until the block ends. The directories made here (``run_dir`` and the
    parents made for it) that are still empty then (the run failed before writing anything) are
    removed again."""
    lock = RunLock(run_dir)
    made = contextlib.ExitStack()

    def locked_check() -> Any:
        if before is not None:
            before()
        if create:
            made.enter_context(made_dir(run_dir, "--out"))
        elif not Path(run_dir).is_dir():
            raise RunDirError(f"run_dir: {run_dir} is not a directory (not a problayers run directory)")
        lock.acquire()
        try:
            checked = check()  # first: a directory refused is left as it is
            remove_stale_temps(run_dir, legacy_names=OWN_FILES)
            return checked
        except BaseException:
            lock.release()
            raise

    try:
        yield _on_main(dist, locked_check)
    finally:
        lock.release()
        made.close()


def train(cfg: RunConfig, run_dir: str | Path, *, dist: DistContext | None = None) -> list[dict[str, Any]]:
    """Train a fresh run into ``run_dir`` (which must not hold a checkpoint already), holding
    its lock (:class:`~problayers.vae.runlock.RunLock`) while it runs.

    ``dist``: the process group to train data-parallel in (default: the one torchrun's
    environment set up through :func:`problayers.train.distributed.launch`, if any)."""
    dist = _dist(dist)
    cfg = cfg.with_absolute_data_dir()
    given, run_dir = run_dir, Path(run_dir).expanduser()

    def check() -> None:
        check_new_run(run_dir, CHECKPOINT)

    options = functools.partial(_check_options, cfg, dist)  # before the directory is made
    with _locked(given, dist, check, create=True, before=options):  # "" is refused, not taken as "."
        trainer = _setup(cfg, run_dir, dist)
        if trainer.is_main:  # the config as set up (with the step options a probe chose)
            write_json(run_dir / CONFIG, trainer.meta["config"])
        return _finish(trainer, run_dir)


def resume(run_dir: str | Path, *, dist: DistContext | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Continue ``run_dir`` from its last complete checkpoint, holding its lock. ``overrides``
    may change ``epochs`` (the total, at least the epochs done; a run with an ``lr_schedule``
    keeps its epochs), ``lr`` (a constant schedule only; the optimizer continues at it),
    ``device``, ``data_dir``, ``progress`` and ``log_every``; a change of epochs, lr, device or
    data is recorded in ``config.json``'s ``resumed`` list. A run trained with the
    (single-process) fast step and resumed data-parallel continues with the eager step, and a GPU
    run's CUDA-graph step resumed without a GPU with this device's fast step (the step options
    change how a step runs, not the model; ``config.json`` is updated).

    The checkpoint may come from any number of processes (``dist``: as for :func:`train`); the
    random streams continue as :meth:`~problayers.train.trainer.Trainer.load_state_dict` says."""
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise ValueError(
            f"resume: only {sorted(RESUME_OVERRIDES)} can change, got {refused} (they define the run)"
        )
    run_dir = Path(run_dir)
    dist = _dist(dist)

    def read() -> tuple[RunConfig, dict[str, Any]]:
        saved = read_config(run_dir)
        path = check_has_checkpoint(run_dir, CHECKPOINT, "nothing can be resumed")
        state = load_checkpoint(path)
        check_run_state(state, str(path), training=True)
        done = state["epoch"]
        check_consistent(saved, json.loads(state["meta"])["config"], done, str(path))
        check_weights_fit(saved.model, state["model"], "model", str(path))  # before building it
        cfg = dataclasses.replace(saved, **overrides).with_absolute_data_dir()
        if cfg.epochs < done:
            raise ValueError(
                f"epochs: the run has trained {done} epochs; expected a total >= {done}, got {cfg.epochs}"
            )
        if cfg.lr_schedule != "constant":
            for name in ("epochs", "lr"):
                if getattr(cfg, name) != getattr(saved, name):
                    raise ValueError(
                        f"{name}: the run's lr_schedule {cfg.lr_schedule!r} spans its {saved.epochs} "
                        f"epochs at peak lr {saved.lr}; it cannot be resumed with {name} {getattr(cfg, name)}"
                    )
        changed = {
            k: getattr(cfg, k)
            for k in ("epochs", "lr", "device", "data_dir")
            if getattr(cfg, k) != getattr(saved, k)
        }
        step = None
        if dist is not None:  # the fast step is single-process: data-parallel, the eager step
            step = step_options(fast=False)
        elif step_misfit(cfg, resolve_device(cfg.device)) is not None:
            # a run's fast step resumed on a device it does not fit (a GPU run's CUDA graphs
            # without a GPU, a CPU run's fused Adam on mps): this device's fast step instead
            step = step_options(fast=True, device=cfg.device)
        if step is not None:
            step_changed = {k: v for k, v in step.items() if getattr(cfg, k) != v}
            if step_changed:  # recorded, and the probe's choice no longer the step's
                changed["step"] = step_changed
                cfg = dataclasses.replace(cfg, **step, step_choice=None)
        if changed:
            cfg = dataclasses.replace(cfg, resumed=(*saved.resumed, {"at_epoch": done, **changed}))
        _check_options(cfg, dist, resuming=True)
        return cfg, state

    with _locked(run_dir, dist, read) as (cfg, state):  # rank 0 reads, the others get it
        trainer = _setup(cfg, run_dir, dist)
        trainer.load_state_dict(state, source=str(run_dir / CHECKPOINT))
        trainer.repair_metrics()
        if trainer.scheduler is None:  # --lr on resume (a constant schedule; others refuse it)
            for group in trainer.optimizer.param_groups:
                group["lr"] = cfg.lr
        if trainer.is_main:
            write_json(run_dir / CONFIG, cfg.to_json())
        return _finish(trainer, run_dir)


def load_run(
    run_dir: str | Path, device: str = "auto", *, online: bool = False
) -> tuple[VAE, RunConfig, dict[str, Any]]:
    """The trained model of ``run_dir`` (eval mode, on ``device``), its config and history.

    The checkpoint is validated first (structure, metadata, shapes, finite weights): a damaged
    or foreign one raises a one-line :class:`~problayers.train.checkpoint.CheckpointError`. A run
    trained with ``ema_decay`` gives its averaged weights (those its test metrics are of), or
    with ``online=True`` the last iterate of training."""
    run_dir = Path(run_dir)
    resolve_device(device)
    cfg = dataclasses.replace(read_config(run_dir), device=device)
    path = check_has_checkpoint(run_dir, CHECKPOINT, "it has no trained model yet")
    state = load_checkpoint(path)
    saved = check_run_state(state, str(path))
    check_consistent(cfg, saved, state["epoch"], str(path), averaged="averaged" in state)
    weights, what = state["model"], "model"
    if "averaged" in state and not online:  # EMA.state_dict(): the weights under "module."
        weights, what = dict(state["averaged"]), "averaged"
        weights.pop("_extra_state", None)  # EMA's update count and decay
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(weights, "module.")
    weights = check_weights_fit(cfg.model, weights, what, str(path))  # before building it
    model = build_model(cfg.model)
    model.load_state_dict(weights)
    model.to(resolve_device(device)).eval()
    return model, cfg, {"history": json.loads(state["history"]), "epoch": state["epoch"]}
