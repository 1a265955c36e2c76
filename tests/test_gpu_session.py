"""benchmarks/gpu_session.sh, the one prepared script a lent GPU runs, checked without a GPU.

A session with a GPU has about 15 minutes of device time: an option renamed or refused since the
script was written would cost one of its few calls. So every stage runs here with ``$PY``
replaced by a recorder that only writes down its arguments, and each recorded command line is
then parsed by the parser that would read it on the GPU (``problayers train`` / ``evaluate``,
``benchmarks/bench_train.py``, ``benchmarks/bench_iwae.py``); a fresh ``train`` also builds its
model's config (which refuses options the model does not read), a ``--resume`` checks what it may
change. The script runs three times, to take each branch of the resumable stages: no runs yet,
runs with checkpoints, and the zoo stage's graphed smoke run failing.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from problayers.cli import _given_options, _model_options, _resume_overrides, build_parser
from problayers.vae.models import ModelConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"

#: Writes its arguments as one JSON line to $RECORD; fails a smoke run (--synthetic) on request.
RECORDER = """
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"stage": os.environ.get("STAGE_HINT", ""), "argv": sys.argv[1:]}) + "\\n")
sys.exit(1 if os.environ.get("FAIL_SMOKE") and "--synthetic" in sys.argv else 0)
"""

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"
)


def _stages() -> list[str]:
    """The stage names of the script's ``case`` (all but ``*``)."""
    return re.findall(r"^    ([a-z0-9-]+)\)", SCRIPT.read_text(), flags=re.MULTILINE)


@functools.cache
def _bench_parser(name: str):
    spec = importlib.util.spec_from_file_location(f"_gpu_session_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


def _run(tmp_path: Path, stages: list[str], runs: Path, **env: str) -> list[list[str]]:
    record = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}.jsonl"
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    environ = {
        **os.environ,
        "PY": f"{sys.executable} {recorder}",
        "RECORD": str(record),
        "OUT": str(tmp_path / "out"),
        "RUNS": str(runs),
        "MNIST": str(tmp_path / "mnist"),
        **env,
    }
    for stage in stages:  # one at a time, so that each call is attributed to its stage
        environ["STAGE_HINT"] = stage
        proc = subprocess.run(
            ["bash", str(SCRIPT), stage], env=environ, capture_output=True, text=True, timeout=120
        )
        # the recorder writes no files, so the stages' copies fail; the script itself must not
        assert "unknown stage" not in proc.stderr and "syntax error" not in proc.stderr, proc.stderr[-2000:]
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def _check(call: dict) -> str | None:
    """None if the command line would be accepted, else why not."""
    argv = call["argv"]
    try:
        if argv[:2] == ["-m", "problayers"]:
            cli = argv[2:]
            args = build_parser().parse_args(cli)
            args.given = _given_options(cli)
            if args.command == "train" and args.resume:
                _resume_overrides(args)
            elif args.command == "train":
                ModelConfig.for_model(args.model, **_model_options(args))
            elif args.command != "evaluate":
                return f"unexpected subcommand {args.command}"
        elif argv[:2] == ["-m", "pytest"]:
            missing = [a for a in argv[2:] if a.startswith("tests/") and not (REPO / a).exists()]
            if missing:
                return f"no such test file(s): {missing}"
        elif argv and argv[0] in ("benchmarks/bench_train.py", "benchmarks/bench_iwae.py"):
            _bench_parser(Path(argv[0]).stem)(argv[1:])
        else:
            return "not a command the checks know"
    except SystemExit as err:  # argparse's error (its message went to stderr)
        return f"refused by the parser (status {err.code})"
    except ValueError as err:
        return str(err)
    return None


def test_every_command_of_the_gpu_session_is_accepted(tmp_path, capsys):
    runs = tmp_path / "runs"
    stages = [s for s in _stages() if s != "env"]  # env calls nvidia-smi only
    assert {"sweep", "fast", "zoo-hvae", "zoo-eval", "gputests"} <= set(stages)
    calls = _run(tmp_path, stages, runs)  # no run yet: the fresh branches
    for run in ("zoo-hvae", "zoo-resnet"):  # checkpoints present: resume, and evaluate both
        (runs / run).mkdir(parents=True, exist_ok=True)
        (runs / run / "checkpoint.pt").write_bytes(b"")
    calls += _run(tmp_path, ["zoo-hvae", "zoo-resnet", "zoo-eval"], runs)
    shutil.rmtree(runs / "zoo-hvae")
    calls += _run(tmp_path, ["zoo-hvae"], runs, FAIL_SMOKE="1")  # the eager fallback
    silent = set(stages) - {c["stage"] for c in calls}
    assert silent == set(), f"stages that ran no command: {sorted(silent)}"
    assert any("--resume" in c["argv"] for c in calls) and any("--no-fast" in c["argv"] for c in calls)
    refused = []
    for call in calls:
        why = _check(call)
        if why is not None:
            refused.append(f"{call['stage']}: {' '.join(call['argv'])}: {why}")
    capsys.readouterr()
    assert refused == [], "\n".join(refused)


def test_the_check_refuses_what_the_gpu_would_refuse():
    """The checks above can fail: a renamed flag, a model option the model does not read, a
    change on resume, a missing test file."""
    bad = [
        ["-m", "problayers", "train", "--cuda-graphs"],
        ["-m", "problayers", "train", "--model", "seed", "--prior", "vamp"],
        ["-m", "problayers", "train", "--resume", "runs/x", "--batch-size", "10"],
        ["-m", "pytest", "tests/test_no_such_file.py"],
        ["benchmarks/bench_train.py", "--configs", "fast-nosuchoption"],
        ["benchmarks/bench_iwae.py", "--k", "0"],
    ]
    for argv in bad:
        assert _check({"argv": argv}) is not None, argv
    assert _check({"argv": ["-m", "problayers", "train", "--model", "hvae", "--prior", "vamp"]}) is None
