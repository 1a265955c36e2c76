"""glibc's malloc thresholds (problayers.train.allocator): freed memory reused, the user's settings kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from problayers.train import allocator
from problayers.train.allocator import retain_freed_memory

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# Minor page faults of 20 allocations of a 16 MB tensor, before and after the call (a fresh process:
# the setting is process-wide).
_FAULTS = """
import resource, torch
from problayers.train.allocator import retain_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        x = torch.ones(4_000_000)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first = faults()
setting = retain_freed_memory()
print(first, faults(), setting.applied)
"""


# Everything through which the environment may decide the allocator (then the call leaves it).
DECIDING = (*allocator._ENV_SETTINGS, "GLIBC_TUNABLES", "LD_PRELOAD")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DECIDING}


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_tensors_are_reused_without_new_page_faults():
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True, env=_clean_env()
    ).stdout.split()
    before, after, applied = int(out[0]), int(out[1]), out[2]
    assert applied == "True"
    # A 16 MB tensor is ~3900 pages: glibc's default maps (part of) it afresh each time; kept: none.
    assert before > 1000 and after < before / 10, (before, after)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_applies_and_says_what(monkeypatch):
    for name in DECIDING:
        monkeypatch.delenv(name, raising=False)
    setting = retain_freed_memory()
    assert setting.applied and setting.reason.startswith("glibc keeps freed memory")
    assert setting.record() == {"applied": True, "reason": setting.reason}
    assert retain_freed_memory().applied  # idempotent


@pytest.mark.parametrize(
    "env, named",
    [
        ({"MALLOC_TRIM_THRESHOLD_": "1000"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
    ],
)
def test_leaves_what_the_environment_decides(monkeypatch, env, named):
    monkeypatch.setattr(sys, "platform", "linux")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    setting = retain_freed_memory()
    assert not setting.applied and setting.reason.startswith("unchanged: ") and named in setting.reason


def test_elsewhere_unchanged(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    setting = retain_freed_memory()
    assert not setting.applied and setting.reason == "unchanged: darwin is not glibc"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mmap_threshold": 0}, r"^mmap_threshold: expected an int in \[1, 33554432\] bytes, got 0$"),
        ({"mmap_threshold": 64 << 20}, r"^mmap_threshold: expected an int in \[1, 33554432\] bytes"),
        ({"trim_threshold": 1.5}, r"^trim_threshold: expected an int >= 1 bytes, got 1.5$"),
        ({"trim_threshold": True}, r"^trim_threshold: expected an int >= 1 bytes, got True$"),
    ],
)
def test_bad_thresholds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retain_freed_memory(**kwargs)


def _unnamed(name):
    raise ValueError(name)  # what os.confstr does for a name the C library does not know


@pytest.mark.parametrize("confstr", [lambda name: "musl", _unnamed])
def test_another_c_library_unchanged(monkeypatch, confstr):
    for name in DECIDING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "confstr", confstr)
    setting = retain_freed_memory()
    assert not setting.applied and setting.reason == "unchanged: the C library is not glibc"


_RETAIN_FIRST = """
import resource, torch
from problayers.train.allocator import retain_freed_memory
assert retain_freed_memory().applied
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(4_000_000)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator")
def test_retained_from_the_start_no_block_is_mapped_afresh():
    # Set before any large allocation (glibc's dynamic threshold not yet raised by a free): the
    # 20 allocations of 16 MB must not each fault their ~3900 pages in.
    faults = int(
        subprocess.run(
            [sys.executable, "-c", _RETAIN_FIRST],
            capture_output=True,
            text=True,
            check=True,
            env=_clean_env(),
        ).stdout
    )
    assert faults < 5 * 3900, faults


@pytest.mark.parametrize(
    "name, value, named",
    [
        ("MALLOC_MMAP_THRESHOLD_", "4096", "MALLOC_MMAP_THRESHOLD_"),
        ("LD_PRELOAD", "/usr/lib/libtcmalloc.so.4", "tcmalloc"),
        ("LD_PRELOAD", "/usr/lib/libmimalloc.so", "mimalloc"),
    ],
)
def test_each_environment_setting_is_left_alone(monkeypatch, name, value, named):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv(name, value)
    setting = retain_freed_memory()
    assert not setting.applied and named in setting.reason
