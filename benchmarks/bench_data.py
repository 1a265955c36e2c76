"""Training images for the benchmarks, with numpy only (the TFP worker runs in another venv).

``load_images(data_dir, n, seed)``: uint8 ``(n, 28, 28)``: the first ``n`` MNIST training images
from ``data_dir`` (IDX files, ``.gz`` or raw), or, with ``data_dir=None``, synthetic images:
pixels 255 with probability 0.13 (MNIST's mean ink), else 0, from ``numpy`` seeded ``seed``.
``load_split(data_dir, split)``: a whole split (``"train"`` or ``"test"``), uint8 images
``(N, 28, 28)`` and int64 labels ``(N,)``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["describe", "load_images", "load_split"]

TRAIN_IMAGES = "train-images-idx3-ubyte"
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def _read_idx_images(path: Path) -> np.ndarray:
    raw = _read(path)
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 0x803:
        raise ValueError(f"{path}: not an IDX image file (magic {magic:#x})")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(int(n), int(rows), int(cols))


def _read_idx_labels(path: Path) -> np.ndarray:
    raw = _read(path)
    magic, n = np.frombuffer(raw[:8], dtype=">u4")
    if magic != 0x801:
        raise ValueError(f"{path}: not an IDX label file (magic {magic:#x})")
    return np.frombuffer(raw[8:], dtype=np.uint8)[: int(n)].astype(np.int64)


def _idx_path(data_dir: str, name: str) -> Path:
    base = Path(data_dir) / name
    path = base if base.is_file() else base.with_name(name + ".gz")
    if not path.is_file():
        raise FileNotFoundError(f"{base}[.gz]: not found")
    return path


def load_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = SPLIT_FILES[split]
    x = _read_idx_images(_idx_path(data_dir, images))
    y = _read_idx_labels(_idx_path(data_dir, labels))
    if len(x) != len(y):
        raise ValueError(f"{data_dir}: {len(x)} {split} images but {len(y)} labels")
    return np.ascontiguousarray(x), y


def load_images(data_dir: str | None, n: int, seed: int = 0) -> np.ndarray:
    if data_dir:
        images = _read_idx_images(_idx_path(data_dir, TRAIN_IMAGES))[:n]
        return np.ascontiguousarray(images)
    rng = np.random.default_rng(seed)
    return (rng.random((n, 28, 28)) < 0.13).astype(np.uint8) * np.uint8(255)


def describe(data_dir: str | None, n: int) -> str:
    if data_dir:
        return f"MNIST training images from {data_dir} (first {n}), binarized per batch"
    return f"synthetic images ({n}, 28x28; pixels 255 w.p. 0.13, else 0), binarized per batch"
