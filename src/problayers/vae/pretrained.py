"""Shareable weights: a trained run as ``model.safetensors`` + ``config.json`` (the Hugging Face
Hub layout), and the model back from such a directory, without pickle.

:func:`save_pretrained` writes a model's weights and its model config, plus ``format`` and
``problayers_version``; ``problayers export RUN_DIR OUT_DIR`` gives it the model
:func:`~problayers.vae.experiment.load_run` gives (the averaged weights of a run trained with
``ema_decay``, unless ``--online-weights``). Each file is written atomically, the config
first with the weights' digest, so a config whose weights did not land is refused on load.
:func:`load_pretrained` builds the model from ``config.json`` (``ModelConfig.from_dict``) and
loads ``model.safetensors`` with safetensors' own reader: a file read never runs code.
Uploading is the user's step, e.g.
``huggingface_hub.upload_folder(repo_id=..., folder_path=OUT_DIR)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..train.checkpoint import (
    CheckpointError,
    atomic_write,
    check_finite,
    check_state_dict,
    parse_json,
    remove_stale_temps,
    write_json,
)
from ..train.errors import RunDirError, interrupts_deferred, one_line, os_reason
from .models import VAE, ModelConfig, build_model, model_skeleton

__all__ = [
    "CONFIG",
    "FORMAT",
    "WEIGHTS",
    "PretrainedError",
    "check_out_dir",
    "load_pretrained",
    "save_pretrained",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
#: ``config.json``'s ``format``: what the directory holds (a reader checks it first).
FORMAT = "problayers-vae-v1"
_META = ("format", "problayers_version", "weights_sha256")


class PretrainedError(CheckpointError):
    """An exported directory that is missing, damaged, or whose weights do not fit its config."""


def _needs_safetensors(what: str) -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ValueError(
            f"{what}: needs the safetensors package, which is not installed "
            "(pip install 'safetensors>=0.4', or the extra: pip install 'problayers[vae]')"
        ) from None
    return safetensors.torch


def check_out_dir(
    out_dir: str | os.PathLike, *, force: bool = False, run_dir: str | os.PathLike | None = None
) -> Path:
    """``out_dir`` as a path to export into: not ``run_dir`` itself, not a file, not a training
    run's directory (even with ``force``: its ``config.json`` would be replaced), and (without
    ``force``) not a non-empty directory; a one-line :class:`~problayers.train.errors.RunDirError`."""
    if os.fspath(out_dir) == "":
        raise RunDirError("OUT_DIR: expected a directory, got an empty path")
    out = Path(out_dir).expanduser()
    if run_dir is not None and out.resolve() == Path(run_dir).expanduser().resolve():
        raise RunDirError(f"OUT_DIR {out}: is the run directory itself; choose another directory")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"OUT_DIR {out}: expected a directory, got an existing file")
    own = ("checkpoint.pt", "metrics.jsonl", ".lock")  # a run's, finished or in its first epoch
    found = [name for name in own if out.is_dir() and (out / name).exists()]
    if found:  # its config.json would be replaced by the export's
        raise RunDirError(
            f"OUT_DIR {out}: is a training run's directory (it has {', '.join(found)}); choose another"
        )
    if out.is_dir() and not force and any(out.iterdir()):
        raise RunDirError(f"OUT_DIR {out}: is not empty; choose a new directory or pass --force to replace")
    return out


def save_pretrained(
    model: torch.nn.Module,
    config: ModelConfig,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    run_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write ``out_dir/model.safetensors`` (``model``'s state dict) and ``out_dir/config.json``
    (``config`` plus ``format``, ``problayers_version`` and the weights' ``weights_sha256``);
    returns their paths. ``out_dir`` is checked first (:func:`check_out_dir`).

    The config is written first: an export killed while it replaced another (``--force``) leaves
    a config whose digest the old weights do not match, which :func:`load_pretrained` refuses."""
    from .. import __version__
    from .rundir import made_dir

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected the VAE (an nn.Module), got {type(model).__name__}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
    st = _needs_safetensors("export")
    out = check_out_dir(out_dir, force=force, run_dir=run_dir)
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:  # the model inside torch.compile's and DDP's wrappers, in any order
        inner = getattr(model, "_orig_mod", None) or (model.module if isinstance(model, wrappers) else None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    state = model.state_dict()
    try:  # an export that load_pretrained would refuse is refused now
        check_state_dict(build_model(config), state, "state dict", f"export of a {config.name!r} model")
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"export: the model's {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().cpu().contiguous()
    floating = sorted({str(t.dtype) for t in tensors.values() if t.is_floating_point()})
    if len(floating) > 1:  # load_pretrained builds the model in the one dtype it finds
        raise ValueError(
            f"export: the model's floating tensors have several dtypes ({', '.join(floating)}); "
            "cast it to one first (model.float(), model.double())"
        )
    data = st.save(tensors, metadata={"format": "pt"})  # "pt": torch tensors, as the Hub expects
    meta = {"format": FORMAT, "problayers_version": __version__, "weights_sha256": _digest(data)}
    with made_dir(out, "OUT_DIR") as out:  # a directory made here and left empty goes again
        remove_stale_temps(out, legacy_names=(CONFIG, WEIGHTS))  # of an export killed (SIGKILL) before
        config_path = out / CONFIG
        old = config_path.read_bytes() if config_path.is_file() else None  # a --force export's
        try:
            with interrupts_deferred():  # a Ctrl-C or SIGTERM now: both files, then it stops
                write_json(config_path, {**dataclasses.asdict(config), **meta})
                return [atomic_write(out / WEIGHTS, lambda f: f.write(data)), config_path]
        except BaseException:  # e.g. a full disk: leave what was there (an old export, or nothing),
            with contextlib.suppress(OSError):  # unless the new weights landed (a later fsync failed)
                weights = out / WEIGHTS
                if not (weights.is_file() and _digest(weights.read_bytes()) == meta["weights_sha256"]):
                    if old is not None:
                        atomic_write(config_path, lambda f: f.write(old))
                    else:
                        config_path.unlink(missing_ok=True)
            raise


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_config(path: Path) -> tuple[ModelConfig, str | None]:
    """The model config of an export's ``config.json``, and its weights' digest (None in exports
    written before it was recorded)."""
    try:
        obj = parse_json(path.read_bytes().decode())
    except OSError as err:
        raise PretrainedError(f"{path}: cannot be read ({os_reason(err)})") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise PretrainedError(f"{path}: not valid JSON ({one_line(err)})") from None
    from .. import __version__

    written_by = f"written by problayers {obj.get('problayers_version')}" if isinstance(obj, dict) else ""
    newer = f"; {written_by}, this is {__version__}" if written_by and _newer(obj, __version__) else ""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        if isinstance(got, str) and got.startswith("problayers-vae-"):  # another version's format
            raise PretrainedError(f"{path}: format {got!r}, this problayers reads {FORMAT!r}{newer}")
        raise PretrainedError(f"{path}: not a problayers export (format: expected {FORMAT!r}, got {got!r})")
    try:
        return ModelConfig.from_dict({k: v for k, v in obj.items() if k not in _META}), obj.get(
            "weights_sha256"
        )
    except (TypeError, ValueError) as err:
        raise PretrainedError(f"{path}: not a valid model config ({one_line(err)}){newer}") from None


def _newer(obj: dict, mine: str) -> bool:
    """Whether ``obj``'s ``problayers_version`` is a later release than ``mine`` (numbers only)."""

    def numbers(version: object) -> tuple[int, ...]:
        parts = str(version).split("+")[0].split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    return numbers(obj.get("problayers_version")) > numbers(mine)


def load_pretrained(path: str | os.PathLike, device: str = "cpu") -> VAE:
    """The model of an exported directory (``problayers export``), in eval mode on ``device``,
    in the floating dtype its weights were saved in.

    One-line :class:`PretrainedError` for a missing or damaged file, or weights that do not fit
    the config (other keys or shapes)."""
    from .runconfig import resolve_device

    st = _needs_safetensors("load_pretrained")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise PretrainedError(f"{path}: is not a directory (expected {CONFIG} and {WEIGHTS} in it)")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise PretrainedError(f"{path}: has no {name} (not a problayers export)")
    dev = resolve_device(device)
    cfg, digest = _read_config(path / CONFIG)
    source = str(path / WEIGHTS)
    try:
        data = (path / WEIGHTS).read_bytes()
    except OSError as err:
        raise PretrainedError(f"{source}: cannot be read ({os_reason(err)})") from None
    try:
        weights = st.load(data)
    except Exception as err:  # safetensors' SafetensorError: a truncated or foreign file
        raise PretrainedError(f"{source}: not a safetensors file ({one_line(err)})") from None
    if digest is not None and _digest(data) != digest:
        raise PretrainedError(
            f"{source}: not the weights {CONFIG} was exported with (its weights_sha256 differs: an "
            "export interrupted while it replaced another, or a file replaced by hand); export the run again"
        )
    try:  # against the config's shapes before the model is built
        check_state_dict(model_skeleton(cfg), weights, "weights", f"{source} (for the config in {CONFIG})")
        check_finite(weights, "weight", source)
    except CheckpointError as err:
        raise PretrainedError(str(err)) from None
    model = build_model(cfg)
    floating = {t.dtype for t in weights.values() if t.is_floating_point()}
    if len(floating) == 1:  # the dtype it was exported in (float64, bf16), not rounded to float32
        model = model.to(floating.pop())
    model.load_state_dict(weights)
    return model.to(dev).eval()
