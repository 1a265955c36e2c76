"""MNIST's IDX files: names, checksums and counts, streaming parsing with one-line errors, writing.

Parsing streams each file (gunzipped on the fly): the header is validated (magic number,
dims, a count of at most :data:`MAX_IDX_EXAMPLES`, and for the official file names MNIST's known
counts) before the payload is read, and no more than the header's payload plus one byte is kept
in memory, so a gzip bomb costs at most the memory its header declares (a stream longer than its
header is read on, 64 MiB at most and discarded, only for gzip to check it).
:mod:`problayers.vae.data` re-exports everything here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch

__all__ = [
    "ANY_COUNT_ENV",
    "MAX_IDX_EXAMPLES",
    "MNIST_COUNTS",
    "MNIST_ENV_VAR",
    "MNIST_FILES",
    "MNIST_SHA256",
    "SMALL_SET",
    "SPLITS",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "find_mnist_file",
    "missing_mnist_files",
    "read_idx_images",
    "read_idx_labels",
    "read_mnist_split",
    "verify_sha256",
    "write_idx",
    "write_mnist_split",
]

MNIST_ENV_VAR = "PROBLAYERS_MNIST_DIR"
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_FILES = (*SPLITS["train"], *SPLITS["test"])
# SHA-256 of the *uncompressed* IDX files (independent of how they were gzipped).
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
#: MNIST's example counts per split; files of :data:`SMALL_SET` examples or more must match them.
MNIST_COUNTS = {"train": 60000, "test": 10000}
SMALL_SET = 10000
ANY_COUNT_ENV = "PROBLAYERS_MNIST_ANY_COUNT"
#: The most examples an IDX header may declare (MNIST has 70000): a larger claim is refused
#: before anything is decompressed (a gzip bomb cannot make the reader allocate more).
MAX_IDX_EXAMPLES = 100_000
_IMAGE_MAGIC, _LABEL_MAGIC = 0x803, 0x801  # 2051, 2049: zero, zero, dtype byte 0x08 (uint8), ndim
_HINT = (
    f"pass --data-dir DIR or set {MNIST_ENV_VAR}=DIR to a directory holding the four MNIST IDX "
    f"files ({', '.join(MNIST_FILES)}; .gz or raw)"
)


class MNISTError(Exception):
    """Base of every MNIST data error; its message is a single line naming the file and the fault."""


class MNISTFormatError(MNISTError, ValueError):
    """A file exists but is not a valid MNIST IDX file (bad gzip, magic, dims, length, labels...)."""


class MNISTNotFoundError(MNISTError, FileNotFoundError):
    """The MNIST files are not where they were required to be (and no download was allowed)."""


class MNISTDownloadError(MNISTError, OSError):
    """No mirror delivered a file with the expected MD5 (offline, HTTP errors, corrupt transfers)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------------------------- IDX files
def find_mnist_file(directory: str | os.PathLike, name: str) -> Path | None:
    """Return ``directory/name.gz`` if it is a file, else ``directory/name`` if it is, else None.

    A directory that cannot be searched (no permission) raises :class:`MNISTNotFoundError`."""
    for path in (Path(directory) / f"{name}.gz", Path(directory) / name):
        try:
            if path.is_file():
                return path
        except OSError as exc:  # e.g. PermissionError: Path.is_file only hides ENOENT and the like
            raise MNISTNotFoundError(f"{path}: cannot be looked up ({_reason(exc)}); {_HINT}") from None
    return None


def missing_mnist_files(directory: str | os.PathLike, names: Iterable[str] = MNIST_FILES) -> list[str]:
    """Names (e.g. ``"train-images-idx3-ubyte"``) of which neither ``.gz`` nor raw file is present."""
    return [name for name in names if find_mnist_file(directory, name) is None]


def _reason(exc: OSError) -> str:
    from ..train.errors import os_reason

    return os_reason(exc)


@contextmanager
def _reading(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for streaming reads (gunzipped on the fly when its name ends with ``.gz``);
    its OS and gzip faults become one-line MNIST errors naming it."""
    gz = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            yield cast(IO[bytes], f)  # GzipFile or BufferedReader: binary files, typed apart
    except FileNotFoundError:
        raise MNISTNotFoundError(f"{path}: file not found") from None
    except PermissionError as exc:
        raise MNISTNotFoundError(f"{path}: cannot be read ({_reason(exc)}); {_HINT}") from None
    except (OSError, EOFError, zlib.error) as exc:
        what = "corrupt or truncated gzip file" if gz else "cannot read file"
        raise MNISTFormatError(f"{path}: {what} ({_one_line(exc)})") from exc


def _count_check(split: str) -> Callable[[Path, int], None]:
    """The check of an official file name's count (see :data:`MNIST_COUNTS`)."""

    def check(path: Path, count: int) -> None:
        allowed = os.environ.get(ANY_COUNT_ENV, "") not in ("", "0")
        if allowed or count < SMALL_SET or count == MNIST_COUNTS[split]:
            return
        other = next(s for s in MNIST_COUNTS if s != split)
        hint = (
            f" (the count of MNIST's {other} set: are the {split} and {other} files swapped?)"
            if count == MNIST_COUNTS[other]
            else " (not MNIST's file)"
        )
        raise MNISTFormatError(
            f"{path}: the header declares {count} examples; MNIST's {split} set has "
            f"{MNIST_COUNTS[split]}{hint}; a small set (< {SMALL_SET}) or "
            f"{ANY_COUNT_ENV}=1 is accepted too"
        )

    return check


def _drain(f: IO[bytes], limit: int = 64 << 20) -> None:
    """Read on (at most ``limit`` bytes, discarded) to the end of a gzip stream, which checks it."""
    for _ in range(limit >> 20):
        if not f.read(1 << 20):
            return


def _parse_idx(path: Path, magic: int, check_count: Callable[[Path, int], None] | None = None) -> np.ndarray:
    """Stream an unsigned-byte IDX file: its header is validated (magic, dims, count, and
    ``check_count``) before the payload is read, and no more than the header's payload (plus one
    byte, to detect trailing data) is kept: memory is bounded by the header's claim, itself at most
    :data:`MAX_IDX_EXAMPLES` examples (a longer gzip stream is read on, discarded, by
    :func:`_drain`). Returns uint8 of the header's shape."""
    ndim, kind = magic & 0xFF, "image" if magic == _IMAGE_MAGIC else "label"
    header = 4 + 4 * ndim
    with _reading(path) as f:
        head = f.read(header)
        got = int.from_bytes(head[:4], "big")
        if len(head) >= 4 and got != magic:
            raise MNISTFormatError(
                f"{path}: bad magic number {got} (0x{got:08x}: dtype byte 0x{(got >> 8) & 0xFF:02x}, "
                f"{got & 0xFF} dims); expected {magic} (0x{magic:08x}: uint8, {ndim} dims) for an MNIST "
                f"{kind} file"
            )
        if len(head) < header:
            raise MNISTFormatError(
                f"{path}: truncated: {len(head)} bytes, shorter than the {header}-byte "
                f"header of an IDX {kind} file"
            )
        shape = list(struct.unpack(f">{ndim}I", head[4:header]))
        if ndim == 3 and shape[1:] != [28, 28]:
            raise MNISTFormatError(f"{path}: images are {shape[1]}x{shape[2]}; expected 28x28")
        if shape[0] == 0:
            raise MNISTFormatError(f"{path}: the header declares 0 {kind}s")
        if shape[0] > MAX_IDX_EXAMPLES:
            raise MNISTFormatError(
                f"{path}: the header declares {shape[0]} {kind}s; an MNIST file holds at "
                f"most {MAX_IDX_EXAMPLES} (refused before reading it)"
            )
        if check_count is not None:
            check_count(path, shape[0])
        size = int(np.prod(shape))
        payload = f.read(size)
        if len(payload) < size:
            raise MNISTFormatError(
                f"{path}: truncated: the header declares {shape[0]} {kind}s "
                f"({header + size} bytes) but the data is {header + len(payload)} bytes"
            )
        if f.read(1):
            if path.name.endswith(".gz"):  # a damaged stream decompresses to more: let gzip say so
                _drain(f)  # its CRC check at the end raises (a one-line gzip error)
            raise MNISTFormatError(
                f"{path}: trailing data: the header declares {shape[0]} {kind}s "
                f"({header + size} bytes) but the data is longer"
            )
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy()


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Parse an MNIST image file (``.gz`` or raw): uint8 array (N, 28, 28), values 0..255."""
    return _parse_idx(Path(path), _IMAGE_MAGIC)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Parse an MNIST label file (``.gz`` or raw): uint8 array (N,), values checked to lie in 0..9."""
    return _labels(Path(path))


def _labels(path: Path, check: Callable[[Path, int], None] | None = None) -> np.ndarray:
    labels = _parse_idx(path, _LABEL_MAGIC, check)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise MNISTFormatError(
            f"{path}: {bad.size} labels outside 0..9 (first: index {bad[0]}, value {labels[bad[0]]})"
        )
    return labels


def read_mnist_split(directory: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Parse one split from ``directory`` (no search, no download).

    The counts are checked against MNIST's (:data:`MNIST_COUNTS`): a file of 10000 examples or
    more must hold exactly its split's count, so swapped or foreign files fail; smaller files (the
    tests' generated sets) pass, and ``PROBLAYERS_MNIST_ANY_COUNT=1`` accepts any count.
    Returns images uint8 (N, 28, 28) and labels int64 (N,), both on the CPU.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
    paths = []
    for name in SPLITS[split]:
        path = find_mnist_file(directory, name)
        if path is None:
            raise MNISTNotFoundError(f"{Path(directory) / name}[.gz]: file not found; {_HINT}")
        paths.append(path)
    check = _count_check(split)
    images, labels = _parse_idx(paths[0], _IMAGE_MAGIC, check), _labels(paths[1], check)
    if len(images) != len(labels):
        raise MNISTFormatError(
            f"{paths[1]}: holds {len(labels)} labels but {paths[0]} holds {len(images)} images"
        )
    return torch.from_numpy(images), torch.from_numpy(labels).to(torch.int64)


def write_idx(path: str | os.PathLike, array: np.ndarray | torch.Tensor) -> Path:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends with ``.gz``), atomically;
    returns the path.

    ``array``: uint8 of shape (N,) (labels, magic 2049) or (N, H, W) (images, magic 2051).
    """
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim not in (1, 3):
        raise ValueError(f"array must be uint8 of shape (N,) or (N, H, W); got {arr.dtype} {arr.shape}")
    data = struct.pack(f">{1 + arr.ndim}I", 0x800 | arr.ndim, *arr.shape) + arr.tobytes()
    from ..train.checkpoint import atomic_write

    path = Path(path)
    blob = gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data
    return atomic_write(path, lambda f: f.write(blob))


def write_mnist_split(
    directory: str | os.PathLike,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    split: str = "train",
    *,
    gz: bool = True,
) -> tuple[Path, Path]:
    """Write images uint8 (N, 28, 28) and labels (N,) (any integer dtype, 0..9) as a split's IDX files."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    count = len(images)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels: expected {count} integers (one per image), got {labels.dtype} of shape {labels.shape}"
        )
    if count and not 0 <= labels.min() <= labels.max() <= 9:
        raise ValueError(f"labels: expected digits 0..9, got values in {labels.min()}..{labels.max()}")
    suffix = ".gz" if gz else ""
    return (
        write_idx(directory / f"{SPLITS[split][0]}{suffix}", images),
        write_idx(directory / f"{SPLITS[split][1]}{suffix}", labels.astype(np.uint8)),
    )


def verify_sha256(directory: str | os.PathLike, expected: dict[str, str] | None = None) -> dict[str, str]:
    """Check the SHA-256 of each file's *uncompressed* bytes against ``expected`` (default
    :data:`MNIST_SHA256`, keys are file names without ``.gz``); return name -> hex digest.

    Raises :class:`MNISTNotFoundError` for a missing file, :class:`MNISTFormatError` for a mismatch.
    """
    expected = MNIST_SHA256 if expected is None else expected
    digests = {}
    for name, want in expected.items():
        path = find_mnist_file(directory, name)
        if path is None:
            raise MNISTNotFoundError(f"{Path(directory) / name}[.gz]: file not found")
        digest = hashlib.sha256()
        with _reading(path) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digests[name] = digest.hexdigest()
        if digests[name] != want.lower():
            raise MNISTFormatError(
                f"{path}: SHA-256 of the uncompressed data is {digests[name]}; expected {want}"
            )
    return digests
