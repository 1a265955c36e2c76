"""Atomic files (disk full, read-only, in the way, directory fsync, stale temporaries) and safe
checkpoint loading (crafted pickles, garbage, wrong structure)."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
import warnings

import pytest
import torch

from problayers.train import checkpoint
from problayers.train.checkpoint import (
    CheckpointError,
    atomic_write,
    check_finite,
    check_state_dict,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    write_json,
)
from problayers.train.errors import Terminated, WriteError, interrupts_deferred, sigterm_raises


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_the_temp_file_is_written_beside_the_target(tmp_path):
    # os.replace is atomic only within one filesystem, and remove_stale_temps looks beside the
    # target: the temp must be in the target's own directory, under a name that marks it and its writer.
    seen = []

    def write(f):
        seen.extend(p.name for p in (tmp_path / "sub").iterdir())
        f.write(b"x")

    atomic_write(tmp_path / "sub" / "f.bin", write)
    assert len(seen) == 1 and seen[0].startswith(f".f.bin.p{os.getpid()}.") and seen[0].endswith(".tmp"), seen
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.bin"]


def test_checkpoint_round_trip(tmp_path):
    state = {"w": torch.arange(3.0), "epoch": 2, "nested": {"rng": torch.get_rng_state()}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["epoch"] == 2
    write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").read_text().strip().startswith("{")


class _DiskFull:
    """A patched writer: the file accepts ``room`` bytes, then fails with ENOSPC."""

    def __init__(self, room):
        self.room = room

    def __call__(self, real_fdopen):
        outer = self

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            real_write = f.write

            class Full:
                def write(self, data):
                    if len(data) > outer.room:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    outer.room -= len(data)
                    return real_write(data)

                def __getattr__(self, name):
                    return getattr(f, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    f.close()

            return Full()

        return fdopen


@pytest.mark.parametrize(
    "writer",
    [
        lambda p: save_checkpoint(p, {"w": torch.zeros(10_000)}),  # torch.save hides the OSError
        lambda p: write_json(p, {"x": list(range(10_000))}),
        lambda p: atomic_write(p, lambda f: f.write(b"x" * 100_000)),
    ],
    ids=["checkpoint", "json", "bytes"],
)
def test_disk_full_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    monkeypatch.setattr(checkpoint.os, "fdopen", _DiskFull(room=500)(os.fdopen))
    with pytest.raises(WriteError) as info:
        writer(path)
    msg = str(info.value)
    assert str(path) in msg and "No space left on device (ENOSPC)" in msg and "\n" not in msg
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_pictures_on_a_full_disk(tmp_path, monkeypatch):
    from problayers.vae.pictures import image_grid

    monkeypatch.setattr(checkpoint.os, "fdopen", _DiskFull(room=10)(os.fdopen))
    with pytest.raises(WriteError, match="No space left on device"):
        image_grid([torch.rand(3, 1, 28, 28)], tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []


def test_fsync_error_is_a_write_error(tmp_path, monkeypatch):
    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", failing)
    with pytest.raises(WriteError, match=r"f\.bin: cannot write: Input/output error \(EIO\)"):
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "where, phrase",
    [
        ("file/sub/x.json", "(?i)not a directory"),  # under a file
        ("adir", "it is a directory"),
        ("/dev/null", "not a regular file"),
    ],
)
def test_targets_in_the_way(tmp_path, where, phrase):
    (tmp_path / "file").write_text("")
    (tmp_path / "adir").mkdir()
    target = where if where.startswith("/") else tmp_path / where
    with pytest.raises(WriteError, match=phrase) as info:
        write_json(target, {})
    assert str(target) in str(info.value)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # untouched


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_or_forbidden_directory(tmp_path, monkeypatch, code):
    def new_temp(path):
        raise OSError(code, os.strerror(code), str(tmp_path / ".x.tmp"))

    monkeypatch.setattr(checkpoint, "_new_temp", new_temp)
    with pytest.raises(WriteError) as info:
        write_json(tmp_path / "x.json", {})
    assert str(tmp_path / "x.json") in str(info.value) and errno.errorcode[code] in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_real_read_only_directory(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            write_json(tmp_path / "x.json", {})
    finally:
        tmp_path.chmod(0o755)


def test_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(a, b):
        events.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert events == ["file", "replace", "dir"]


DEAD_PID = 2**22 + 1  # above Linux's largest pid_max: no process has it


def test_stale_temporaries_are_removed(tmp_path):
    writing = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        keep = [
            tmp_path / "checkpoint.pt",
            tmp_path / ".hidden",
            tmp_path / "x.tmp",
            tmp_path / ".notes.abcdefgh.tmp",  # a user's file of mkstemp's shape: no writer pid
            tmp_path / f".eval.json.p{writing.pid}.a1b2c3d4.tmp",  # an evaluate still writing
            tmp_path / f".sample.png.p{os.getpid()}.a1b2c3d4.tmp",  # this process's own
        ]
        for p in keep:
            p.write_bytes(b"")
        stale = [
            tmp_path / f".checkpoint.pt.p{DEAD_PID}.a1b2_c3d.tmp",
            # this pid's before this process started (a restarted container reuses its pids)
            tmp_path / f".metrics.jsonl.p{os.getpid()}.zzzzzzzz.tmp",
            tmp_path / ".config.json.abcdefgh.tmp",  # an earlier version's, of a run's own file
        ]
        for p in stale:
            p.write_bytes(b"partial")
        day_ago = time.time() - 86400
        os.utime(stale[1], (day_ago, day_ago))
        assert sorted(remove_stale_temps(tmp_path, legacy_names=["config.json"])) == sorted(stale)
        assert sorted(tmp_path.iterdir()) == sorted(keep)
    finally:
        writing.kill()
        writing.wait()
    assert remove_stale_temps(tmp_path) == [keep[4]]  # its writer is gone now


def test_sigterm_during_a_write_leaves_no_temp(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.zeros(3)})

    def killed(f):
        f.write(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b"never")

    with pytest.raises(Terminated), sigterm_raises():
        atomic_write(path, killed)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(3))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_an_interrupt_in_a_critical_section_is_raised_after_it(tmp_path, signum, raised):
    # e.g. a checkpoint and its metrics.jsonl: both or neither (a Ctrl-C between them left a run's
    # last epoch out of its metrics for good; reliability audit)
    done = []
    with pytest.raises(KeyboardInterrupt) as exc, sigterm_raises():
        with interrupts_deferred():
            os.kill(os.getpid(), signum)
            write_json(tmp_path / "a.json", {})
            done.append("a")
            write_json(tmp_path / "b.json", {})
            done.append("b")
        done.append("after the section")
    assert exc.type is raised
    assert done == ["a", "b"] and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with sigterm_raises(), interrupts_deferred():  # no signal, nothing raised
        pass


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_load_runs_no_code_and_gives_no_unsafe_advice(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"x": Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "not a problayers checkpoint" in msg and "refused to load code" in msg and str(path) in msg
    assert "weights_only" not in msg and "\n" not in msg
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"not a checkpoint", "corrupt or truncated"),
        (b"", "corrupt or truncated"),
        (None, "got a list"),  # a list saved instead of a dict
        ("tensor", "got a Tensor"),
    ],
)
def test_garbage_and_wrong_types(tmp_path, content, phrase):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save([torch.zeros(2)], path)
    elif content == "tensor":
        torch.save(torch.zeros(2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=phrase) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "not a problayers checkpoint" in str(info.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_state_dict_checks():
    module = torch.nn.Linear(2, 3)
    good = module.state_dict()
    check_state_dict(module, good, "model", "c.pt")
    cases = {
        "missing 'bias'": {"weight": good["weight"]},
        "unexpected 'extra'": {**good, "extra": torch.zeros(1)},
        r"'weight': expected shape \(3, 2\), got \(2, 3\)": {**good, "weight": torch.zeros(2, 3)},
        "expected a tensor, got a list": {**good, "bias": [0.0, 0.0, 0.0]},
        "must be a dict of tensors, got a list": [good["weight"]],
    }
    for phrase, state in cases.items():
        with pytest.raises(CheckpointError, match=phrase):
            check_state_dict(module, state, "model", "c.pt")
    with pytest.raises(CheckpointError, match=r"'weight' holds 1 non-finite"):
        check_finite({**good, "weight": torch.tensor([1.0, float("nan")])}, "weight", "c.pt")
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        with pytest.raises(CheckpointError, match=r"'weight' holds 1 non-finite"):
            check_finite({"weight": torch.tensor([float("inf"), 1.0], dtype=dtype)}, "weight", "c.pt")


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "p.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_writing_never_sets_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask (to chmod mkstemp's 0600 file) set it to 0 for a moment: a file another
    thread created then was world-writable (global-state audit). The OS applies it now."""
    real, calls = os.umask, []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    old = real(0o077)
    try:
        path = atomic_write(tmp_path / "p.bin", lambda f: f.write(b"x"))
    finally:
        real(old)
    assert calls == [] and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["p.bin"]


def test_a_sparse_tensor_is_checked_as_a_dense_one():
    """A model's sparse buffer is loaded (its layout is the model's), so its values and indices
    are checked: NaN got in, and indices past its size (re-review)."""
    from problayers.train.checkpoint import check_finite

    good = torch.sparse_coo_tensor([[0, 1], [0, 1]], [1.0, 2.0], (3, 3), check_invariants=True)
    check_finite({"adj": good}, "weight", "ckpt")
    nan = torch.sparse_coo_tensor([[0, 1], [0, 1]], [float("nan"), 2.0], (3, 3), check_invariants=True)
    with pytest.raises(CheckpointError, match=r"^ckpt: weight 'adj' holds 1 non-finite value"):
        check_finite({"adj": nan}, "weight", "ckpt")
    outside = torch.sparse_coo_tensor([[0, 10**6], [0, 1]], [1.0, 2.0], (3, 3), check_invariants=False)
    with pytest.raises(CheckpointError, match=r"^ckpt: weight 'adj': not a valid sparse tensor"):
        check_finite({"adj": outside}, "weight", "ckpt")
    with warnings.catch_warnings():  # torch's, once a process: CSR support is in beta
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.eye(3).to_sparse_csr()
    with pytest.raises(CheckpointError, match=r"expected a dense or sparse COO tensor, got torch.sparse_csr"):
        check_finite({"adj": csr}, "weight", "ckpt")
