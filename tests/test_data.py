"""Tests of problayers.vae.data: IDX parsing and its errors, where the files come from, binarization,
epoch batches, synthetic digits, and (when present) the real MNIST copy in ../shared/data/mnist."""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from problayers.vae import data, download, idx
from problayers.vae.data import (
    MNIST_ENV_VAR,
    MNIST_FILES,
    EpochBatches,
    MNISTError,
    MNISTFormatError,
    MNISTNotFoundError,
    binarize,
    binarize_fixed,
    load_mnist,
    read_mnist_split,
    resolve_mnist_dir,
    synthetic_mnist,
    verify_sha256,
    write_mnist_split,
)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test may see a real PROBLAYERS_MNIST_DIR or cache, nor reach a real mirror."""
    monkeypatch.delenv(MNIST_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(download, "MNIST_MIRRORS", ())


def make_dir(path: Path, n_train: int = 12, n_test: int = 7, gz: bool = True, seed: int = 0) -> Path:
    """A directory holding all four (synthetic) MNIST files."""
    write_mnist_split(path, *synthetic_mnist(n_train, seed), "train", gz=gz)
    write_mnist_split(path, *synthetic_mnist(n_test, seed + 1), "test", gz=gz)
    return path


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload


# --------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("gz", [True, False])
def test_parse_good_files(tmp_path, gz):
    images, labels = synthetic_mnist(12, seed=3)
    write_mnist_split(tmp_path, images, labels, "train", gz=gz)
    assert (tmp_path / (TRAIN_IMAGES + (".gz" if gz else ""))).is_file()
    x, y = read_mnist_split(tmp_path, "train")
    assert x.dtype == torch.uint8 and x.shape == (12, 28, 28) and torch.equal(x, images)
    assert y.dtype == torch.int64 and y.shape == (12,) and torch.equal(y, labels)


@pytest.mark.parametrize(
    "labels, phrase",
    [
        (np.array([259, 2, 1]), r"labels: expected digits 0..9, got values in 1..259"),
        (np.array([-1, 2, 1]), r"labels: expected digits 0..9, got values in -1..2"),
        (np.array([2.9, 2.0, 1.0]), r"labels: expected 3 integers \(one per image\), got float64"),
        (np.array([1, 2]), r"labels: expected 3 integers \(one per image\), got int64 of shape \(2,\)"),
    ],
    ids=["259", "-1", "floats", "too-few"],
)
def test_bad_labels_are_refused_when_written(tmp_path, labels, phrase):
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=phrase):
        write_mnist_split(tmp_path, images, labels, "test")
    assert not list(tmp_path.iterdir())


def test_gz_preferred_over_raw(tmp_path):
    write_mnist_split(tmp_path, *synthetic_mnist(5, seed=1), "test", gz=False)
    images, labels = synthetic_mnist(4, seed=2)
    write_mnist_split(tmp_path, images, labels, "test", gz=True)
    x, y = read_mnist_split(tmp_path, "test")
    assert torch.equal(x, images) and torch.equal(y, labels)


def _good_images(n: int = 3) -> bytes:
    return idx_bytes(2051, (n, 28, 28), bytes(range(256)) * 9 + bytes(n * 784 - 2304))


def _good_labels(n: int = 3) -> bytes:
    return idx_bytes(2049, (n,), bytes(i % 10 for i in range(n)))


# name -> (file to corrupt, its content (raw bytes, gzipped unless noted), expected phrase in the error)
BAD_FILES = {
    "bad magic": (TRAIN_IMAGES, idx_bytes(2049, (3, 28, 28), bytes(3 * 784)), "bad magic number 2049"),
    "wrong dtype byte": (TRAIN_IMAGES, idx_bytes(0x0D03, (3, 28, 28), bytes(3 * 784)), "dtype byte 0x0d"),
    "labels as images": (TRAIN_IMAGES, _good_labels(), "bad magic number 2049"),
    "wrong dims": (TRAIN_IMAGES, idx_bytes(2051, (3, 27, 28), bytes(3 * 756)), "27x28; expected 28x28"),
    "truncated images": (TRAIN_IMAGES, _good_images()[:-10], "truncated"),
    "truncated header": (TRAIN_LABELS, _good_labels()[:6], "truncated"),
    "trailing bytes": (TRAIN_IMAGES, _good_images() + b"\0", "trailing data"),
    "trailing labels": (TRAIN_LABELS, _good_labels() + b"\1\2", "trailing data"),
    "count mismatch": (TRAIN_LABELS, _good_labels(4), "holds 4 labels but"),
    "label out of range": (TRAIN_LABELS, idx_bytes(2049, (3,), b"\1\x0a\2"), "outside 0..9"),
    "no examples": (TRAIN_IMAGES, idx_bytes(2051, (0, 28, 28), b""), "declares 0 images"),
}


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_one_line_error(tmp_path, case, gz):
    bad_name, content, phrase = BAD_FILES[case]
    suffix = ".gz" if gz else ""
    files = {TRAIN_IMAGES: _good_images(), TRAIN_LABELS: _good_labels(), bad_name: content}
    for name, raw in files.items():
        (tmp_path / (name + suffix)).write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(MNISTFormatError) as info:
        read_mnist_split(tmp_path, "train")
    msg = str(info.value)
    assert phrase in msg and "\n" not in msg
    assert str(tmp_path / (bad_name + suffix)) in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("damage", ["garbage", "truncated gzip", "bad crc", "longer, bad crc"])
def test_bad_gzip(tmp_path, damage):
    write_mnist_split(tmp_path, *synthetic_mnist(6), "train")
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    blob = path.read_bytes()
    # "longer, bad crc": what bits flipped in the deflate data give, a longer output that fails
    # gzip's check (it was called trailing data, as if the file were another than MNIST's)
    longer = gzip.compress(gzip.decompress(blob) + bytes(100))
    blob = {
        "garbage": b"this is not gzip data",
        "truncated gzip": blob[: len(blob) // 2],
        "bad crc": blob[:-8] + bytes(4) + blob[-4:],
        "longer, bad crc": longer[:-8] + bytes(4) + longer[-4:],
    }[damage]
    path.write_bytes(blob)
    with pytest.raises(MNISTFormatError, match="corrupt or truncated gzip") as info:
        read_mnist_split(tmp_path, "train")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_in_split(tmp_path):
    write_mnist_split(tmp_path, *synthetic_mnist(3), "train")
    (tmp_path / f"{TRAIN_LABELS}.gz").unlink()
    with pytest.raises(MNISTNotFoundError, match=TRAIN_LABELS):
        read_mnist_split(tmp_path, "train")


def test_bad_split(tmp_path):
    make_dir(tmp_path)
    with pytest.raises(ValueError, match=r"split .*'valid'"):
        load_mnist(tmp_path, split="valid")


def test_verify_sha256(tmp_path):
    make_dir(tmp_path)
    with pytest.raises(MNISTFormatError, match="SHA-256") as info:
        verify_sha256(tmp_path)
    assert "-idx" in str(info.value) and "\n" not in str(info.value)
    digests = verify_sha256(tmp_path, expected={})
    assert digests == {}
    want = hashlib.sha256(gzip.decompress((tmp_path / f"{TRAIN_LABELS}.gz").read_bytes())).hexdigest()
    assert verify_sha256(tmp_path, {TRAIN_LABELS: want}) == {TRAIN_LABELS: want}


# ----------------------------------------------------------------------------------------- resolution
def test_resolution_order(tmp_path, monkeypatch):
    explicit, env, cache = (make_dir(tmp_path / d, seed=i) for i, d in enumerate(("explicit", "env", "c")))
    monkeypatch.setenv(MNIST_ENV_VAR, str(env))
    assert resolve_mnist_dir(explicit, cache_dir=cache) == explicit
    assert resolve_mnist_dir(None, cache_dir=cache) == env
    assert resolve_mnist_dir("", cache_dir=cache) == env
    x, _ = load_mnist(split="test", cache_dir=cache)
    assert torch.equal(x, synthetic_mnist(7, 2)[0])  # env's test split (seed 1 + 1)
    monkeypatch.delenv(MNIST_ENV_VAR)
    assert resolve_mnist_dir(cache_dir=cache, download=False) == cache


def test_default_cache_dir(tmp_path, monkeypatch):
    assert data.default_cache_dir() == tmp_path / "xdg-cache/problayers/mnist"
    cache = make_dir(tmp_path / "xdg-cache/problayers/mnist")
    assert resolve_mnist_dir(download=False) == cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home/.cache/problayers/mnist"


def test_explicit_dir_missing_files_is_error(tmp_path):
    d = make_dir(tmp_path / "d")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    make_dir(tmp_path / "xdg-cache/problayers/mnist")  # a complete cache must not be used instead
    with pytest.raises(MNISTNotFoundError) as info:
        resolve_mnist_dir(d)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(d) in msg and "\n" not in msg
    # A given directory is used as given: the variable would not replace it, so it is not offered.
    assert "pass --data-dir DIR" in msg and MNIST_ENV_VAR not in msg
    with pytest.raises(MNISTNotFoundError, match="not a directory"):
        load_mnist(tmp_path / "nope")


def test_env_dir_missing_files_is_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MNIST_ENV_VAR, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MNISTNotFoundError, match=rf"\${MNIST_ENV_VAR}\) lacks train-images"):
        resolve_mnist_dir(download=False)


def test_no_download_no_cache(tmp_path):
    with pytest.raises(MNISTNotFoundError, match=r"downloading is disabled.*--data-dir"):
        resolve_mnist_dir(download=False)


def test_download_is_last_resort(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(download, "download_mnist", lambda d, names, **kw: calls.append((d, names, kw)))
    cache = make_dir(tmp_path / "c")
    (cache / "t10k-images-idx3-ubyte.gz").unlink()
    assert resolve_mnist_dir(cache_dir=cache, mirrors=["http://x/"], md5s={}) == cache
    assert calls == [
        (cache, ["t10k-images-idx3-ubyte"], {"mirrors": ["http://x/"], "md5s": {}, "timeout": 60.0})
    ]


def test_no_mirror_error_explains_local_copy(tmp_path):
    with pytest.raises(MNISTError) as info:
        load_mnist(split="train")  # download enabled, but the fixture leaves no mirrors
    msg = str(info.value)
    assert "--data-dir" in msg and MNIST_ENV_VAR in msg and "\n" not in msg
    assert isinstance(info.value, OSError)


# ----------------------------------------------------------------------------------------- binarizing
@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_binarize_statistics(fixed):
    # Each pixel is 1 with probability value / 255, for the training draws and the fixed test set.
    images, _ = synthetic_mnist(400, seed=5)
    b = binarize_fixed(images) if fixed else binarize(images, generator=torch.Generator().manual_seed(0))
    assert b.dtype == torch.float32 and b.shape == (400, 1, 28, 28)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    p = images.unsqueeze(1).double() / 255
    n = p.numel()
    sd = float((p * (1 - p)).sum().sqrt()) / n  # std of the mean of independent Bernoullis
    assert abs(float(b.double().mean() - p.mean())) < 5 * sd
    assert torch.equal(b[p == 0], torch.zeros_like(b[p == 0])) and bool((b[p == 1] == 1).all())
    again = (
        binarize_fixed(images.unsqueeze(1))
        if fixed
        else binarize(images.unsqueeze(1), torch.Generator().manual_seed(0))
    )
    assert torch.equal(again, b)  # (N, 1, 28, 28) too


def test_binarize_errors():
    with pytest.raises(TypeError, match="uint8"):
        binarize(torch.zeros(2, 28, 28))
    with pytest.raises(TypeError, match="uint8"):
        binarize_fixed(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        binarize(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


def test_binarize_fixed_reproducible():
    images, _ = synthetic_mnist(50, seed=1)
    a, b = binarize_fixed(images), binarize_fixed(images.clone())
    assert a.dtype == torch.float32 and a.shape == (50, 1, 28, 28) and torch.equal(a, b)
    assert torch.equal(a, binarize_fixed(images, seed=data.TEST_BINARIZATION_SEED))
    assert not torch.equal(a, binarize_fixed(images, seed=1))
    # it does not disturb (nor depend on) the global RNG
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert torch.equal(binarize_fixed(images), a) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_binarize_fixed_same_on_cuda():
    images, _ = synthetic_mnist(300, seed=2)
    assert torch.equal(binarize_fixed(images.cuda()).cpu(), binarize_fixed(images))


# --------------------------------------------------------------------------------------- epoch batches
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_epoch_batches_on_cuda():
    images = synthetic_mnist(40, seed=0)[0].cuda()
    single = list(EpochBatches(images, 8, seed=1).epoch(3))
    assert all(b.device == images.device and b.dtype == torch.float32 for b in single)
    again = EpochBatches(images, 8, seed=1).epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(again, single, strict=True))
    halves = [list(EpochBatches(images, 8, seed=1, rank=r, world_size=2).epoch(3)) for r in range(2)]
    assert all(torch.equal(torch.cat([h0, h1]), b) for h0, h1, b in zip(*halves, single, strict=True))


def _epoch(eb: EpochBatches, e: int) -> list[torch.Tensor]:
    return list(eb.epoch(e))


def test_epoch_covers_every_example_once():
    n = 103
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 28, 28).contiguous()
    eb = EpochBatches(images, 10, seed=4, drop_last=False)
    assert len(eb) == 11
    perm = eb.permutation(2)
    assert sorted(perm.tolist()) == list(range(n))
    batches = _epoch(eb, 2)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert all(b.dtype == torch.float32 and b.shape[1:] == (1, 28, 28) for b in batches)
    # each batch is the binarization of the permuted images: pixel 0 -> 0 always, so check the zeros
    seen = torch.cat([perm[i * 10 : (i + 1) * 10] for i in range(11)])
    assert torch.equal(seen.sort().values, torch.arange(n))
    zero_rows = (seen == 0).nonzero().item()
    assert float(torch.cat(batches)[zero_rows].sum()) == 0.0
    assert len(EpochBatches(images, 10, drop_last=True)) == 10
    epoch = eb.epoch(0)
    assert len(epoch) == 11 and len(list(epoch)) == 11  # a progress bar shows the total


def test_epoch_batches_are_the_binarized_permutation():
    images = torch.full((8, 28, 28), 255, dtype=torch.uint8)
    images[torch.arange(8) % 2 == 0] = 0  # even examples all 0, odd all 1 after binarization
    eb = EpochBatches(images, 4, seed=1)
    for step, batch in enumerate(eb.epoch(0)):
        idx = eb.permutation(0)[step * 4 : (step + 1) * 4]
        assert torch.equal(batch.flatten(1).mean(1), (idx % 2).float())


def test_epochs_reproducible_and_distinct():
    images, _ = synthetic_mnist(64, seed=0)
    eb = EpochBatches(images, 16, seed=7)
    e0, e1 = _epoch(eb, 0), _epoch(eb, 1)
    fresh = EpochBatches(images, 16, seed=7)  # e.g. after a resume: no saved RNG state needed
    _ = torch.rand(5)  # global RNG use does not matter
    assert all(torch.equal(a, b) for a, b in zip(fresh.epoch(1), e1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(eb.epoch(0), e0, strict=True))
    assert not torch.equal(torch.cat(e0), torch.cat(e1))
    assert not torch.equal(eb.permutation(0), eb.permutation(1))
    other_seed = _epoch(EpochBatches(images, 16, seed=8), 0)
    assert not torch.equal(torch.cat(e0), torch.cat(other_seed))
    # the binarization noise is drawn anew each epoch, not only the order: with identical
    # images the order does not matter, the epochs still differ
    same = EpochBatches(images[:1].expand(64, 28, 28).contiguous(), 16, seed=7)
    assert not torch.equal(torch.cat(_epoch(same, 0)), torch.cat(_epoch(same, 1)))


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_concatenate_to_single_process(drop_last):
    images, _ = synthetic_mnist(52, seed=0)  # a last batch of 4: one example per rank at least
    single = _epoch(EpochBatches(images, 8, seed=3, drop_last=drop_last), 5)
    for world in (2, 4):
        ranks = [
            _epoch(EpochBatches(images, 8, seed=3, drop_last=drop_last, rank=r, world_size=world), 5)
            for r in range(world)
        ]
        assert all(len(r) == len(single) for r in ranks)
        for step, full in enumerate(single):
            assert torch.equal(torch.cat([r[step] for r in ranks]), full)
        assert all(len(r[0]) == 8 // world for r in ranks)
        assert all(len(r[-1]) == len(single[-1]) // world for r in ranks)  # the last batch too


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"batch_size": 0}, r"batch_size must be an int > 0; got 0"),
        ({"batch_size": 2.0}, r"batch_size must be an int > 0; got 2.0"),
        ({"batch_size": 11}, r"batch_size must be <= the number of examples \(10\).*got batch_size=11"),
        ({"batch_size": 6, "world_size": 4}, r"divisible by world_size; got batch_size=6, world_size=4"),
        ({"batch_size": 4, "world_size": 0}, r"world_size must be an int >= 1; got 0"),
        ({"batch_size": 4, "world_size": 2, "rank": 2}, r"rank must be an int in \[0, world_size=2\); got 2"),
        ({"batch_size": 4, "rank": -1}, r"rank .*got -1"),
        (  # 10 examples in batches of 8: a last batch of 2 for 4 ranks would leave two empty
            {"batch_size": 8, "world_size": 4, "drop_last": False},
            r"the last batch of 2 examples \(drop_last=False\) cannot give each of the 4 ranks one",
        ),
    ],
)
def test_epoch_batches_errors(kwargs, pattern):
    images, _ = synthetic_mnist(10)
    with pytest.raises(ValueError, match=pattern):
        EpochBatches(images, **kwargs)


def test_epoch_batches_other_errors():
    images, _ = synthetic_mnist(10)
    assert len(EpochBatches(images, 11, drop_last=False)) == 1
    with pytest.raises(TypeError, match="uint8"):
        EpochBatches(images.float(), 2)
    with pytest.raises(ValueError, match="e must be an int >= 0; got -1"):
        EpochBatches(images, 2).epoch(-1)


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_mnist():
    x, y = synthetic_mnist(500, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (500, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (500,) and set(y.tolist()) == set(range(10))
    assert 0.6 < float((x == 0).float().mean()) < 0.95 and int(x.max()) > 200
    assert torch.equal(synthetic_mnist(500, seed=0)[0], x)
    assert not torch.equal(synthetic_mnist(500, seed=1)[0], x)
    means = torch.stack([x[y == c].float().mean(0) for c in range(10)]).flatten(1)
    dists = torch.cdist(means, means) + torch.eye(10) * 1e9
    assert float(dists.min()) > 100  # the classes look different
    assert synthetic_mnist(0)[0].shape == (0, 28, 28)


# ------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no local MNIST copy at {SHARED_MNIST}")
def test_shared_mnist_copy(monkeypatch):
    digests = verify_sha256(SHARED_MNIST)
    assert digests == data.MNIST_SHA256 and set(digests) == set(MNIST_FILES)
    monkeypatch.setenv(MNIST_ENV_VAR, str(SHARED_MNIST))
    x, y = load_mnist(split="test", download=False)
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(x.max()) == 255 and int(x.min()) == 0


# ------------------------------------------------------------------------ streaming, bounds, counts
def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def test_gzip_bomb_is_not_decompressed(tmp_path):
    """A .gz whose header declares 1000 images but that expands to 256 MiB: refused after
    reading the declared 784 kB (+1 byte), with memory bounded by the header's claim."""
    import tracemalloc
    import zlib

    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip container
    with open(path, "wb") as f:
        f.write(comp.compress(idx_bytes(2051, (1000, 28, 28), b"")))
        zeros = bytes(16 << 20)
        for _ in range(16):
            f.write(comp.compress(zeros))
        f.write(comp.flush())
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(MNISTFormatError, match="trailing data: the header declares 1000 images"):
            data.read_idx_images(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the declared 784 kB and gzip's buffers, not 256 MiB


def test_header_claiming_too_much_is_refused_before_reading(tmp_path):
    path = _write(tmp_path / TRAIN_IMAGES, idx_bytes(2051, (2**31, 28, 28), b""))
    with pytest.raises(MNISTFormatError, match=r"declares 2147483648 images; an MNIST file holds at most"):
        data.read_idx_images(path)


@pytest.mark.parametrize(
    "split, count, phrase",
    [
        ("train", 10000, "count of MNIST's test set: are the train and test files swapped?"),
        ("test", 60000, "count of MNIST's train set: are the test and train files swapped?"),
        ("train", 50000, "MNIST's train set has 60000 (not MNIST's file)"),
        ("test", 20000, "MNIST's test set has 10000 (not MNIST's file)"),
    ],
)
def test_known_counts_are_checked_from_the_header(tmp_path, monkeypatch, split, count, phrase):
    # Header-only files: the count is refused before the (absent) payload is read.
    images, labels = data.SPLITS[split]
    _write(tmp_path / f"{images}.gz", idx_bytes(2051, (count, 28, 28), b""))
    _write(tmp_path / f"{labels}.gz", idx_bytes(2049, (count,), b""))
    with pytest.raises(MNISTFormatError, match=re.escape(phrase)) as info:
        read_mnist_split(tmp_path, split)
    assert str(tmp_path / f"{images}.gz") in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv(data.ANY_COUNT_ENV, "1")  # the explicit allow: the count passes, the file is short
    with pytest.raises(MNISTFormatError, match="truncated"):
        read_mnist_split(tmp_path, split)


def test_small_generated_sets_and_official_counts_pass(tmp_path):
    make_dir(tmp_path, n_train=9, n_test=9)
    assert len(read_mnist_split(tmp_path, "train")[0]) == 9
    check = idx._count_check("train")
    check(tmp_path, 60000)  # MNIST's own count
    check(tmp_path, idx.SMALL_SET - 1)


def test_unreadable_data_directory_is_one_line(tmp_path, monkeypatch):
    import errno

    d = make_dir(tmp_path / "d")

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(MNISTNotFoundError, match=r"cannot be looked up \(Permission denied \(EACCES") as info:
        load_mnist(d)
    assert str(d) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_data_file_is_one_line(tmp_path, monkeypatch):
    import errno

    d = make_dir(tmp_path / "d")

    def denied(path, mode="rb"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(idx.gzip, "open", denied)
    with pytest.raises(MNISTNotFoundError, match=r"cannot be read \(Permission denied") as info:
        read_mnist_split(d, "train")
    assert f"{TRAIN_IMAGES}.gz" in str(info.value)
