"""A run directory's files, checked: where a run may be written, its ``config.json`` read
strictly, its checkpoint's metadata validated, and outputs kept off the run's own files."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..train.checkpoint import CheckpointError, check_finite, check_state_dict, is_temp, parse_json
from ..train.errors import RunDirError, WriteError, os_reason
from .runconfig import MAX_EPOCHS, RESUME_OVERRIDES, STEP_OPTIONS, RunConfig
from .runlock import LOCK

__all__ = [
    "CONFIG",
    "OWN_FILES",
    "TENSORBOARD",
    "check_consistent",
    "check_has_checkpoint",
    "check_new_run",
    "check_output",
    "check_run_state",
    "check_weights_fit",
    "check_writable",
    "made_dir",
    "prepare_run_dir",
    "read_config",
    "tensorboard_dir",
]

CONFIG = "config.json"
#: The files that make a run: nothing but ``train``/``resume`` may write them.
OWN_FILES = (CONFIG, "checkpoint.pt", "metrics.jsonl", ".lock")
#: The directory of a run's TensorBoard event files (``RunConfig.logger == "tensorboard"``).
TENSORBOARD = "tensorboard"


def prepare_run_dir(run_dir: str | os.PathLike, option: str = "--out") -> Path:
    """``run_dir`` as a directory that exists (created if needed), or a one-line
    :class:`~problayers.train.errors.RunDirError` naming ``option``."""
    if os.fspath(run_dir) == "":
        raise RunDirError(f"{option}: expected a directory, got an empty path")
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path}: expected a directory, got an existing file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"{option} {path}: expected a directory, but a parent is a file") from None
    except OSError as err:  # the environment (permissions, a read-only filesystem): status 1
        raise WriteError(
            f"{option} {path}: cannot create the directory: {os_reason(err)}", err.errno
        ) from None
    return path


@contextlib.contextmanager
def made_dir(path: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """:func:`prepare_run_dir` for the block. The directories it made (``path`` and the parents
    made for it) that are empty when the block ends (the command failed before writing) are
    removed again, the deepest first."""
    wanted = Path(path).expanduser()
    made = [] if os.fspath(path) == "" else [p for p in (wanted, *wanted.parents) if not p.exists()]
    prepared = prepare_run_dir(path, option)
    try:
        yield prepared
    finally:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty


def check_has_checkpoint(run_dir: Path, checkpoint: str, so: str) -> Path:
    """``run_dir / checkpoint``, or a one-line error for a run stopped before its first one
    (``so``: what that means for the command) saying how to start it again."""
    path = run_dir / checkpoint
    if not path.exists() and not path.is_symlink():
        raise RunDirError(
            f"run_dir: {run_dir} stopped before its first epoch completed (no {checkpoint}), so {so}; "
            f"train it again with problayers train --out {run_dir} and the options in its config.json"
        )
    return path


def tensorboard_dir(run_dir: Path) -> Path:
    """``run_dir/tensorboard``, where the run's event files go; refused if it is a link (a run
    directory from elsewhere could send them outside it: every other file of a run is replaced
    atomically, never written through a link) or a file."""
    board = run_dir / TENSORBOARD
    if board.is_symlink() or (board.exists() and not board.is_dir()):
        what = f"a link to {os.readlink(board)}" if board.is_symlink() else "not a directory"
        raise RunDirError(f"{board}: is {what}; a run writes its event files inside its own directory")
    return board


def check_new_run(run_dir: Path, checkpoint: str) -> None:
    """A fresh ``train`` may write into ``run_dir`` (made already): it holds no ``checkpoint``
    (resume that run instead) and nothing but a run's own files from before its first checkpoint
    (such a run is started again): never a folder of other files, which the run would overwrite
    (a ``config.json``, pictures) or mix with."""
    if (run_dir / checkpoint).exists():
        raise RunDirError(f"run_dir: {run_dir} already holds a run; resume it with --resume {run_dir}")

    before = (CONFIG, LOCK, TENSORBOARD)  # what a run writes before its first checkpoint
    others = sorted(
        p.name for p in run_dir.iterdir() if p.name not in before and not is_temp(p.name, OWN_FILES)
    )
    board = run_dir / TENSORBOARD
    if board.is_dir():  # its event files only
        others += [
            f"{TENSORBOARD}/{p.name}"
            for p in board.iterdir()
            if not p.name.startswith("events.out.tfevents.")
        ]
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunDirError(
            f"run_dir: {run_dir} holds files that are not a run's ({listed}); expected a new or empty "
            "directory, or a run stopped before its first checkpoint; choose another directory"
        )
    if (run_dir / CONFIG).exists():
        read_config(run_dir)  # a run's, or a one-line error naming the file


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """The run's ``config.json``, strictly: a one-line ``ValueError`` naming the file if it is
    missing, not JSON, or not a valid :class:`RunConfig`."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    try:
        if not run_dir.is_dir():
            raise RunDirError(f"run_dir: {run_dir} is not a directory (not a problayers run directory)")
        if not path.is_file():
            raise RunDirError(f"run_dir: {run_dir} has no {CONFIG} (not a problayers run directory)")
        text = path.read_bytes().decode()
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({os_reason(err)})") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not a problayers config (not UTF-8 text)") from None
    try:
        obj = parse_json(text)
    except ValueError as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None
    return RunConfig.from_json(obj, source=str(path))


def _json_field(state: dict[str, Any], key: str, kind: type, source: str) -> Any:
    raw = state.get(key)
    try:
        value = parse_json(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{source}: not a problayers checkpoint ({key!r}: expected a JSON {kind.__name__})"
        )
    return value


def check_run_state(state: dict[str, Any], source: str, *, training: bool = False) -> dict[str, Any]:
    """Validate a run checkpoint's structure and metadata (``training``: also what a resume
    needs); returns its saved config (JSON). One-line :class:`CheckpointError` otherwise."""
    required = ["epoch", "model", "history", "meta"] + (["optimizer", "rng_cpu"] if training else [])
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: not a problayers checkpoint (missing {', '.join(map(repr, missing))})"
        )
    meta = _json_field(state, "meta", dict, source)
    saved = meta.get("config")
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"{source}: not a problayers checkpoint (its meta has no run config)")
    epochs = saved.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= MAX_EPOCHS:
        raise CheckpointError(
            f"{source}: its config's epochs: expected an int in 1..{MAX_EPOCHS}, got {epochs!r}"
        )
    epoch = state["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= epochs:
        raise CheckpointError(
            f"{source}: epoch: expected an int in 0..{epochs} (its run's epochs), got {epoch!r}"
        )
    history = _json_field(state, "history", list, source)
    if len(history) != epoch:
        raise CheckpointError(f"{source}: holds {len(history)} epochs of history but says epoch {epoch}")
    for key in ("model", "averaged"):
        if key in state:
            if not isinstance(state[key], dict):
                raise CheckpointError(
                    f"{source}: {key}: expected a dict of tensors, got a {type(state[key]).__name__}"
                )
            check_finite(state[key], "weight" if key == "model" else "averaged weight", source)
    return saved


def check_weights_fit(model: Any, weights: dict[str, Any], what: str, source: str) -> dict[str, Any]:
    """``weights`` without a data-parallel ``module.`` prefix, once they fit the model the
    :class:`~problayers.vae.models.ModelConfig` ``model`` describes (names, shapes, kinds),
    checked on its meta-device skeleton: before the model is built, which a crafted config could
    make huge."""
    import torch

    from .models import model_skeleton

    weights = dict(weights)
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(weights, "module.")
    check_state_dict(model_skeleton(model), weights, what, source)
    return weights


def check_consistent(
    cfg: RunConfig, saved: dict[str, Any], epoch: int, source: str, *, averaged: bool | None = None
) -> None:
    """The checkpoint's model config is the run's, and it has not trained past its config;
    where ``averaged`` is given (whether the checkpoint holds an EMA), the run's ``ema_decay``
    agrees with it (else the weights loaded would be labelled as the others)."""
    if averaged is not None and averaged != (cfg.ema_decay is not None):
        raise CheckpointError(
            f"{source}: written {'with' if averaged else 'without'} weight averaging, but the "
            f"run's {CONFIG} has ema_decay {cfg.ema_decay}"
        )
    from .models import ModelConfig

    try:
        same = ModelConfig.from_dict(saved["model"]) == cfg.model  # fields added since: as saved runs meant
    except (TypeError, ValueError):
        same = False
    if not same:
        ours = dataclasses.asdict(cfg.model)
        try:  # as read (fields added since filled in), so the fields named are those that differ
            theirs = dataclasses.asdict(ModelConfig.from_dict(saved["model"]))
        except (TypeError, ValueError):
            theirs = saved["model"] if isinstance(saved["model"], dict) else {}
        diff = [
            f"{k} {theirs.get(k, '(none)')!r} vs {ours.get(k, '(none)')!r}"
            for k in sorted(set(ours) | set(theirs), key=lambda k: (k != "name", k))  # the model first
            if theirs.get(k, ours.get(k)) != ours.get(k)
        ] or [repr(saved["model"])]
        raise CheckpointError(
            f"{source}: trained with another model config than this run's {CONFIG} (checkpoint vs "
            f"run: {', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''})"
        )
    if epoch > cfg.epochs:
        raise CheckpointError(
            f"{source}: has trained {epoch} epochs, but the run's {CONFIG} says {cfg.epochs}"
        )
    # The rest of what defines the run: a resume may change the overrides and the step (and
    # is killed, at worst, between rewriting config.json and its next checkpoint).
    kept = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in (*RESUME_OVERRIDES, *STEP_OPTIONS, "step_choice", "resumed", "model"):
        kept.pop(name)
    differ = [
        f"{k} {saved.get(k, d)!r} vs {getattr(cfg, k)!r}"
        for k, d in kept.items()
        if saved.get(k, d) != getattr(cfg, k)
    ]
    if differ:
        raise CheckpointError(
            f"{source}: written by another run than this {CONFIG} describes (checkpoint vs run: "
            f"{', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''})"
        )


def _same_file(out: Path, paths: list[Path]) -> bool:
    """Whether ``out`` exists and is one of ``paths`` under another name: another case of it on a
    case-insensitive filesystem (macOS' default, FAT), a hard link."""
    try:
        return out.exists() and any(path.exists() and os.path.samefile(out, path) for path in paths)
    except OSError:
        return False


def check_output(out: str | os.PathLike, run_dir: str | os.PathLike, option: str) -> Path:
    """``out`` unless it is one of the run's own files (``config.json``, the checkpoint...), or
    an existing file of such a name (another run's)."""
    if os.fspath(out) == "":
        raise RunDirError(f"{option}: expected a path, got an empty path")
    out = Path(out).expanduser()
    own = [Path(run_dir) / name for name in OWN_FILES]
    if out.resolve() in {path.resolve() for path in own} or _same_file(out, own):
        raise RunDirError(f"{option} {out}: is one of the run's own files; choose another path")
    if out.name.casefold() in {name.casefold() for name in OWN_FILES} and out.exists():
        raise RunDirError(f"{option} {out}: would replace a run's own file ({out.name}); choose another path")
    return out


def check_writable(out: Path, option: str) -> Path:
    """Fail now, not after the work, where the file ``out`` could not be written: a directory or
    a non-regular file (``/dev/null``) in its place, or a parent that is a file
    (:class:`RunDirError`), or a directory where no file can be created: permissions, a
    read-only filesystem (:class:`WriteError`). Leaves nothing behind."""
    if out.is_dir() or (out.exists() and not out.is_file()):
        raise RunDirError(f"{option} {out}: expected a file path, got an existing directory or device")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"{option} {out}: expected a file path, but {parent} is a file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise WriteError(f"{option} {out}: cannot write in {parent}: {os_reason(err)}", err.errno) from None
    os.close(fd)
    os.unlink(tmp)
    return out
