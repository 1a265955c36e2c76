"""The VAE training job: MNIST, a registered model, the generic trainer, test metrics, pictures.

``train(config, run_dir)`` writes into ``run_dir``: ``config.json``, ``checkpoint.pt`` (atomic,
every epoch), ``metrics.jsonl`` (per epoch: train loss/recon/KL, test -ELBO/recon/KL, seconds,
images/s) and the final pictures. ``resume(run_dir)`` continues a run from its last complete
checkpoint; ``load_run(run_dir)`` gives the trained model back for evaluation and sampling.

Data-parallel (under ``torchrun``, see :mod:`problayers.distributed` and ``docs/distributed.md``):
``batch_size`` is the global batch (divisible by the world size); each rank trains on its slice of
every global batch (:class:`~problayers.data.EpochBatches` with ``rank``/``world_size``: the same
examples and binarization as a single process); rank 0 reads the run directory (config,
checkpoint) and hands it to the others, evaluates the whole test set (so test metrics are those a
single process would compute for the same weights), and alone writes ``config.json``, checkpoints,
``metrics.jsonl`` and the pictures.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import data as mnist
from . import distributed
from .averaging import EMA, check_decay
from .checkpoint import CheckpointError, load_checkpoint, write_json
from .distributed import DistContext
from .evaluation import evaluate
from .models import VAE, ModelConfig, build_model, vae_loss
from .schedules import make_scheduler
from .training import CHECKPOINT, Trainer, TrainerConfig

__all__ = [
    "EVAL_SEED",
    "STEP_OPTIONS",
    "RunConfig",
    "load_run",
    "load_test_images",
    "resolve_device",
    "resume",
    "step_options",
    "train",
]

CONFIG = "config.json"
#: Seed of the sampling inside per-epoch test evaluation (fixed: epochs are comparable).
EVAL_SEED = 1234


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None  # None: $PROBLAYERS_MNIST_DIR, the cache, or a download
    synthetic: int = 0  # > 0: train on this many generated digits instead of MNIST (tests, demos)
    train_subset: int | None = None  # use only the first N training images
    test_subset: int | None = None  # ... and the first N test images
    eval_batch_size: int = 500
    lr_schedule: str = "constant"  # a key of problayers.schedules.LR_SCHEDULES
    ema_decay: float | None = None  # evaluate an EMA of the weights (problayers.averaging.EMA)
    # The fast step's options (problayers.fastpath.make_train_step; single-process only for now).
    compile: bool = False
    compile_mode: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    fused_adam: bool = False  # torch.optim.Adam(fused=True) (CUDA)
    cuda_graph: bool = False  # the whole step as one CUDA graph (implies fused Adam)
    log_every: int = 25
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.synthetic, int) or self.synthetic < 0:
            raise ValueError(f"synthetic: expected an int >= 0, got {self.synthetic!r}")
        from .fastpath import COMPILE_MODES, PRECISIONS
        from .schedules import LR_SCHEDULES

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {sorted(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode: expected one of {list(COMPILE_MODES)}, got {self.compile_mode!r}"
            )
        if self.compile_mode is not None and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} needs compile=True")
        for name in ("compile", "channels_last", "fused_adam", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if self.ema_decay is not None:
            check_decay(self.ema_decay, "ema_decay")
        resolve_device(self.device)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunConfig:
        obj = dict(obj)
        obj["model"] = ModelConfig(**obj["model"])
        return cls(**obj)


#: RunConfig's fields that choose how a training step runs, not what it computes.
STEP_OPTIONS = ("compile", "compile_mode", "precision", "channels_last", "fused_adam", "cuda_graph")


def step_options(fast: bool, device: str = "auto") -> dict[str, Any]:
    """RunConfig's :data:`STEP_OPTIONS`: their defaults (the plain eager step), or with ``fast``
    the device's fastest (:func:`problayers.fastpath.fastest_defaults`, and fused Adam on CUDA)."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    opts = {name: defaults[name] for name in STEP_OPTIONS}
    if fast:
        from .fastpath import fastest_defaults

        dev = resolve_device(device)
        opts.update(fastest_defaults(dev), fused_adam=dev.type == "cuda")
    return opts


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when present, else cpu; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but no CUDA device is available")
    return dev


def _images(cfg: RunConfig, split: str) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` images of ``split`` (subset applied)."""
    if cfg.synthetic:
        images, _ = mnist.synthetic_mnist(cfg.synthetic, seed=cfg.seed + (split == "test"))
    else:
        images, _ = mnist.load_mnist(cfg.data_dir, split=split)
    subset = cfg.train_subset if split == "train" else cfg.test_subset
    return images[:subset] if subset else images


def load_test_images(cfg: RunConfig, device: torch.device) -> torch.Tensor:
    """The test set binarized once with the fixed seed: float ``(N, 1, 28, 28)`` on ``device``."""
    return mnist.binarize_fixed(_images(cfg, "test")).to(device)


def test_metrics(model: VAE, test_x: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Test -ELBO and its parts (analytic KL), with the sampling seeded by ``EVAL_SEED``."""
    was_training = model.training
    model.eval()
    devices = [test_x.device] if test_x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(EVAL_SEED)
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


def _check_parallel(cfg: RunConfig, dist: DistContext | None) -> None:
    if dist is not None:
        distributed.check_global_batch(cfg.batch_size, dist.world_size)
        distributed.check_device_spec(cfg.device, dist.local_world_size)


def _setup(cfg: RunConfig, run_dir: Path, dist: DistContext | None = None) -> Trainer:
    torch.manual_seed(cfg.seed)
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)
    device = resolve_device(cfg.device) if dist is None else dist.device_for(cfg.device)
    if dist is None:
        train_u8 = _images(cfg, "train").to(device)
        test_x = load_test_images(cfg, device)
    else:
        with dist.local_main_first():  # a download happens once per machine
            train_u8 = _images(cfg, "train").to(device)
            test_x = load_test_images(cfg, device) if dist.is_main else None  # rank 0 evaluates
    batch_size = min(cfg.batch_size, len(train_u8))
    if dist is not None:
        distributed.check_global_batch(batch_size, world)
    batches = mnist.EpochBatches(train_u8, batch_size, seed=cfg.seed, rank=rank, world_size=world)
    model = build_model(cfg.model).to(device)
    fused = cfg.fused_adam or cfg.cuda_graph
    if fused and device.type != "cuda":
        name = "cuda_graph" if cfg.cuda_graph else "fused_adam"
        raise ValueError(f"{name}: needs a CUDA device, the run is on {device}")
    extra = {"fused": True, "capturable": cfg.cuda_graph} if fused else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **extra)
    scheduler = make_scheduler(cfg.lr_schedule, optimizer, cfg.epochs * len(batches))
    averaged = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None

    step_fn = None
    if cfg.compile or cfg.precision != "fp32" or cfg.channels_last or cfg.cuda_graph:
        if dist is not None:
            raise ValueError(
                "compile/precision/channels_last/cuda_graph: the fast step is single-process for now; "
                "drop these options for data-parallel training"
            )
        from .fastpath import make_train_step

        if device.type == "cuda":  # let cuDNN time its algorithms for the step's fixed shapes
            torch.backends.cudnn.benchmark = True
        step_fn = make_train_step(
            model,
            optimizer,
            vae_loss,
            compile=cfg.compile,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
            compile_mode=cfg.compile_mode,
            cuda_graph=cfg.cuda_graph,
        )

    def evaluate_fn(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        # Rank 0 evaluates the whole test set; the other ranks wait for its record.
        return {} if test_x is None else test_metrics(model, test_x, cfg.eval_batch_size)

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
    )


def _finish(trainer: Trainer, run_dir: Path) -> list[dict[str, Any]]:
    from .pictures import save_pictures

    history = trainer.fit()
    if trainer.is_main:
        cfg = RunConfig.from_json(trainer.meta["config"])
        model = trainer.result_model
        save_pictures(model, load_test_images(cfg, next(model.parameters()).device), run_dir)
    return history


def train(cfg: RunConfig, run_dir: str | Path, *, dist: DistContext | None = None) -> list[dict[str, Any]]:
    """Train a fresh run into ``run_dir`` (which must not hold a checkpoint already).

    ``dist``: the process group to train data-parallel in (default: the one torchrun's
    environment set up through :func:`problayers.distributed.launch`, if any)."""
    run_dir = Path(run_dir)
    dist = _dist(dist)

    def check() -> None:
        if (run_dir / CHECKPOINT).exists():
            raise ValueError(f"run_dir: {run_dir} already holds a run; resume it with --resume {run_dir}")
        _check_parallel(cfg, dist)

    _on_main(dist, check)
    trainer = _setup(cfg, run_dir, dist)
    if trainer.is_main:
        write_json(run_dir / CONFIG, cfg.to_json())
    return _finish(trainer, run_dir)


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"run_dir: {run_dir} has no {CONFIG} (not a problayers run directory)")
    return RunConfig.from_json(json.loads(path.read_text()))


def _check_meta(cfg: RunConfig, state: dict[str, Any], path: Path) -> None:
    saved = json.loads(state["meta"])["config"]["model"]
    try:
        same = ModelConfig(**saved) == cfg.model  # fields added since are compared at their defaults
    except (TypeError, ValueError):
        same = False
    if not same:
        raise CheckpointError(
            f"checkpoint {path}: trained with model config {saved}, but this run's model config is "
            f"{cfg.to_json()['model']}"
        )


def resume(run_dir: str | Path, *, dist: DistContext | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Continue ``run_dir`` from its last complete checkpoint. ``overrides`` may change
    ``epochs`` (to train longer), ``device``, ``progress`` and ``log_every``. A run trained with
    the (single-process) fast step and resumed data-parallel continues with the eager step (the
    step options change how a step runs, not the model; ``config.json`` is updated).

    The checkpoint may come from any number of processes (``dist``: as for :func:`train`); the
    random streams continue as :meth:`~problayers.training.Trainer.load_state_dict` says."""
    run_dir = Path(run_dir)
    allowed = {"epochs", "device", "progress", "log_every"}
    if set(overrides) - allowed:
        raise ValueError(f"resume: only {sorted(allowed)} can change, got {sorted(set(overrides) - allowed)}")
    dist = _dist(dist)

    def read() -> tuple[RunConfig, dict[str, Any]]:
        saved = read_config(run_dir)
        cfg = dataclasses.replace(saved, **overrides)
        if dist is not None:  # the fast step is single-process: data-parallel, the eager step
            cfg = dataclasses.replace(cfg, **step_options(fast=False))
        if cfg.epochs != saved.epochs and cfg.lr_schedule != "constant":
            raise ValueError(
                f"epochs: the run's lr_schedule {cfg.lr_schedule!r} spans its {saved.epochs} epochs; "
                f"it cannot be resumed for {cfg.epochs}"
            )
        _check_parallel(cfg, dist)
        state = load_checkpoint(run_dir / CHECKPOINT)
        _check_meta(cfg, state, run_dir / CHECKPOINT)
        return cfg, state

    cfg, state = _on_main(dist, read)  # rank 0 reads the run directory, the others get it
    trainer = _setup(cfg, run_dir, dist)
    trainer.load_state_dict(state)
    if trainer.is_main:
        write_json(run_dir / CONFIG, cfg.to_json())
    return _finish(trainer, run_dir)


def load_run(
    run_dir: str | Path, device: str = "auto", *, online: bool = False
) -> tuple[VAE, RunConfig, dict[str, Any]]:
    """The trained model of ``run_dir`` (eval mode, on ``device``), its config and history.

    A run trained with ``ema_decay`` gives its averaged weights (those its test metrics are
    of), or with ``online=True`` the last iterate of training."""
    run_dir = Path(run_dir)
    cfg = dataclasses.replace(read_config(run_dir), device=device)
    state = load_checkpoint(run_dir / CHECKPOINT)
    _check_meta(cfg, state, run_dir / CHECKPOINT)
    model = build_model(cfg.model)
    weights = state["model"]
    if "averaged" in state and not online:  # EMA.state_dict(): the weights under "module."
        weights = dict(state["averaged"])
        weights.pop("_extra_state", None)  # EMA's update count and decay
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(weights, "module.")
    model.load_state_dict(weights)
    model.to(resolve_device(device)).eval()
    return model, cfg, {"history": json.loads(state["history"]), "epoch": int(state["epoch"])}
