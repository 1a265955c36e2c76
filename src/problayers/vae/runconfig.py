"""What defines a training run: :class:`RunConfig` (saved as the run's ``config.json``), its
strict reading back from JSON, the step options and the device names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..train.averaging import check_decay
from ..train.trainerargs import plain_numbers
from .idx import MAX_IDX_EXAMPLES
from .models import ModelConfig

if TYPE_CHECKING:
    from ..train.probe import StepChoice

__all__ = [
    "FUSED_ADAM_DEVICES",
    "MAX_EPOCHS",
    "RESUME_OVERRIDES",
    "STEP_OPTIONS",
    "RunConfig",
    "choose_step",
    "measure_step",
    "resolve_device",
    "step_misfit",
    "step_options",
]

#: The most epochs a run may have (a larger number in a config or checkpoint is refused as corrupt).
MAX_EPOCHS = 100_000
#: The device types whose runs may take torch's fused Adam (one kernel per parameter group; on the
#: CPU it also avoids MKL's slow sqrt of the zero and subnormal second moments that entries with a
#: zero gradient reach, see docs/benchmarks.md).
FUSED_ADAM_DEVICES = ("cuda", "cpu")
#: The keys a ``config.json`` must have (the others default, for files of older versions).
REQUIRED = ("model", "epochs", "batch_size", "lr", "seed")


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
    synthetic: int = 0  # > 0: this many generated digits (fixed train and test sets) for MNIST's
    train_subset: int | None = None  # use only the first N training images
    test_subset: int | None = None  # ... and the first N test images
    eval_batch_size: int = 500
    lr_schedule: str = "constant"  # a key of problayers.train.schedules.LR_SCHEDULES
    # "torch": torch.optim.Adam (eps 1e-8); "keras": problayers.train.keras_adam.KerasAdam, the
    # update of tf_keras' Adam (eps 1e-7 added before the bias correction), for ported recipes.
    adam: str = "torch"
    ema_decay: float | None = None  # evaluate an EMA of the weights (problayers.train.averaging.EMA)
    # The fast step's options (problayers.train.fastpath.make_train_step; single-process only for now).
    compile: bool = False
    compile_mode: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    fused_adam: bool = False  # torch.optim.Adam(fused=True) (CUDA or CPU)
    cuda_graph: bool = False  # the whole step as one CUDA graph (implies fused Adam)
    # Transposed convolutions on the convolution's passes (problayers.train.transposed); a
    # config.json from before the field means False.
    transposed_as_conv: bool = False
    # Narrow convolutions' weight gradient on the transposed convolution's pass (the same module).
    narrow_conv_by_transposed: bool = False
    # True (--fast on a CPU): a fresh run measures the step's precision, channels_last and
    # convolution passes on its own model and batch first (problayers.train.probe, cached per
    # machine) and records here what it chose and why; a resumed run keeps the recorded choice.
    auto_step: bool = False
    step_choice: dict[str, Any] | None = None
    # True (--fast on a CPU): glibc keeps freed memory for the next step instead of unmapping it
    # (problayers.train.allocator); a config.json from before the field means False.
    retain_memory: bool = False
    log_every: int = 25
    progress: bool = True
    # An experiment logger (problayers.train.loggers.LOGGERS) writing into the run directory;
    # a config.json from before the field means "none".
    logger: str = "none"
    # One entry per resume that changed a setting: {"at_epoch": N, "epochs": ..., "lr": ...}.
    resumed: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        plain_numbers(self)
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model: expected a ModelConfig, got {self.model!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            _positive_int(name, getattr(self, name))
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"epochs: expected at most {MAX_EPOCHS}, got {self.epochs}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: expected an int in 0..2**63 - 1, got {self.seed!r}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        synthetic = self.synthetic
        if (
            not isinstance(synthetic, int)
            or isinstance(synthetic, bool)
            or not 0 <= synthetic <= MAX_IDX_EXAMPLES
        ):
            raise ValueError(
                f"synthetic: expected an int in 0..{MAX_IDX_EXAMPLES} (MNIST's bound), got {synthetic!r}"
            )
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir: expected a path string or null, got {self.data_dir!r}")
        if self.synthetic and self.data_dir:  # a run records what it used: not a directory unread
            raise ValueError(
                f"data_dir: a synthetic run ({self.synthetic} generated digits) reads no MNIST "
                f"directory, got {self.data_dir!r}"
            )
        from ..train.fastpath import COMPILE_MODES, PRECISIONS
        from ..train.loggers import LOGGERS
        from ..train.schedules import LR_SCHEDULES

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {sorted(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        from ..train.keras_adam import ADAMS

        if self.adam not in ADAMS:
            raise ValueError(f"adam: expected one of {list(ADAMS)}, got {self.adam!r}")
        if self.adam == "keras" and self.cuda_graph:
            raise ValueError(
                "adam/cuda_graph: Keras' Adam changes eps every step, which the CUDA-graph step "
                "would not see; drop one of the two"
            )
        if self.logger not in LOGGERS:
            raise ValueError(f"logger: expected one of {list(LOGGERS)}, got {self.logger!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode: expected one of {list(COMPILE_MODES)}, got {self.compile_mode!r}"
            )
        if self.compile_mode is not None and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} needs compile=True")
        flags = (
            "compile",
            "channels_last",
            "fused_adam",
            "cuda_graph",
            "progress",
            "auto_step",
            "retain_memory",
            "transposed_as_conv",
            "narrow_conv_by_transposed",
        )
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        lr = self.lr
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < float("inf"):
            raise ValueError(f"lr: expected a finite number > 0, got {self.lr!r}")
        if self.ema_decay is not None:
            check_decay(self.ema_decay, "ema_decay")
        if self.step_choice is not None and not isinstance(self.step_choice, dict):
            raise ValueError(f"step_choice: expected an object or null, got {self.step_choice!r}")
        if not isinstance(self.resumed, tuple) or not all(isinstance(r, dict) for r in self.resumed):
            raise ValueError(f"resumed: expected a list of objects, got {self.resumed!r}")
        _device_name(self.device)  # its availability is checked where it is used (resolve_device)

    def with_absolute_data_dir(self) -> RunConfig:
        """This config with its ``data_dir`` absolute (a run must not depend on where it ran)."""
        if not self.data_dir:
            return self
        return dataclasses.replace(self, data_dir=str(Path(self.data_dir).expanduser().resolve()))

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["resumed"] = list(out["resumed"])
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str = "config") -> RunConfig:
        """The config of ``obj`` (a parsed ``config.json``); a one-line ``ValueError`` naming
        ``source`` for anything but an object with the known keys and valid values."""
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: expected a JSON object of run settings, got {_kind(obj)}")
        fmt = obj.get("format")
        if isinstance(fmt, str) and fmt.startswith("problayers-vae"):  # pretrained.FORMAT
            raise ValueError(
                f"{source}: an export ({fmt!r}, made by problayers export), not a run's settings; "
                "give the run directory it came from, or load it with problayers.vae.load_pretrained"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(obj) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected keys among {known}")
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        model = obj["model"]
        model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
        if not isinstance(model, dict):
            raise ValueError(
                f"{source}: model: expected an object with keys {model_keys}, got {_kind(model)}"
            )
        unknown = sorted(set(model) - set(model_keys))
        if unknown:
            raise ValueError(f"{source}: model: unknown key(s) {unknown}; expected keys among {model_keys}")
        values = dict(obj)
        if isinstance(values.get("resumed"), list):
            values["resumed"] = tuple(values["resumed"])
        try:
            values["model"] = ModelConfig.from_dict(model)
            return cls(**values)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{source}: {err}") from None


def _kind(obj: Any) -> str:
    return "null" if obj is None else f"{type(obj).__name__} {obj!r}"[:80]


#: What a resume may change (the rest defines the run).
RESUME_OVERRIDES = ("epochs", "lr", "device", "data_dir", "progress", "log_every")
#: RunConfig's fields that choose how a training step runs, not what it computes.
STEP_OPTIONS = (
    "compile",
    "compile_mode",
    "precision",
    "channels_last",
    "fused_adam",
    "cuda_graph",
    "auto_step",
    "retain_memory",
    "transposed_as_conv",
    "narrow_conv_by_transposed",
)


#: The :data:`STEP_OPTIONS` that are :func:`~problayers.train.fastpath.make_train_step`'s arguments.
TRAIN_STEP_ARGS = (
    "compile",
    "compile_mode",
    "precision",
    "channels_last",
    "cuda_graph",
    "transposed_as_conv",
    "narrow_conv_by_transposed",
)


def train_step_args(cfg: RunConfig) -> dict[str, Any] | None:
    """The :data:`TRAIN_STEP_ARGS` ``cfg`` sets away from their defaults (which are
    ``make_train_step``'s too); ``None`` where it sets none: the trainer's own eager step."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    args = {name: getattr(cfg, name) for name in TRAIN_STEP_ARGS if getattr(cfg, name) != defaults[name]}
    return args or None


def step_misfit(cfg: RunConfig, device: torch.device) -> str | None:
    """Why ``cfg``'s step options cannot train on ``device`` (one line naming the option), or
    ``None``: CUDA graphs need CUDA, fused Adam a device of :data:`FUSED_ADAM_DEVICES`, bf16
    a CPU or CUDA device."""
    if cfg.cuda_graph and device.type != "cuda":
        return f"cuda_graph: needs a CUDA device, the run is on {device}"
    if (cfg.fused_adam or cfg.cuda_graph) and device.type not in FUSED_ADAM_DEVICES:
        return f"fused_adam: needs a CUDA or CPU device, the run is on {device}"
    if cfg.precision == "bf16" and device.type not in ("cpu", "cuda"):
        return f"precision: 'bf16' needs a CPU or CUDA device, the run is on {device}"
    return None


def step_options(fast: bool, device: str = "auto") -> dict[str, Any]:
    """RunConfig's :data:`STEP_OPTIONS`: their defaults (the plain eager step), or with ``fast``
    the device's fastest (:func:`problayers.train.fastpath.fastest_defaults`, and fused Adam on CUDA
    and the CPU; on a CPU ``auto_step``: the run measures its precision, channels_last and convolution passes,
    see :func:`choose_step`, and ``retain_memory``:
    :func:`problayers.train.allocator.retain_freed_memory`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    opts = {name: defaults[name] for name in STEP_OPTIONS}
    if fast:
        from ..train.fastpath import fastest_defaults

        dev = resolve_device(device)
        cpu = dev.type == "cpu"
        opts.update(fastest_defaults(dev), fused_adam=dev.type in FUSED_ADAM_DEVICES)
        opts.update(auto_step=cpu, retain_memory=cpu)
    return opts


def choose_step(
    cfg: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor
) -> RunConfig:
    """``cfg`` with the CPU step options :func:`problayers.train.probe.probe_step_options`
    measures (or finds cached) for training ``model`` on ``batch``, and ``step_choice`` recording
    them; printed in one line. Unchanged unless ``cfg.auto_step`` and the model is on the CPU
    and no choice is recorded yet (a resumed run keeps its own)."""
    if not cfg.auto_step or cfg.step_choice is not None or batch.device.type != "cpu":
        return cfg
    choice = measure_step(cfg, model, optimizer, batch)
    print(choice.describe(also=["fused_adam"] if cfg.fused_adam else []), flush=True)
    return dataclasses.replace(cfg, **choice.options, step_choice=choice.record())


def measure_step(
    cfg: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor
) -> StepChoice:
    """The CPU step options for ``cfg``'s model and batch size on this machine: the cached
    measurement (a run trained here made it) or a new one (a few seconds)."""
    import json

    from ..train.probe import probe_step_options
    from .models import vae_loss

    workload = json.dumps(
        {"model": dataclasses.asdict(cfg.model), "batch_size": cfg.batch_size}, sort_keys=True
    )
    return probe_step_options(model, optimizer, vae_loss, batch, workload=workload)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


_DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def _device_name(device: Any) -> torch.device | None:
    """``torch.device(device)`` (None for ``"auto"``) if it names a cpu, cuda or mps device
    (``meta`` and the like cannot train or evaluate); whether it exists is not checked here, so
    a run trained on a GPU can be read, evaluated and resumed elsewhere with another device."""
    if device == "auto":
        return None
    if not isinstance(device, str):
        raise ValueError(f"device: expected {_DEVICES}, got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected {_DEVICES}, got {device!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: expected {_DEVICES}, got {device!r}")
    return dev


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when present, else cpu; otherwise ``torch.device(device)`` for a cpu,
    cuda or mps device that exists."""
    dev = _device_name(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: {device!r} was asked for but no CUDA device is available (choose one with --device)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {device!r} was asked for but there are {torch.cuda.device_count()} CUDA devices"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {device!r} was asked for but MPS is not available")
    return dev
