"""Download the MNIST ``.gz`` files from public mirrors (stdlib ``urllib`` only).

Each file is streamed into a temporary file in the destination directory, checked against its official
MD5 and only then moved into place with ``os.replace`` (and the directory fsynced); a failed, corrupt
or interrupted (SIGINT, SIGTERM) transfer leaves nothing behind, and the next mirror is tried. Mirrors
and checksums are parameters so tests can use a local server.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from ..train.checkpoint import fsync_dir
from .idx import _HINT, MNIST_FILES, MNISTDownloadError

__all__ = ["MNIST_MD5", "MNIST_MIRRORS", "download_file", "download_mnist"]

log = logging.getLogger(__name__)

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# Official MD5 of the .gz files as served by the mirrors (keys: file names without ".gz").
MNIST_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
_CHUNK = 1 << 20


class _BadTransfer(Exception):
    """A response that ended early or whose MD5 is wrong."""


def download_file(url: str, dest: str | os.PathLike, md5: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically if the MD5 of the bytes received equals ``md5``.

    Raises the ``urllib``/``http.client``/``OSError`` error of a failed transfer, or an exception saying
    "truncated transfer" or "MD5 mismatch"; in every case no file (temporary or final) is left behind.
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            declared, received = response.headers.get("Content-Length"), 0
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
            if declared is not None and declared.isdigit() and int(declared) != received:
                raise _BadTransfer(f"truncated transfer: got {received} of {declared} bytes")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5.lower():
            raise _BadTransfer(f"MD5 mismatch: got {digest.hexdigest()}, expected {md5.lower()}")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return " ".join(str(exc).split()) or type(exc).__name__


#: A ``.part`` file not written to for this long is left by a killed download (an active one
#: writes every chunk): removed before downloading again.
STALE_PART_S = 600.0


def _remove_stale_parts(directory: Path) -> None:
    now = time.time()
    for part in directory.glob(".*.part"):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()


def download_mnist(
    directory: str | os.PathLike,
    names: Iterable[str] = MNIST_FILES,
    *,
    mirrors: Iterable[str] | None = None,
    md5s: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``name + ".gz"`` for each of ``names`` into ``directory`` (created if needed), trying
    ``mirrors`` (base URLs; default :data:`MNIST_MIRRORS`) in order and checking each file against
    ``md5s[name]`` (default :data:`MNIST_MD5`). Returns ``directory`` as a Path.

    Raises :class:`~problayers.vae.data.MNISTDownloadError` (one line: every mirror's failure and how to
    use a local copy instead) if no mirror delivers a file with the right checksum.
    """
    directory = Path(directory)
    mirrors = list(MNIST_MIRRORS if mirrors is None else mirrors)
    md5s = MNIST_MD5 if md5s is None else md5s
    names = list(names)
    unknown = [name for name in names if name not in md5s]
    if unknown:
        raise ValueError(f"md5s has no checksum for {', '.join(unknown)}; refusing unverified downloads")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MNISTDownloadError(
            f"cannot create the MNIST cache {directory} ({_describe(exc)}); {_HINT}"
        ) from exc
    _remove_stale_parts(directory)
    for name in names:
        failures = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            log.info("downloading %s", url)
            try:
                download_file(url, directory / f"{name}.gz", md5s[name], timeout=timeout)
                break
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response; an unclosed one warns (ResourceWarning)
                failures.append(f"{url}: {_describe(exc)}")
            except (OSError, http.client.HTTPException, ValueError, _BadTransfer) as exc:
                failures.append(f"{url}: {_describe(exc)}")
        else:
            tried = "; ".join(failures) if failures else "no mirrors given"
            raise MNISTDownloadError(
                f"could not download {name}.gz into {directory} ({tried}); to use a "
                f"local copy instead, {_HINT}"
            )
    return directory
