"""MNIST for the VAE toolkit: IDX parsing, locating/downloading the files, binarization, epoch batches.

Pixel data stays ``uint8`` (0..255) until it is binarized; binarized images are ``float32`` of {0, 1}
with shape ``(N, 1, 28, 28)``. Labels are ``int64`` of shape ``(N,)`` with values 0..9.

Where the files come from (:func:`resolve_mnist_dir`), first match wins:

1. an explicit directory (``data_dir`` argument, the CLI's ``--data-dir``);
2. the environment variable ``PROBLAYERS_MNIST_DIR``;
3. the cache directory ``$XDG_CACHE_HOME/problayers/mnist`` (default ``~/.cache/problayers/mnist``);
4. a download into that cache (see :mod:`problayers.vae.download`), each file checked against its MD5.

A directory named by 1 or 2 that lacks a file is an error: it never falls through to a download.
Every problem with the data raises a one-line :class:`MNISTError` naming the file and the fault.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..train.rng import derived_seed
from .idx import (  # noqa: F401  (re-exported; _HINT and _one_line for problayers.vae.download)
    _HINT,
    ANY_COUNT_ENV,
    MAX_IDX_EXAMPLES,
    MNIST_COUNTS,
    MNIST_ENV_VAR,
    MNIST_FILES,
    MNIST_SHA256,
    SPLITS,
    MNISTDownloadError,
    MNISTError,
    MNISTFormatError,
    MNISTNotFoundError,
    _one_line,
    find_mnist_file,
    missing_mnist_files,
    read_idx_images,
    read_idx_labels,
    read_mnist_split,
    verify_sha256,
    write_idx,
    write_mnist_split,
)

__all__ = [
    "ANY_COUNT_ENV",
    "MAX_IDX_EXAMPLES",
    "MNIST_COUNTS",
    "MNIST_ENV_VAR",
    "MNIST_FILES",
    "MNIST_SHA256",
    "SPLITS",
    "TEST_BINARIZATION_SEED",
    "EpochBatches",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "binarize",
    "binarize_fixed",
    "default_cache_dir",
    "find_mnist_file",
    "load_mnist",
    "missing_mnist_files",
    "read_idx_images",
    "read_idx_labels",
    "read_mnist_split",
    "resolve_mnist_dir",
    "synthetic_mnist",
    "verify_sha256",
    "write_idx",
    "write_mnist_split",
]

TEST_BINARIZATION_SEED = 0


# ---------------------------------------------------------------------------------------- where files are
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/problayers/mnist`` if that variable is an absolute path, else
    ``~/.cache/problayers/mnist``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "problayers" / "mnist"


def _require_complete(directory: Path, source: str, hint: str) -> Path:
    if not directory.is_dir():
        raise MNISTNotFoundError(f"{directory} (from {source}): not a directory; {hint}")
    missing = missing_mnist_files(directory)
    if missing:
        raise MNISTNotFoundError(
            f"{directory} (from {source}) lacks {', '.join(missing)} (.gz or raw); {hint}"
        )
    return directory


def resolve_mnist_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    mirrors: Iterable[str] | None = None,
    md5s: dict[str, str] | None = None,
    timeout: float = 60.0,
    source: str = "the data_dir argument / --data-dir",
) -> Path:
    """The directory holding all four MNIST files: ``data_dir``, else ``$PROBLAYERS_MNIST_DIR``, else
    the cache (``cache_dir`` or :func:`default_cache_dir`), downloading missing files into the cache
    when ``download`` is true (``mirrors``/``md5s``/``timeout`` go to
    :func:`problayers.vae.download.download_mnist`). An empty string counts as not given.
    ``source`` says in an error where ``data_dir`` came from (a run's ``config.json``, ...).

    Raises :class:`MNISTNotFoundError` if a given directory lacks a file or nothing is found with
    ``download=False``, and :class:`MNISTDownloadError` if every mirror fails.
    """
    if data_dir is not None and os.fspath(data_dir) != "":
        # A given directory is used as it is: only another one helps (not the variable).
        hint = f"pass --data-dir DIR, a directory holding the four MNIST IDX files ({', '.join(MNIST_FILES)})"
        return _require_complete(Path(data_dir).expanduser(), source, hint)
    env = os.environ.get(MNIST_ENV_VAR, "")
    if env:
        return _require_complete(Path(env).expanduser(), f"${MNIST_ENV_VAR}", _HINT)
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    missing = missing_mnist_files(cache)
    if not missing:
        return cache
    if not download:
        raise MNISTNotFoundError(
            f"MNIST not found: no data_dir, {MNIST_ENV_VAR} unset, cache {cache} lacks "
            f"{', '.join(missing)}, and downloading is disabled; {_HINT}"
        )
    from .download import download_mnist

    download_mnist(cache, missing, mirrors=mirrors, md5s=md5s, timeout=timeout)
    return cache


def load_mnist(
    data_dir: str | os.PathLike | None = None, split: str = "train", **resolve_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split (``"train"``: 60000, ``"test"``: 10000 examples), locating or downloading the files
    with :func:`resolve_mnist_dir` (``resolve_kwargs`` are its keyword arguments).

    Returns images uint8 (N, 28, 28), values 0..255, and labels int64 (N,), values 0..9, on the CPU.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
    return read_mnist_split(resolve_mnist_dir(data_dir, **resolve_kwargs), split)


# ------------------------------------------------------------------------------------------ synthetic data
# Seven-segment digits: segment endpoints (x0, y0, x1, y1) in pixels, and which segments each digit lights.
_SEGMENTS = torch.tensor(
    [
        [9, 6, 19, 6],
        [19, 6, 19, 14],
        [19, 14, 19, 22],
        [9, 22, 19, 22],
        [9, 14, 9, 22],
        [9, 6, 9, 14],
        [9, 14, 19, 14],
    ],
    dtype=torch.float32,
)
_DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]
_LIT = torch.tensor([[s in d for s in "abcdefg"] for d in _DIGIT_SEGMENTS], dtype=torch.float32)


def synthetic_mnist(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digit-like images for tests/CI without the real data: seven-segment digits with random
    shift, slant, stroke width and ink, anti-aliased, on a zero background. Deterministic in ``seed``.

    Returns images uint8 (n, 28, 28), values 0..255, and labels int64 (n,), values 0..9, on the CPU.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)

    dx, dy, slant = uniform(-3, 3), uniform(-3, 3), uniform(-0.25, 0.25)
    width, ink = uniform(0.8, 1.8), uniform(180, 255)
    lit = _LIT[labels].view(n, 7, 1, 1)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    out = torch.zeros(n, 28, 28)
    for c in range(0, n, 1024):  # chunks keep the temporaries in cache
        s = slice(c, c + 1024)
        px, py = xs - dx[s] + slant[s] * (ys - dy[s] - 14), ys - dy[s]  # pixel centres in template coords
        for seg, (x0, y0, x1, y1) in enumerate(_SEGMENTS.tolist()):
            ex, ey = x1 - x0, y1 - y0
            t = (((px - x0) * ex + (py - y0) * ey) / (ex * ex + ey * ey)).clamp_(0, 1)
            dist = torch.hypot(px - x0 - t * ex, py - y0 - t * ey)
            stroke = (width[s] + 0.5 - dist).clamp_(0, 1).mul_(lit[s, seg])
            torch.maximum(out[s], stroke, out=out[s])
    return (out * ink).round().clamp(0, 255).to(torch.uint8), labels


# ---------------------------------------------------------------------------------------------- binarizing
# P(pixel = 1) for each uint8 value, computed once on the CPU: moving it is exact, so a lookup gives the
# same probabilities on every device (on-device `x / 255` may round differently, e.g. as x * (1/255)).
_PIXEL_PROB = torch.arange(256, dtype=torch.float32) / 255


def _as_n1hw(images_u8: torch.Tensor) -> torch.Tensor:
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8:
        got = images_u8.dtype if isinstance(images_u8, torch.Tensor) else type(images_u8).__name__
        raise TypeError(f"images_u8 must be a uint8 torch.Tensor (pixel values 0..255); got {got}")
    if images_u8.dim() == 3:
        return images_u8.unsqueeze(1)
    if images_u8.dim() == 4 and images_u8.shape[1] == 1:
        return images_u8
    raise ValueError(f"images_u8 must have shape (N, H, W) or (N, 1, H, W); got {tuple(images_u8.shape)}")


def _bernoulli(x_n1hw: torch.Tensor, uniforms: torch.Tensor, prob_table: torch.Tensor) -> torch.Tensor:
    """float32 {0, 1}: 1 where uniform < pixel / 255 (pixel 255 is always 1, pixel 0 always 0)."""
    return (uniforms < prob_table[x_n1hw.int()]).to(torch.float32)


def binarize(images_u8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel ~ Bernoulli(pixel / 255), drawn on the images' device.

    ``images_u8``: uint8 (N, 28, 28) or (N, 1, 28, 28). ``generator`` must live on that device (None:
    the global RNG). Returns float32 (N, 1, 28, 28) of {0, 1} on the same device.
    """
    x = _as_n1hw(images_u8)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return _bernoulli(x, u, _PIXEL_PROB.to(x.device))


def binarize_fixed(images_u8: torch.Tensor, seed: int = TEST_BINARIZATION_SEED) -> torch.Tensor:
    """A fixed binarization (for the test set): the uniforms are drawn on the CPU from a generator
    seeded with ``seed`` and then moved, so the result is bitwise identical on every device.

    ``images_u8``: uint8 (N, 28, 28) or (N, 1, 28, 28). Returns float32 (N, 1, 28, 28) of {0, 1}.
    """
    x = _as_n1hw(images_u8)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    return _bernoulli(x, u, _PIXEL_PROB.to(x.device))


def _check_int(name: str, value: object, lo: int, expectation: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be {expectation}; got {value!r}")
    return value


class _Sized(Iterator[torch.Tensor]):
    """An iterator that knows how many items it gives."""

    def __init__(self, items: Iterator[torch.Tensor], length: int) -> None:
        self._items, self._length = items, length

    def __next__(self) -> torch.Tensor:
        return next(self._items)

    def __len__(self) -> int:
        return self._length


class EpochBatches:
    """One epoch at a time of dynamically binarized training batches, from device-resident images.

    ``images_u8``: uint8 (N, 28, 28) or (N, 1, 28, 28) on the training device (kept, not copied).
    ``batch_size`` is the *global* batch; with ``world_size`` W, rank r gets rows
    ``[r*B//W : (r+1)*B//W]`` of each global batch of B, so the ranks' batches concatenate to the
    single-process batch bitwise (the last batch with ``drop_last=False`` may split unevenly, but
    gives every rank at least one example: where it cannot, construction refuses).

    Epoch ``e`` is a pure function of ``(seed, e)``: the permutation comes from a CPU generator and the
    binarization noise (drawn for the whole global batch) from a generator on the images' device, both
    seeded from ``(seed, e)``, so resuming at an epoch boundary reproduces the same batches on the same
    device type. Each step yields float32 (b, 1, 28, 28) of {0, 1} on the images' device.
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images = _as_n1hw(images_u8)
        self.num_examples = n = self.images.shape[0]
        self.batch_size = _check_int("batch_size", batch_size, 1, "an int > 0")
        self.world_size = _check_int("world_size", world_size, 1, "an int >= 1")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}); got {rank!r}")
        if batch_size % world_size:
            raise ValueError(
                f"batch_size must be divisible by world_size; got batch_size={batch_size}, "
                f"world_size={world_size}"
            )
        if not drop_last and 0 < n % batch_size < world_size:
            raise ValueError(
                f"the last batch of {n % batch_size} examples (drop_last=False) cannot give each of "
                f"the {world_size} ranks one; use drop_last=True or another batch_size"
            )
        if drop_last and batch_size > n:
            raise ValueError(
                f"batch_size must be <= the number of examples ({n}) when drop_last=True; "
                f"got batch_size={batch_size}"
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int; got {seed!r}")
        self.rank, self.seed, self.drop_last = rank, seed, bool(drop_last)
        self._prob_table = _PIXEL_PROB.to(self.images.device)

    def __len__(self) -> int:
        """Steps per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def permutation(self, e: int) -> torch.Tensor:
        """int64 (N,) on the CPU: the order in which epoch ``e`` visits the examples."""
        _check_int("e", e, 0, "an int >= 0")
        gen = torch.Generator().manual_seed(derived_seed("perm", self.seed, e))
        return torch.randperm(self.num_examples, generator=gen)

    def epoch(self, e: int) -> Iterator[torch.Tensor]:
        """Iterator over the ``len(self)`` batches of epoch ``e``: float32 (b, 1, 28, 28) of {0, 1}.
        It has a ``len`` (a progress bar shows the epoch's total)."""
        device = self.images.device
        perm = self.permutation(e).to(device)
        noise = torch.Generator(device=device).manual_seed(derived_seed("noise", self.seed, e))
        return _Sized(self._iterate(perm, noise), len(self))

    def _iterate(self, perm: torch.Tensor, noise: torch.Generator) -> Iterator[torch.Tensor]:
        n, b, w, r = self.num_examples, self.batch_size, self.world_size, self.rank
        shape = self.images.shape[1:]
        for step in range(len(self)):
            size = min(b, n - step * b)  # global batch size of this step
            lo, hi = r * size // w, (r + 1) * size // w
            u = torch.rand((size, *shape), generator=noise, device=perm.device)
            x = self.images[perm[step * b + lo : step * b + hi]]
            yield _bernoulli(x, u[lo:hi], self._prob_table)
