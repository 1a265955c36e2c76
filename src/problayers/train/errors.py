"""The one error path of the command line: exceptions that carry a one-line message, and how the
CLI turns any exception into an exit status and one line on stderr.

* ``2``: the inputs are wrong (an option, a run directory, a checkpoint, a ``config.json``, the
  data): ``problayers: error: <what>: expected <this>, got <that>``.
* ``1``: the environment failed (disk full, permission denied, read-only filesystem, a failed
  download), training diverged (a non-finite loss), or an unforeseen internal error.
* ``130`` / ``143``: interrupted by SIGINT / SIGTERM (cleanly: no temporary files are left).

No traceback is printed unless ``--debug`` is given or ``PROBLAYERS_DEBUG=1`` is set.
"""

from __future__ import annotations

import errno as _errno
import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "ProblayersError",
    "RunDirError",
    "Terminated",
    "WriteError",
    "interrupts_deferred",
    "one_line",
    "os_reason",
    "sigterm_raises",
]


class ProblayersError(Exception):
    """A fault of the user or of the environment, with a one-line message naming the file or
    option, what was expected and what was got."""


class RunDirError(ProblayersError, ValueError):
    """A run directory (``--out``, ``--resume``, ``evaluate RUN``) that cannot be used."""


class WriteError(ProblayersError, OSError):
    """A file could not be written (disk full, permission denied, read-only filesystem...).
    ``errno`` is the underlying error's; the target file is unchanged and no temporary is left."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0])


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (handled like Ctrl-C)."""


def one_line(text: object) -> str:
    """``text`` with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def os_reason(err: OSError) -> str:
    """``No space left on device (ENOSPC)``: an OS error's reason, without the file name."""
    code = getattr(err, "errno", None)
    name = _errno.errorcode.get(code, "") if isinstance(code, int) else ""
    text = err.strerror or one_line(err) or type(err).__name__
    return f"{text} ({name})" if name else text


_deferring = [0]  # depth of interrupts_deferred blocks
_pending = [False]  # a SIGTERM arrived inside one


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A critical section (e.g. writing a checkpoint and its ``metrics.jsonl``): a SIGTERM (under
    :func:`sigterm_raises`) or a Ctrl-C (SIGINT, where Python's own handler is installed) that
    arrives inside is held back and raised when the block ends, as :class:`Terminated` or
    ``KeyboardInterrupt``, so the block's files are all written or none is. In the main thread
    only; SIGKILL cannot be deferred (a resumed run repairs what it can, see ``Trainer.resume``)."""
    import threading

    interrupted: list[int] = []
    swap = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    previous = (
        signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum)) if swap else None
    )
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
        if swap:
            signal.signal(signal.SIGINT, previous)
    if _deferring[0] == 0 and _pending[0]:
        _pending[0] = False
        raise Terminated()
    if interrupted:
        raise KeyboardInterrupt


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` in the main thread (like SIGINT's
    KeyboardInterrupt), so ``finally`` blocks and the atomic writers clean up; inside a
    :func:`interrupts_deferred` block it is raised when that block ends. A second SIGTERM while the
    first is being handled is ignored. Outside the main thread: no change."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _deferring[0]:
            _pending[0] = True
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _pending[0] = False
