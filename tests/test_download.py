"""Tests of problayers.vae.download against a local HTTP server on 127.0.0.1 (no other network access)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from problayers.vae import download
from problayers.vae.data import (
    MNIST_ENV_VAR,
    MNIST_FILES,
    MNISTDownloadError,
    MNISTError,
    load_mnist,
    resolve_mnist_dir,
    synthetic_mnist,
    write_mnist_split,
)
from problayers.vae.download import download_mnist


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/truncated/"):  # promise more bytes than are sent, then hang up
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + bytes(998))
            return
        super().do_GET()

    def log_message(self, format, *args):  # keep test output quiet
        pass


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv(MNIST_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(download, "MNIST_MIRRORS", ())
    for var in ("no_proxy", "NO_PROXY"):  # never send 127.0.0.1 requests through a configured proxy
        monkeypatch.setenv(var, "*")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, MD5s) of a server whose /mnist/ holds small generated MNIST .gz files."""
    root = tmp_path_factory.mktemp("www")
    write_mnist_split(root / "mnist", *synthetic_mnist(20, seed=0), "train")
    write_mnist_split(root / "mnist", *synthetic_mnist(10, seed=1), "test")
    write_mnist_split(root / "wrong", *synthetic_mnist(3, seed=2), "train")
    write_mnist_split(root / "wrong", *synthetic_mnist(3, seed=3), "test")
    md5s = {
        name: hashlib.md5((root / "mnist" / f"{name}.gz").read_bytes()).hexdigest() for name in MNIST_FILES
    }
    server = http.server.HTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", md5s
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _refused_url() -> str:
    """A URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _no_partial_files(directory: Path) -> bool:
    return not directory.exists() or not any(p.name.endswith(".part") for p in directory.iterdir())


def test_download_into_default_cache_and_parse(served, tmp_path):
    base, md5s = served
    cache = resolve_mnist_dir(mirrors=[f"{base}/mnist/"], md5s=md5s, timeout=10)
    assert cache == tmp_path / "xdg-cache/problayers/mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)
    x, y = load_mnist(split="train", download=False)
    assert x.shape == (20, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, synthetic_mnist(20, seed=0)[0]) and torch.equal(y, synthetic_mnist(20, seed=0)[1])
    # the cache is complete now: no further download (an unusable mirror does not matter)
    assert load_mnist(split="test", mirrors=[_refused_url()], md5s=md5s)[0].shape == (10, 28, 28)


def test_only_missing_files_downloaded(served, tmp_path):
    base, md5s = served
    cache = tmp_path / "cache"
    write_mnist_split(cache, *synthetic_mnist(5, seed=9), "train", gz=False)  # raw train files present
    resolve_mnist_dir(cache_dir=cache, mirrors=[base + "/mnist"], md5s=md5s, timeout=10)
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert (cache / "t10k-images-idx3-ubyte.gz").is_file()
    assert load_mnist(split="train", cache_dir=cache, download=False)[0].shape == (5, 28, 28)


def test_bad_checksum_leaves_nothing(served, tmp_path):
    base, md5s = served
    wrong = dict(md5s, **{"t10k-labels-idx1-ubyte": "0" * 32})
    cache = tmp_path / "cache"
    with pytest.raises(MNISTDownloadError) as info:
        load_mnist(split="test", cache_dir=cache, mirrors=[f"{base}/mnist/"], md5s=wrong, timeout=10)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "MD5 mismatch" in msg and "0" * 32 in msg
    assert "\n" not in msg and "--data-dir" in msg and MNIST_ENV_VAR in msg
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists() and _no_partial_files(cache)
    assert isinstance(info.value, MNISTError) and isinstance(info.value, OSError)


@pytest.mark.parametrize("first", ["404", "refused", "truncated", "bad checksum"])
def test_first_mirror_fails_second_used(served, tmp_path, first):
    base, md5s = served
    bad = {
        "404": f"{base}/nothing-here/",
        "refused": _refused_url(),
        "truncated": f"{base}/truncated/",
        "bad checksum": f"{base}/wrong/",
    }[first]  # /wrong/ serves other files under the same names
    out = download_mnist(tmp_path / "dl", mirrors=[bad, f"{base}/mnist/"], md5s=md5s, timeout=10)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)
    for name in MNIST_FILES:
        assert hashlib.md5((out / f"{name}.gz").read_bytes()).hexdigest() == md5s[name]
    assert torch.equal(load_mnist(out, "test")[1], synthetic_mnist(10, seed=1)[1])


def test_all_mirrors_fail(served, tmp_path):
    base, md5s = served
    dest = tmp_path / "dl"
    with pytest.raises(MNISTDownloadError) as info:
        download_mnist(
            dest,
            mirrors=[f"{base}/nothing-here/", _refused_url(), f"{base}/truncated/"],
            md5s=md5s,
            timeout=10,
        )
    msg = str(info.value)
    assert "HTTP 404" in msg and "refused" in msg.lower() and "truncated transfer" in msg
    assert msg.count("http://") == 3
    assert "\n" not in msg and "--data-dir" in msg and MNIST_ENV_VAR in msg
    assert list(dest.iterdir()) == []


def test_missing_md5_refused(tmp_path):
    with pytest.raises(ValueError, match="no checksum for t10k-images-idx3-ubyte"):
        download_mnist(tmp_path, ["t10k-images-idx3-ubyte"], mirrors=["http://127.0.0.1:1/"], md5s={})


def test_stale_partial_downloads_are_removed(served, tmp_path):
    import os
    import time

    base, md5s = served
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".t10k-images-idx3-ubyte.gz.abc123.part"
    fresh = cache / ".train-labels-idx1-ubyte.gz.x.part"
    stale.write_bytes(b"killed mid-transfer")
    fresh.write_bytes(b"another download, in progress")
    old = time.time() - 2 * download.STALE_PART_S
    os.utime(stale, (old, old))
    resolve_mnist_dir(cache_dir=cache, mirrors=[base + "/mnist"], md5s=md5s, timeout=10)
    assert not stale.exists() and fresh.exists()
