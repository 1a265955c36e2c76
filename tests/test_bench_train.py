"""benchmarks/bench_train.py's configurations: which TFP variants it accepts and the environment
each gives TensorFlow (whose oneDNN kernels are on by default only on some CPUs, so a comparison
with TFP has to say which kernels TensorFlow ran)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
_spec = importlib.util.spec_from_file_location("_bench_train", SCRIPT)
assert _spec is not None and _spec.loader is not None
bench_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_train)


def test_tfp_kernel_variants_set_tensorflows_switch():
    assert bench_train.tfp_environment("tfp-onednn") == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert bench_train.tfp_environment("tfp-eigen") == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert bench_train.tfp_environment("tfp") == {}  # TensorFlow's own default for this CPU


def test_tfp_mem_sets_the_allocator_thresholds_of_the_fast_step():
    from problayers.train.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD

    assert bench_train.tfp_environment("tfp-mem") == {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    }


def test_configs_are_parsed_and_unknown_ones_named(capsys):
    args = bench_train.parse_args(["--configs", "fast,tfp,tfp-onednn,tfp-eigen,tfp-mem"])
    assert args.config_list == ["fast", "tfp", "tfp-onednn", "tfp-eigen", "tfp-mem"]
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--configs", "fast,tfp-mkl"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'tfp-mkl'" in err and "tfp-onednn" in err


def test_tfp_variants_run_the_tfp_worker(tmp_path, monkeypatch):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.touch()
    monkeypatch.setattr(bench_train, "TFP_VENV", tmp_path)
    args = bench_train.parse_args(["--configs", "tfp-onednn", "--steps", "3"])
    cmd = bench_train._worker_command("tfp-onednn", args)
    assert cmd[0] == str(python) and cmd[1].endswith("tfp_vae.py")
    assert cmd[cmd.index("--steps") + 1] == "3"
