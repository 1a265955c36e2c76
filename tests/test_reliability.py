"""The promises of docs/reliability.md: one-line errors for malformed runs, the run lock,
SIGTERM, stale temporaries, resume rules, disk-full runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from problayers.cli import main
from problayers.train import checkpoint
from problayers.vae.runlock import LOCK, RunLock

REPO = Path(__file__).resolve().parents[1]
TINY = ["--latent-size", "4", "--base-depth", "4", "--batch-size", "32", "--no-progress", "--no-fast"]
EVAL = ["--iwae-samples", "0", "--test-subset", "10", "--no-progress"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _cli(*argv):
    return [sys.executable, "-m", "problayers", *argv]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(out), "--epochs", "2", "--synthetic", "96", *TINY]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run (tests may damage it)."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def fails(argv, capsys, code=2):
    """Run the CLI, expect exit ``code`` and one line on stderr; return that line."""
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------- malformed checkpoints
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _edit(key=None, value=None, drop=None, meta_epochs=None):
    def edit(state):
        if drop:
            state.pop(drop)
        if key:
            state[key] = value(state) if callable(value) else value
        if meta_epochs is not None:
            meta = json.loads(state["meta"])
            meta["config"]["epochs"] = meta_epochs
            state["meta"] = json.dumps(meta)
        return state

    return edit


def _first(state):
    return next(iter(state["model"]))


CHECKPOINTS = {
    "wrong shape": (
        _edit("model", lambda s: {**s["model"], _first(s): torch.zeros(3)}),
        "expected shape",
    ),
    "extra key": (_edit("model", lambda s: {**s["model"], "extra.weight": torch.zeros(1)}), "unexpected"),
    "missing key": (_edit("model", lambda s: dict(list(s["model"].items())[1:])), "missing"),
    "state is a list": (lambda s: [s["model"]], "got a list"),
    "state is a tensor": (lambda s: torch.zeros(2), "got a Tensor"),
    "no model": (_edit(drop="model"), "missing 'model'"),
    "no meta": (_edit(drop="meta"), "missing 'meta'"),
    "meta not JSON": (_edit("meta", "{oops"), "'meta': expected a JSON dict"),
    "NaN weights": (
        _edit("model", lambda s: {k: v * float("nan") for k, v in s["model"].items()}),
        "non-finite",
    ),
    # hostile-files audit: an 85 KB file whose expanded view the finite check made 37 GiB of;
    # complex weights, NaN parts and all, cast to real by load_state_dict
    "expanded view": (
        _edit("model", lambda s: {**s["model"], "evil": torch.zeros(1).expand(100_000, 100_000)}),
        "'evil': expected a dense tensor, got (100000, 100000) over 4 bytes of storage",
    ),
    "complex weights": (
        _edit("model", lambda s: {k: v * complex(float("nan"), 0.0) for k, v in s["model"].items()}),
        "non-finite",
    ),
    "integer weights": (
        _edit("model", lambda s: {**s["model"], _first(s): s["model"][_first(s)].long()}),
        "expected a floating tensor (torch.float32, torch.strided), got torch.int64 (torch.strided)",
    ),
    "epoch -5": (_edit("epoch", -5), "epoch: expected an int in 0..2"),
    "epoch as text": (_edit("epoch", "2"), "epoch: expected an int"),
    "epochs 10**30": (_edit(meta_epochs=10**30), "epochs: expected an int in 1..100000"),
    "history short": (_edit("history", "[]"), "holds 0 epochs of history"),
}
RESUME_ONLY = {
    "bad RNG state": (
        _edit("rng_cpu", torch.zeros(7, dtype=torch.uint8)),
        "rng_cpu: expected a CPU random state",
    ),
    "no RNG state": (_edit(drop="rng_cpu"), "missing 'rng_cpu'"),
    "optimizer shapes": (
        _edit(
            "optimizer",
            lambda s: {
                **s["optimizer"],
                "state": {
                    i: {**e, "exp_avg": torch.zeros(1, 1, 1, 1, 1)}
                    for i, e in s["optimizer"]["state"].items()
                },
            },
        ),
        "optimizer: exp_avg of parameter 0",
    ),
    "optimizer shapes transposed": (  # as many dims as the parameter, another shape
        _edit(
            "optimizer",
            lambda s: {
                **s["optimizer"],
                "state": {
                    i: {**e, "exp_avg": e["exp_avg"].reshape(e["exp_avg"].shape[::-1])}
                    for i, e in s["optimizer"]["state"].items()
                },
            },
        ),
        "optimizer: exp_avg of parameter 0: expected shape",
    ),
    "optimizer a list": (_edit("optimizer", []), "optimizer: expected an optimizer state dict"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS) + sorted(RESUME_ONLY))
def test_malformed_checkpoint_is_one_line(run, case, capsys):
    edit, phrase = {**CHECKPOINTS, **RESUME_ONLY}[case]
    path = run / "checkpoint.pt"
    torch.save(edit(torch.load(path, weights_only=True)), path)
    before = path.read_bytes()
    commands = [["train", "--resume", run]]
    if case in CHECKPOINTS:
        commands += [["evaluate", run, *EVAL], ["sample", run, "--out", run.parent / "pics"]]
    for argv in commands:
        err = fails(argv, capsys)
        assert err.startswith("problayers: error:") and phrase in err and str(path) in err, err
    assert path.read_bytes() == before and not (run / LOCK).exists()
    assert not (run / "eval.json").exists() and not (run.parent / "pics").exists()


def test_a_data_parallel_checkpoints_prefixed_weights_are_loaded_by_every_command(run, tmp_path):
    """Weights saved under DDP's ``module.`` prefix: resume strips it, and evaluate and sample
    must too (diff review: the new check stripped a copy, then loaded the prefixed dict)."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model"] = {f"module.{k}": v for k, v in state["model"].items()}
    torch.save(state, run / "checkpoint.pt")
    assert main(["evaluate", str(run), *EVAL]) == 0
    assert main(["sample", str(run), "--out", str(tmp_path / "pics")]) == 0


def test_a_crafted_config_is_checked_against_the_weights_before_the_model_is_built(run, tmp_path, capsys):
    """config.json and the checkpoint's record both asking for latent_size 20000 built that
    model (terabytes asked for) before the weights were compared (hostile-files audit)."""
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["latent_size"] = 20000
    (run / "config.json").write_text(json.dumps(cfg))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    meta = json.loads(state["meta"])
    meta["config"]["model"]["latent_size"] = 20000
    state["meta"] = json.dumps(meta)
    torch.save(state, run / "checkpoint.pt")
    for argv in (
        ["evaluate", run, *EVAL],
        ["sample", run, "--out", tmp_path / "pics"],
        ["train", "--resume", run],
    ):
        err = fails(argv, capsys)
        assert "checkpoint.pt: model" in err and "expected shape" in err, err


@pytest.mark.parametrize("content", ["garbage", "crafted", "empty", "truncated"])
def test_foreign_checkpoint_files(run, content, capsys):
    path = run / "checkpoint.pt"
    if content == "crafted":
        with open(path, "wb") as f:
            torch.save({"model": Evil()}, f, pickle_module=pickle)
    else:
        data = {"garbage": b"\x80\x02not torch", "empty": b"", "truncated": path.read_bytes()[:2000]}
        path.write_bytes(data[content])
    for argv in (["evaluate", run, *EVAL], ["train", "--resume", run]):
        err = fails(argv, capsys)
        assert "not a problayers checkpoint" in err and "weights_only" not in err
        if content == "crafted":
            assert "refused to load code" in err and ("os.system" in err or "posix.system" in err)


CONFIGS = {
    "unknown key": (
        '{"model": {}, "epochs": 2, "batch_size": 32, "lr": 0.001, "seed": 0, "x": 1}',
        "unknown key",
    ),
    "null": ("null", "got null"),
    "list": ("[1, 2]", "got list"),
    "empty object": ("{}", "missing key(s) ['model', 'epochs', 'batch_size', 'lr', 'seed']"),
    "model as a string": (
        '{"model": "seed", "epochs": 2, "batch_size": 32, "lr": 0.001, "seed": 0}',
        "model: expected an object",
    ),
    "unknown model key": (
        '{"model": {"depth": 3}, "epochs": 2, "batch_size": 32, "lr": 0.001, "seed": 0}',
        "model: unknown key",
    ),
    "not JSON": ("{epochs: 2", "not valid JSON"),
    "epochs 10**30": (None, "epochs: expected at most 100000"),
    "epochs null": (None, "epochs: expected a positive int, got None"),
    "not UTF-8": (b"\xff\xfe", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_malformed_config_is_one_line(run, case, capsys):
    text, phrase = CONFIGS[case]
    path = run / "config.json"
    if text is None:
        cfg = json.loads(path.read_text())
        cfg["epochs"] = 10**30 if "30" in case else None
        text = json.dumps(cfg)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for argv in (["evaluate", run, *EVAL], ["sample", run], ["train", "--resume", run]):
        err = fails(argv, capsys)
        assert phrase in err and str(path) in err, err


def test_debug_shows_the_traceback(run, monkeypatch, capsys):
    (run / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="got list"):
        main(["evaluate", str(run), "--debug"])
    monkeypatch.setenv("PROBLAYERS_DEBUG", "1")
    with pytest.raises(ValueError, match="got list"):
        main(["evaluate", str(run)])


def test_internal_errors_are_one_line_too(monkeypatch, capsys, tmp_path):
    import problayers.vae.experiment

    def broken(*args, **kwargs):
        raise TypeError("something\nunforeseen")

    monkeypatch.setattr(problayers.vae.experiment, "load_run", broken)
    err = fails(["evaluate", tmp_path], capsys, code=1)
    assert "internal error: TypeError: something unforeseen" in err and "PROBLAYERS_DEBUG=1" in err


def test_out_of_memory_is_one_line_naming_the_sizes(tmp_path, monkeypatch, capsys):
    """A size too large for memory (the CPU allocator's RuntimeError, as torch words it; raised
    here by a patched model builder: a real 300 GiB request could be overcommitted and end in
    the OOM killer) is status 1 and one line naming the size options; no run directory is left."""
    import problayers.vae.experiment

    def too_big(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 313528000000 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(problayers.vae.experiment, "build_model", too_big)
    out = tmp_path / "huge"
    err = fails(["train", "--out", out, "--model", "mlp", "--synthetic", "64", *TINY[4:]], capsys, code=1)
    assert err.startswith("problayers: error: out of memory (292 GiB asked for at once)")
    assert "--hidden-size" in err and not out.exists()


# ------------------------------------------------------------------------- outputs and OS faults
def test_disk_full_while_training_is_one_line(tmp_path, monkeypatch, capsys):
    from test_checkpoint import _DiskFull

    monkeypatch.setattr(checkpoint.os, "fdopen", _DiskFull(room=20_000)(os.fdopen))  # lock, config fit
    out = tmp_path / "run"
    err = fails(["train", "--out", out, "--epochs", "1", "--synthetic", "64", *TINY], capsys, code=1)
    assert f"{out / 'checkpoint.pt'}: cannot write: No space left on device (ENOSPC)" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no temp, no lock, no checkpoint


def test_disk_full_while_evaluating(run, monkeypatch, capsys):
    from test_checkpoint import _DiskFull

    monkeypatch.setattr(checkpoint.os, "fdopen", _DiskFull(room=10)(os.fdopen))
    err = fails(["evaluate", run, *EVAL, "--out", run / "e.json"], capsys, code=1)
    assert f"{run / 'e.json'}: cannot write: No space left on device" in err
    assert not list(run.glob(".*.tmp")) and not (run / "e.json").exists()


def test_disk_full_while_exporting_leaves_what_was_there(trained, tmp_path, monkeypatch, capsys):
    # It left an empty OUT_DIR; with the config written first, a failed --force would have left
    # a new config beside the old weights (reliability audit).
    from problayers.vae import load_pretrained
    from test_checkpoint import _DiskFull

    old = tmp_path / "old"
    assert main(["export", str(trained), str(old), "--online-weights"]) == 0
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(checkpoint.os, "fdopen", _DiskFull(room=5_000)(os.fdopen))  # the config fits
    new = tmp_path / "new"
    for argv in (["export", trained, new], ["export", trained, old, "--force"]):
        assert "No space left on device (ENOSPC)" in fails(argv, capsys, code=1)
    assert not new.exists()
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    monkeypatch.undo()
    load_pretrained(old)
    # The new weights in place and only the directory's fsync failing: the new export stands (a
    # rollback of the config then would have paired the old config with the new weights; review).
    from problayers.vae import save_pretrained
    from problayers.vae.experiment import load_run

    model, cfg, _ = load_run(trained, device="cpu")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an export of other weights, to be replaced
    save_pretrained(model, cfg.model, old, force=True)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    real, calls = checkpoint.fsync_dir, []

    def fsync_fails_after_the_weights(directory):
        calls.append(directory)
        if len(calls) == 2:  # the config's, then the weights'
            raise OSError(5, "Input/output error")
        real(directory)

    monkeypatch.setattr(checkpoint, "fsync_dir", fsync_fails_after_the_weights)
    assert "Input/output error" in fails(["export", trained, old, "--force"], capsys, code=1)
    monkeypatch.undo()
    assert (old / "model.safetensors").read_bytes() != before["model.safetensors"]
    load_pretrained(old)  # the pair is the new export's


def test_an_export_removes_what_a_killed_one_left(trained, tmp_path):
    out = tmp_path / "exp"
    assert main(["export", str(trained), str(out)]) == 0
    left = out / f".model.safetensors.p{2**22 + 1}.abcdefgh.tmp"  # a SIGKILLed export's (re-audit)
    left.write_bytes(b"partial")
    assert main(["export", str(trained), str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_unwritable_run_directory(tmp_path, monkeypatch, capsys):
    import errno

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    out = tmp_path / "ro"
    err = fails(["train", "--out", out, "--synthetic", "64", *TINY], capsys, code=1)  # the environment
    assert f"run directory {out}: cannot write there (Read-only file system (EROFS))" in err


def test_disk_full_while_taking_the_lock_names_the_lock_file(tmp_path, monkeypatch, capsys):
    from problayers.vae import runlock
    from test_checkpoint import _DiskFull

    monkeypatch.setattr(runlock.os, "fdopen", _DiskFull(room=0)(os.fdopen))
    out = tmp_path / "full"
    err = fails(["train", "--out", out, "--synthetic", "64", *TINY], capsys, code=1)
    assert f"{out / LOCK}: cannot write: No space left on device (ENOSPC)" in err
    assert not (out / LOCK).exists()


def test_evaluate_checks_its_out_before_evaluating(run, monkeypatch, capsys):
    """A wrong --out is refused before the (possibly hour-long) evaluation, not after it."""
    import errno

    from problayers.vae import evaluation, rundir

    def never(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(evaluation, "evaluate", never)
    err = fails(["evaluate", run, *EVAL, "--out", "/dev/null"], capsys)
    assert "--out /dev/null: expected a file path, got an existing directory or device" in err
    err = fails(["evaluate", run, *EVAL, "--out", run / "config.json" / "e.json"], capsys)
    assert f"but {run / 'config.json'} is a file" in err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
    err = fails(["evaluate", run, *EVAL, "--out", tmp := run / "sub" / "e.json"], capsys, code=1)
    assert f"--out {tmp}: cannot write in {run}: Read-only file system (EROFS)" in err
    assert not (run / "sub").exists()


def test_evaluate_and_sample_default_outputs(run, capsys):
    names = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".json", ".jsonl")}
    assert main(["evaluate", str(run), *EVAL]) == 0
    assert (run / "eval.json").is_file()
    assert main(["sample", str(run), "--n", "3"]) == 0
    for name, data in names.items():
        assert (run / name).read_bytes() == data, name


# --------------------------------------------------------------------------------- the lock
HOLD = (
    "import sys; from problayers.vae.runlock import RunLock\n"
    "with RunLock(sys.argv[1]):\n"
    "    print('locked', flush=True); sys.stdin.read()\n"
)


def test_a_held_lock_refuses_a_second_train_or_resume(run, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = json.loads((run / LOCK).read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        for argv in (
            ["train", "--resume", str(run), "--epochs", "3"],
            ["train", "--out", str(run), "--synthetic", "64"],
        ):
            done = subprocess.run(
                _cli(*argv, "--no-progress"), env=_env(), capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 2, done.stderr
            err = done.stderr.strip()
            assert "\n" not in err and f"in use by process {holder.pid} on {socket.gethostname()}" in err
        assert json.loads((run / "config.json").read_text())["epochs"] == 2
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0 and not (run / LOCK).exists()


def test_two_trains_on_one_out(tmp_path):
    out = tmp_path / "same"
    argv = _cli("train", "--out", str(out), "--epochs", "1", "--synthetic", "64", *TINY)
    procs = [
        subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (err,) = [err for code, err in results if code == 2]
    assert "in use by process" in err or "already holds a run" in err
    assert not (out / LOCK).exists() and not list(out.glob(".*.tmp"))


def test_pid_alive_asks_windows_itself(monkeypatch):
    """On Windows ``os.kill(pid, 0)`` sends a Ctrl+C (signal 0 is CTRL_C_EVENT) or fails with
    EINVAL: the lock's owner is looked up with OpenProcess/GetExitCodeProcess (a stand-in for
    kernel32 here; portability audit)."""
    import ctypes

    exit_codes, errors, closed = {8: 259, 9: 0}, {7: 87, 10: 5}, []  # 259: STILL_ACTIVE

    class Kernel32:
        def OpenProcess(self, access, inherit, pid):  # (Windows' names)
            self.pid = pid
            return 0 if pid in errors else 1000 + pid

        def GetExitCodeProcess(self, handle, code):
            code._obj.value = exit_codes[handle - 1000]
            return 1

        def CloseHandle(self, handle):
            closed.append(handle)

    kernel32 = Kernel32()

    def no_kill(pid, sig):
        raise AssertionError(f"os.kill({pid}, {sig}) on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", no_kill)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: errors[kernel32.pid], raising=False)
    alive = {pid: checkpoint.pid_alive(pid) for pid in (7, 8, 9, 10, 2**32, 10**25)}
    # 10: access denied, so it exists; a crafted pid past a DWORD overflowed ctypes (diff review)
    assert alive == {7: False, 8: True, 9: False, 10: True, 2**32: False, 10**25: False}
    assert closed == [1008, 1009]


def test_stale_and_foreign_locks(run, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = run / LOCK
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": "1"}))
    with RunLock(run) as held:  # the owner is gone: taken over
        assert json.loads(lock.read_text()) == held.owner
    assert not lock.exists()
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()  # killed, not yet reaped: a zombie still answers kill(pid, 0)
    while "Z" not in Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]:
        time.sleep(0.01)
    lock.write_text(json.dumps({"pid": zombie.pid, "host": socket.gethostname()}))
    with RunLock(run):
        pass
    zombie.wait()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": "reused"}))
    with RunLock(run):  # this PID, but another process's start time: a reused PID
        pass
    # another host's lock, whose pid runs nothing here: its process cannot be judged from here
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname() + "-other"}))
    with pytest.raises(ValueError, match="in use"):
        RunLock(run).acquire()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "t"}))
    err = fails(["train", "--resume", run, "--epochs", "3"], capsys)
    assert "in use by process 1 on elsewhere" in err and f"remove {lock}" in err
    lock.write_text("")  # being written by another process right now
    with pytest.raises(ValueError, match="in use"):
        RunLock(run).acquire()
    old = time.time() - 3600
    os.utime(lock, (old, old))  # ... or left half-written an hour ago
    with RunLock(run):
        pass
    assert not lock.exists()


# -------------------------------------------------------------------- SIGTERM, temporaries
def test_sigterm_stops_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli("train", "--out", str(out), "--epochs", "1000", "--synthetic", "128", *TINY),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the next epoch (a step, an evaluation, a checkpoint write)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("problayers: terminated (SIGTERM)")
    assert not list(out.glob(".*")), list(out.glob(".*"))  # no temporary file, no lock
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 1 <= state["epoch"] < 1000 and len(json.loads(state["history"])) == state["epoch"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_finished_changes_nothing(signum):
    # A Ctrl-C or SIGTERM while Python and torch shut down, after the command's last line:
    # it ended a finished command silently with 130/143, or printed a traceback from an atexit
    # callback. The signal is sent from an atexit callback, i.e. in that window.
    code = (
        "import atexit, os, signal, problayers.cli as cli\n"
        "cli.main = lambda: 0\n"
        f"atexit.register(lambda: os.kill(os.getpid(), {int(signum)}))\n"
        "cli.entry_point()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_resume_removes_stale_temporaries(run):
    stale = [
        run / f".checkpoint.pt.p{2**22 + 1}.k1ll3d_x.tmp",
        run / f".metrics.jsonl.p{2**22 + 1}.abcdefgh.tmp",
    ]
    for p in stale:
        p.write_bytes(b"half a file")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert not any(p.exists() for p in stale) and not list(run.glob(".*"))


@pytest.mark.parametrize("damage", ["last epoch missing", "deleted", "garbled"])
def test_resume_rewrites_metrics_from_the_checkpoint(run, damage):
    # A SIGKILL between the last epoch's checkpoint and its metrics.jsonl left the file an epoch
    # short, and resuming the finished run never mended it (reliability audit).
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    if damage == "deleted":
        metrics.unlink()
    else:
        metrics.write_text(rows[0] + "\n" if damage == "last epoch missing" else "{not json\n")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # nothing left to train
    history = json.loads(torch.load(run / "checkpoint.pt", weights_only=True)["history"])
    assert metrics.read_text().splitlines() == rows and [json.loads(r) for r in rows] == history


def test_train_refuses_a_folder_of_other_files(tmp_path, capsys):
    # It replaced the folder's config.json and metrics.jsonl and deleted a .x.abcdefgh.tmp of the
    # user's (reliability audit).
    folder = tmp_path / "notes"
    folder.mkdir()
    mine = {"config.json": b'{"my": "settings"}', "metrics.jsonl": b"notes", ".notes.abcdefgh.tmp": b"keep"}
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    err = fails(["train", "--out", folder, "--epochs", "1", "--synthetic", "64", *TINY], capsys)
    assert err.startswith(
        f"problayers: error: --out: {folder} holds files that are not a run's (.notes.abcdefgh"
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == mine
    (folder / ".notes.abcdefgh.tmp").unlink()
    (folder / "metrics.jsonl").unlink()
    err = fails(["train", "--out", folder, "--epochs", "1", "--synthetic", "64", *TINY], capsys)
    assert str(folder / "config.json") in err  # a config.json that is not a run's
    assert (folder / "config.json").read_bytes() == mine["config.json"]
    # A refused folder is left as it was (its stale temporaries were removed first), a run stopped
    # before its first checkpoint has no metrics.jsonl, and its tensorboard/ only event files (re-audit).
    (folder / "config.json").unlink()
    for extra in ("data.csv", "metrics.jsonl", "tensorboard/mine.txt"):
        (folder / extra).parent.mkdir(exist_ok=True)
        (folder / extra).write_bytes(b"mine")
        stale = folder / f".{Path(extra).name}.p{2**22 + 1}.abcdefgh.tmp"
        stale.write_bytes(b"partial")
        err = fails(["train", "--out", folder, "--epochs", "1", "--synthetic", "64", *TINY], capsys)
        assert f"holds files that are not a run's ({extra}" in err
        assert stale.is_file() and (folder / extra).read_bytes() == b"mine"
        (folder / extra).unlink()
        stale.unlink()


def test_a_run_started_again_hides_what_its_killed_first_attempt_logged(tmp_path):
    pytest.importorskip("tensorboard")
    from problayers.train.loggers import TensorBoardLogger

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "64", *TINY]
    argv += ["--logger", "tensorboard"]
    assert main(argv) == 0
    for path in out.iterdir():  # killed within its first epoch: its config and its first events
        if path.is_file() and path.name != "config.json":
            path.unlink()
    ghost = TensorBoardLogger(out / "tensorboard")
    ghost.log_scalars(1, {"train/loss": 1e6})
    ghost.close()
    time.sleep(1.1)  # event files are read in the order of their names (seconds first)
    assert main(argv) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and all(e.value < 1e6 for e in acc.Scalars("train/loss"))


def test_a_linked_tensorboard_folder_is_refused(tmp_path, capsys):
    """A run directory from elsewhere whose tensorboard/ links out: resume wrote its event files
    through the link (hostile-files audit)."""
    pytest.importorskip("tensorboard")
    out, victim = tmp_path / "run", tmp_path / "victim"
    argv = ["train", "--out", out, "--epochs", "1", "--synthetic", "64", *TINY, "--logger", "tensorboard"]
    assert main([str(a) for a in argv]) == 0
    shutil.rmtree(out / "tensorboard")
    victim.mkdir()
    (out / "tensorboard").symlink_to(victim)
    err = fails(["train", "--resume", out, "--epochs", "2"], capsys)
    assert f"{out / 'tensorboard'}: is a link to {victim}" in err
    assert list(victim.iterdir()) == [] and not (out / LOCK).exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", LOCK])
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_a_run_file_that_is_not_a_regular_file_is_never_read(run, name, kind):
    """metrics.jsonl or the lock as a link to /dev/zero filled the memory, as a FIFO hung the
    resume forever (hostile-files audit). In a subprocess: a hang fails by its timeout."""
    path = run / name
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(kind)
    old = time.time() - 3600  # a lock not readable for an hour is taken over
    os.utime(path, (old, old), follow_symlinks=False)
    done = subprocess.run(
        [sys.executable, "-m", "problayers", "train", "--resume", str(run), "--epochs", "3", "--no-progress"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if name == LOCK:  # unreadable for an hour: taken over
        assert done.returncode == 0, done.stderr
    else:  # never written through either
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"{path}: cannot write: it exists and is not a regular file" in done.stderr


@pytest.mark.parametrize("where", ["config.json", "history", "metrics.jsonl"])
def test_json_nested_too_deeply_is_one_line(run, tmp_path, where, capsys):
    """JSON of 100,000 nested arrays is a RecursionError in Python's parser, which was an
    internal error instead of "not valid JSON" (hostile-files audit)."""
    nested = "[" * 100_000
    if where == "history":
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        torch.save({**state, "history": nested}, run / "checkpoint.pt")
    else:
        (run / where).write_text(nested)
    argv = (
        ["sample", run, "--out", tmp_path / "pics"] if where == "metrics.jsonl" else ["evaluate", run, *EVAL]
    )
    err = fails(argv, capsys)
    said = "'history': expected a JSON list" if where == "history" else "(nested too deeply to parse)"
    assert said in err, err


def test_evaluate_never_writes_over_another_runs_files(trained, run, capsys):
    before = (run / "checkpoint.pt").read_bytes()
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        err = fails(["evaluate", trained, *EVAL, "--out", run / name], capsys)
        assert f"would replace a run's own file ({name})" in err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_evaluate_refuses_a_run_file_under_another_name(trained, run, tmp_path, capsys):
    """A case-insensitive filesystem (macOS' default) opens ``Checkpoint.pt`` as the checkpoint:
    the guard compares files, not spellings (portability audit: it wrote the JSON over it)."""
    before = (run / "checkpoint.pt").read_bytes()
    os.link(run / "checkpoint.pt", tmp_path / "same.pt")  # the same file under another name
    err = fails(["evaluate", run, *EVAL, "--out", tmp_path / "same.pt"], capsys)
    assert "is one of the run's own files" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "Config.JSON").write_text("{}")  # another run's, in another case
    err = fails(["evaluate", trained, *EVAL, "--out", other / "Config.JSON"], capsys)
    assert "would replace a run's own file (Config.JSON)" in err
    assert (run / "checkpoint.pt").read_bytes() == before and (other / "Config.JSON").read_text() == "{}"


def test_a_run_without_a_checkpoint_says_why_to_every_command(run, tmp_path, capsys):
    # evaluate, sample and export said "no such file" for a run stopped in its first epoch, and
    # every command said so for a checkpoint.pt that is a directory (reliability audit).
    (run / "checkpoint.pt").unlink()
    for argv in (["evaluate", run, *EVAL], ["sample", run], ["export", run, tmp_path / "x"]):
        err = fails(argv, capsys)
        assert (
            "stopped before its first epoch completed (no checkpoint.pt), so it has no trained model yet"
            in err
        )
        assert f"train it again with problayers train --out {run}" in err
    (run / "checkpoint.pt").mkdir()
    for argv in (["evaluate", run, *EVAL], ["train", "--resume", run]):
        assert fails(argv, capsys).endswith("checkpoint.pt: expected a file, got a directory")


def test_sample_reads_a_damaged_metrics_file_before_writing_anything(run, capsys):
    # It rewrote both pictures before it failed on metrics.jsonl (reliability audit).
    (run / "metrics.jsonl").write_text("{not json\n")
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("*.png")}
    assert "metrics.jsonl: expected JSON lines of epoch records" in fails(["sample", run], capsys)
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.png")} == before
    (run / "metrics.jsonl").unlink()
    assert main(["sample", str(run)]) == 0
    assert f"no loss curve: {run / 'metrics.jsonl'} is missing" in capsys.readouterr().out


def test_resume_keeps_the_runs_progress_setting(run):
    assert json.loads((run / "config.json").read_text())["progress"] is False
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0  # no --no-progress
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["progress"] is False and cfg["resumed"] == [{"at_epoch": 2, "epochs": 3}]
    # and --progress turns it back on (a resume with --no-progress was for good: long-runs audit)
    assert main(["train", "--resume", str(run), "--epochs", "4", "--progress"]) == 0
    assert json.loads((run / "config.json").read_text())["progress"] is True


# ------------------------------------------------------------------------------- resume rules
def test_resume_records_a_new_lr(run, capsys):
    assert main(["train", "--resume", str(run), "--epochs", "3", "--lr", "5e-4", "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 5e-4 and cfg["epochs"] == 3
    assert cfg["resumed"] == [{"at_epoch": 2, "epochs": 3, "lr": 5e-4}]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [5e-4]
    assert json.loads(state["meta"])["config"] == cfg  # config.json and checkpoint agree


def test_resume_refusals(run, capsys):
    before = (run / "config.json").read_bytes()
    err = fails(["train", "--resume", run, "--epochs", "1"], capsys)
    assert "epochs: the run has trained 2 epochs; expected a total >= 2, got 1" in err
    for flags, name in (
        (["--seed", "3"], "--seed"),
        (["--model", "seed"], "--model"),
        (["--ema-decay", "0.9"], "--ema-decay"),
    ):
        assert f"{name} cannot change on resume" in fails(["train", "--resume", run, *flags], capsys)
    assert (run / "config.json").read_bytes() == before


def test_resume_with_a_schedule_keeps_its_lr_and_epochs(tmp_path, capsys):
    out = tmp_path / "cos"
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--synthetic",
                "64",
                "--lr-schedule",
                "cosine",
                *TINY,
            ]
        )
        == 0
    )
    assert "lr: the run's lr_schedule 'cosine'" in fails(["train", "--resume", out, "--lr", "1e-4"], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_run_is_read_and_resumed_without_a_gpu(run, capsys):
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "device": "cuda"}))  # as trained on a GPU
    assert main(["evaluate", str(run), *EVAL, "--device", "cpu"]) == 0
    err = fails(["train", "--resume", run, "--epochs", "3"], capsys)
    assert "device: 'cuda' was asked for but no CUDA device is available" in err
    assert main(["train", "--resume", str(run), "--epochs", "3", "--device", "cpu", "--no-progress"]) == 0
    resumed = json.loads((run / "config.json").read_text())["resumed"]
    assert resumed == [{"at_epoch": 2, "epochs": 3, "device": "cpu"}]


def test_a_gpu_runs_fast_step_is_resumed_with_the_cpus(run, capsys):
    """A GPU run records the GPU's fast step (a CUDA graph, fused capturable Adam, bf16): resumed
    with --device cpu it continues with the CPU's fast step, and the optimizer steps as this
    run built it, not with the flags saved in the checkpoint."""
    import torch

    cfg = json.loads((run / "config.json").read_text())
    gpu_step = {"cuda_graph": True, "fused_adam": True, "channels_last": True, "precision": "bf16"}
    (run / "config.json").write_text(json.dumps({**cfg, "device": "cuda", **gpu_step}))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=True, capturable=True, foreach=None)
    torch.save(state, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--device", "cpu", "--no-progress"]) == 0
    after = json.loads((run / "config.json").read_text())
    assert not after["cuda_graph"] and after["auto_step"] and after["fused_adam"]  # the CPU's fast step
    step = after["resumed"][-1]["step"]  # the change recorded (DDP audit: it was not)
    assert step["cuda_graph"] is False and step["auto_step"] is True
    groups = torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(not g["capturable"] for g in groups)


def test_a_step_that_does_not_fit_the_resumed_device_becomes_its_fast_step(run, monkeypatch, capsys):
    """A CPU run's fused Adam resumed on a device without it (mps; here the CPU stands in, taken
    out of FUSED_ADAM_DEVICES): the device's fast step, recorded, not a refusal naming a flag the
    user cannot drop (portability audit)."""
    from problayers.vae import runconfig

    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "fused_adam": True}))
    monkeypatch.setattr(runconfig, "FUSED_ADAM_DEVICES", ("cuda",))
    assert main(["train", "--resume", str(run), "--epochs", "3", "--device", "cpu", "--no-progress"]) == 0
    after = json.loads((run / "config.json").read_text())
    assert after["fused_adam"] is False and after["resumed"][-1]["step"]["fused_adam"] is False
    assert runconfig.step_misfit(runconfig.RunConfig(precision="bf16"), torch.device("mps")) is not None


def test_data_dir_is_stored_absolute(tmp_path, monkeypatch):
    from problayers.vae.data import synthetic_mnist, write_mnist_split

    write_mnist_split(tmp_path / "mnist", *synthetic_mnist(64, 0), "train")
    write_mnist_split(tmp_path / "mnist", *synthetic_mnist(16, 1), "test")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", "r", "--epochs", "1", "--data-dir", "mnist", *TINY]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data_dir"] == str(tmp_path / "mnist")


# ------------------------------------------------------------------------------------ data
def test_swapped_mnist_files_fail_the_cli(tmp_path, capsys):
    import gzip
    import struct

    for name, count, magic in (
        ("train-images-idx3-ubyte", 10000, 2051),  # MNIST's test count under the training name
        ("train-labels-idx1-ubyte", 10000, 2049),
        ("t10k-images-idx3-ubyte", 60000, 2051),
        ("t10k-labels-idx1-ubyte", 60000, 2049),
    ):
        dims = (count, 28, 28) if magic == 2051 else (count,)
        header = struct.pack(f">{1 + len(dims)}I", magic, *dims)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(header))  # the header is enough
    err = fails(["train", "--out", tmp_path / "r", "--data-dir", tmp_path, *TINY], capsys)
    assert "are the train and test files swapped?" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r" / LOCK).exists() and not (tmp_path / "r" / "config.json").exists()


def test_unreadable_data_dir_fails_the_cli(tmp_path, monkeypatch, capsys):
    import errno

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    err = fails(["train", "--out", tmp_path / "r", "--data-dir", tmp_path, *TINY], capsys)
    assert f"{tmp_path}" in err and "Permission denied (EACCES)" in err


def test_a_failed_download_is_the_environments_fault(tmp_path, monkeypatch, capsys):
    # No network, or a cache directory that cannot be made: exit 1 (the environment), not 2.
    from problayers.vae import data

    monkeypatch.delenv(data.MNIST_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(
        "problayers.vae.download.download_mnist",
        lambda *a, **k: (_ for _ in ()).throw(data.MNISTDownloadError("MNIST download failed: offline")),
    )
    err = fails(["train", "--out", tmp_path / "r", *TINY], capsys, code=1)
    assert err == "problayers: error: MNIST download failed: offline"


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = tmp_path / LOCK
    with RunLock(tmp_path):
        lock.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))  # taken over meanwhile
    assert lock.exists()
