"""Atomic files and checkpoints that load without code execution.

Every file is written to a temporary file in the same directory (``.NAME.pPID.XXXXXXXX.tmp``),
flushed and fsynced, renamed over the target (``os.replace``), and the directory is fsynced, so
a crash leaves the old file or the new one, never a torn one, and the rename survives a power
loss. A failed write (disk full, permission denied...) raises :class:`~problayers.train.errors.WriteError`
naming the file and leaves neither a changed target nor a temporary file; temporaries a SIGKILL
left behind are removed by :func:`remove_stale_temps` (``train``/``resume`` call it under the
run's lock). Checkpoints are ``torch.save`` files read back with ``torch.load(weights_only=True)``;
a file holding anything but tensors and plain data is refused, never unpickled with code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, cast

import torch

from .errors import WriteError, one_line, os_reason

__all__ = [
    "CheckpointError",
    "atomic_write",
    "check_finite",
    "check_state_dict",
    "fsync_dir",
    "load_checkpoint",
    "parse_json",
    "remove_stale_temps",
    "save_checkpoint",
    "write_json",
]

#: The temporary files of :func:`atomic_write`: ``.NAME.pPID.XXXXXXXX.tmp`` (the writer's process
#: id, 8 random characters).
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.p(?P<pid>[0-9]+)\.[A-Za-z0-9_]{8}\.tmp$")
#: Those of problayers before 2026-12-06, without the writer: ``.NAME.XXXXXXXX.tmp``.
LEGACY_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or from another configuration."""


def _new_temp(path: Path) -> tuple[int, str]:
    """A new ``TEMP_PATTERN`` file beside ``path``, open for writing, with the usual permissions
    (0666 less the umask, applied by the OS: reading the umask sets it, for every thread)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(1000):
        tmp = str(path.parent / f".{path.name}.p{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with contextlib.suppress(FileExistsError):
            return os.open(tmp, flags, 0o666), tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory (its entries: a rename in it survives a power loss). Filesystems that
    cannot fsync a directory (EINVAL, ENOTSUP) are skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows; nothing to sync through
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"{path}: cannot write: {path.parent} is not a directory", errno.ENOTDIR) from None
    except OSError as err:
        where = err.filename or path.parent
        raise WriteError(
            f"{path}: cannot create the directory {where}: {os_reason(err)}", err.errno
        ) from None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temp file that then replaces it.

    An OS error (disk full, no permission, read-only filesystem, ``path`` a directory...) raises
    :class:`~problayers.train.errors.WriteError` naming ``path``; the old file stays, no temp is left."""
    path = Path(path)
    _make_parent(path)
    if path.is_dir():
        raise WriteError(f"{path}: cannot write: it is a directory", errno.EISDIR)
    if path.exists() and not path.is_file():  # e.g. /dev/null: never replace a device or pipe
        raise WriteError(f"{path}: cannot write: it exists and is not a regular file", errno.EINVAL)
    try:
        fd, tmp = _new_temp(path)
    except OSError as err:
        raise WriteError(f"{path}: cannot write in {path.parent}: {os_reason(err)}", err.errno) from None
    tracked: _Tracked | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            tracked = _Tracked(f)
            write(cast(IO[bytes], tracked))  # a file object by delegation (__getattr__)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save's C++ writer turns a failed write (e.g. ENOSPC) into a RuntimeError: the
        # OSError the file raised is the cause to report
        cause = exc if isinstance(exc, OSError) else (tracked.error if tracked is not None else None)
        if cause is not None and not isinstance(exc, (WriteError, KeyboardInterrupt)):
            raise WriteError(f"{path}: cannot write: {os_reason(cause)}", cause.errno) from None
        raise
    return path


class _Tracked:
    """A file object that remembers the OSError its ``write`` raised (for writers that wrap it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f: IO[bytes] = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def remove_stale_temps(directory: str | os.PathLike, legacy_names: Iterable[str] = ()) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` leaves when killed (SIGKILL, power loss)
    between creating and renaming them: those whose writer (the process id in the name) no
    longer runs on this machine, or started after the file was last written (its id reused, as
    by a restarted container), never one that another process (an ``evaluate`` beside a resumed
    run) is still writing; and the writer-less temporaries of earlier versions for the files
    ``legacy_names``. Returns the removed paths."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not is_temp(entry.name, legacy_names):
            continue
        match = TEMP_PATTERN.match(entry.name)
        stale = match is None  # an earlier version's, of one of legacy_names
        if match:
            pid = int(match["pid"])
            with contextlib.suppress(OSError):  # gone meanwhile: its writer renamed it
                stale = not pid_alive(pid) or _started_after(pid, entry.stat().st_mtime)
        if stale and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def is_temp(name: str, legacy_names: Iterable[str] = ()) -> bool:
    """Whether ``name`` is a temporary of :func:`atomic_write`, or an earlier version's of one
    of the files ``legacy_names``."""
    legacy = LEGACY_TEMP_PATTERN.match(name)
    return bool(TEMP_PATTERN.match(name) or (legacy and legacy["name"] in set(legacy_names)))


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after ``pid (comm)`` (field 3 on), or None if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, field 22 of proc(5)), or None if unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after the time ``when`` (False where ``/proc`` cannot say)."""
    try:
        ticks = int(process_start(pid) or "")
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return boot + ticks / os.sysconf("SC_CLK_TCK") > when + 1.0  # btime has whole seconds


def _windows_pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs, asked of Windows itself: there ``os.kill(pid, 0)`` sends a
    Ctrl+C (signal 0 is ``CTRL_C_EVENT``) and fails for a process without a console. Where the
    answer is unknown, the process is taken to run (its lock is not taken over)."""
    import ctypes

    if not 0 < pid < 2**32:  # a DWORD: a crafted lock's or temporary's pid runs nothing
        return False
    if sys.platform == "win32":  # (Windows' ctypes; the type checker reads this on Windows only)
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, killed but not yet reaped by its
    parent, does not)."""
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: only whether it exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat(pid)
    return not fields or fields[0] not in ("Z", "X")


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, where JSON nested too deeply for Python's parser (``[[[[...``, a
    ``RecursionError``) is a ``ValueError`` like any other invalid JSON: a crafted file's
    reader then says "not valid JSON" in one line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` ``state`` (tensors, dicts, lists, numbers, strings only)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs); a one-line
    :class:`CheckpointError` if it is missing, unreadable, not a dict, or holds Python objects
    (a crafted or foreign pickle is refused, never loaded with ``weights_only=False``)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path}: expected a file, got a directory")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path}: no such file")
        return _as_dict(torch.load(path, map_location=map_location, weights_only=True), path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint {path}: {_unpickling_fault(str(err))}") from None
    except PermissionError as err:
        raise CheckpointError(f"checkpoint {path}: cannot be read: {os_reason(err)}") from None
    except OSError as err:  # e.g. EINVAL from a seek past the end of a truncated file
        raise CheckpointError(
            f"checkpoint {path}: not a problayers checkpoint (cannot be read: corrupt or truncated; "
            f"{os_reason(err)})"
        ) from None
    except Exception as err:  # torch raises several types for a corrupt or truncated file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: not a problayers checkpoint (cannot be read: corrupt or truncated; "
            f"{type(err).__name__}: {one_line(first)[:200]})"
        ) from None


def _unpickling_fault(text: str) -> str:
    """What torch's weights-only unpickler refused, in our words: torch's own text advises
    ``weights_only=False``, which must never be done for a file of unknown origin."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found or "Unsupported global" in text or "Unsupported class" in text:
        what = f" such as {found.group(1)}" if found else ""
        return (
            f"not a problayers checkpoint (it holds Python objects{what}, not only tensors and plain "
            "data); refused to load code from it"
        )
    reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
    detail = one_line(reason[0])[:120] if reason and "WeightsUnpickler" in text else one_line(text)[:120]
    return f"not a problayers checkpoint (cannot be read: corrupt or truncated; {detail})"


def _as_dict(state: Any, path: Path) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path}: not a problayers checkpoint (expected a dict of named states, "
            f"got a {type(state).__name__})"
        )
    return state


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _kind(t: torch.Tensor) -> str:
    """What ``load_state_dict``'s cast would lose: complex, floating or integer (bool too)."""
    return "complex" if t.is_complex() else "floating" if t.is_floating_point() else "integer"


def check_state_dict(module: torch.nn.Module, state: Any, what: str, source: str) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` is a state dict that
    ``module.load_state_dict`` accepts exactly: the same keys, dense tensors of the same shapes
    and kinds (``load_state_dict`` would cast complex weights to real, NaN parts and all)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: {what} must be a dict of tensors, got a {type(state).__name__}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = [
            f"missing {_names(missing)}" if missing else "",
            f"unexpected {_names(extra)}" if extra else "",
        ]
        raise CheckpointError(f"{source}: {what} does not fit the model: {'; '.join(p for p in parts if p)}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(want, torch.Tensor):
            continue  # e.g. an _extra_state object
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(f"{source}: {what} {key!r}: expected a tensor, got a {type(got).__name__}")
        if got.shape != want.shape:
            raise CheckpointError(
                f"{source}: {what} {key!r}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
            )
        if got.layout != want.layout or _kind(got) != _kind(want):
            raise CheckpointError(
                f"{source}: {what} {key!r}: expected a {_kind(want)} tensor ({want.dtype}, "
                f"{want.layout}), got {got.dtype} ({got.layout})"
            )


def check_finite(state: dict[str, Any], what: str, source: str) -> None:
    """Raise a one-line :class:`CheckpointError` if a floating or complex tensor of ``state``
    holds NaN/inf, or is a strided tensor whose storage is smaller than its elements (a 100 KB
    file can hold an expanded view of 10**10 elements, which the check would materialize)."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.layout == torch.sparse_coo:  # a model's sparse buffer: its indices, then values
            try:
                with torch.sparse.check_sparse_tensor_invariants():
                    torch.sparse_coo_tensor(value._indices(), value._values(), value.shape)
            except RuntimeError as err:
                raise CheckpointError(
                    f"{source}: {what} {key!r}: not a valid sparse tensor ({one_line(err)})"
                ) from None
            value = value._values()
        elif value.layout != torch.strided:
            raise CheckpointError(
                f"{source}: {what} {key!r}: expected a dense or sparse COO tensor, got {value.layout}"
            )
        stored = value.untyped_storage().nbytes()
        if value.numel() * value.element_size() > stored:
            raise CheckpointError(
                f"{source}: {what} {key!r}: expected a dense tensor, got {tuple(value.shape)} "
                f"over {stored} bytes of storage"
            )
        if (value.is_floating_point() or value.is_complex()) and value.numel():
            if not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise CheckpointError(
                    f"{source}: {what} {key!r} holds {bad} non-finite value(s) (NaN or inf): the "
                    "run diverged or the file was damaged; refusing to use it"
                )
        elif isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{source}: {what} {key!r} is {value}; expected a finite number")
