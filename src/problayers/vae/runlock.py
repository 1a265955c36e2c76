"""One writer per run directory: an ``O_EXCL`` lock file holding the owner's PID and host.

``train`` and ``resume`` hold ``RUN/.lock`` for as long as they run (rank 0 for a data-parallel
run). A second ``train``/``resume`` of the same directory is refused with a message naming the
owner. A lock whose owner is gone (same host, the PID no longer runs or now belongs to another
process, as told by its start time in ``/proc``) is stale: it is taken over, atomically (renamed
away and checked before it is removed, so two processes that both find it stale cannot both
win). A lock from another host cannot be checked: it is reported with the command to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..train.checkpoint import parse_json, pid_alive, process_start
from ..train.errors import ProblayersError, WriteError, os_reason

__all__ = ["LOCK", "RunLock", "RunLockError"]

LOCK = ".lock"
#: An unreadable lock file younger than this may be one being written; older, it is stale.
_PARTIAL_GRACE_S = 30.0
#: A lock file holds one small JSON object; more than this is not one (and is not read further).
_MAX_LOCK_BYTES = 64 * 1024


class RunLockError(ProblayersError, ValueError):
    """The run directory is in use by another ``train``/``resume``."""


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir).expanduser()
        self.path = self.run_dir / LOCK
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                self._held = True
                return
            owner = self._read()
            if not self._stale(owner) or not self._take_over(owner):
                break
        owner = self._read() or {}
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"
        raise RunLockError(
            f"run directory {self.run_dir} is in use by {who} (lock file {self.path}); wait for it to "
            f"finish, or if that process is gone, remove {self.path}"
        )

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:  # the environment (a read-only filesystem...): status 1
            raise WriteError(
                f"run directory {self.run_dir}: cannot write there ({os_reason(err)})", err.errno
            ) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.owner) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # e.g. disk full: leave no half-written lock
            self.path.unlink(missing_ok=True)
            raise WriteError(f"{self.path}: cannot write: {os_reason(err)}", err.errno) from None
        except BaseException:  # e.g. SIGTERM
            self.path.unlink(missing_ok=True)
            raise
        from ..train.checkpoint import fsync_dir

        fsync_dir(self.run_dir)
        return True

    def _read(self, path: Path | None = None) -> dict[str, Any] | None:
        """The owner a lock file names; ``None`` where it is unreadable, or not a regular file
        (a FIFO would block the read, ``/dev/zero`` fill the memory), or longer than a lock is."""
        path = path or self.path
        try:
            if not path.is_file():
                return None
            with open(path, "rb") as f:
                owner = parse_json(f.read(_MAX_LOCK_BYTES).decode())  # a longer one: cut, not JSON
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:  # unreadable: being written right now, or left half-written long ago
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > _PARTIAL_GRACE_S
        if owner.get("host") != self.owner["host"] or not isinstance(owner.get("pid"), int):
            return False  # another machine's process: cannot tell
        pid = owner["pid"]
        if pid != os.getpid() and not pid_alive(pid):
            return True
        start = owner.get("start")
        return start is not None and process_start(pid) not in (None, start)  # the PID was reused

    def _take_over(self, stale: dict[str, Any] | None) -> bool:
        """Remove the stale lock if it still is the one judged stale; False if it changed."""
        aside = self.path.with_name(f"{LOCK}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it: try to create ours again
        if self._read(aside) == stale:
            aside.unlink(missing_ok=True)
            return True
        with contextlib.suppress(FileExistsError):  # a fresh lock, not the stale one: put it back
            os.link(aside, self.path)
        aside.unlink(missing_ok=True)
        return False

    def release(self) -> None:
        """Remove the lock if this process holds it (and the file still is ours)."""
        if not self._held:
            return
        self._held = False
        if self._read() == self.owner:
            self.path.unlink(missing_ok=True)
