"""Every CLI command, smoke-tested, and the one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from problayers.cli import main

TINY = ["--latent-size", "4", "--base-depth", "4", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import HAVE_MNIST, SHARED_MNIST

    data = (
        ["--data-dir", str(SHARED_MNIST), "--train-subset", "256", "--test-subset", "100"]
        if HAVE_MNIST
        else ["--synthetic", "256"]
    )
    out = tmp_path_factory.mktemp("run") / "seed"
    assert main(["train", "--out", str(out), "--epochs", "1", *TINY, *data]) == 0
    return out


def test_train(run_dir, capsys):
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "metrics.jsonl").is_file()


def test_train_fast_step_flags(tmp_path):
    out = tmp_path / "fast"
    assert (
        main(["train", "--out", str(out), "--epochs", "1", "--synthetic", "128", "--channels-last", *TINY])
        == 0
    )
    assert json.loads((out / "config.json").read_text())["channels_last"] is True


def test_train_fast_and_schedule_flags(tmp_path):
    out = tmp_path / "fast"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "128", "--device", "cpu", *TINY]
    assert main([*argv, "--fast", "--lr-schedule", "cosine", "--adam", "keras"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    # --fast on the CPU: fastest_defaults("cpu") (channels_last) and fused Adam (Keras' too)
    assert cfg["lr_schedule"] == "cosine" and cfg["channels_last"] is True and cfg["adam"] == "keras"
    assert cfg["fused_adam"] is True
    assert not (cfg["compile"] or cfg["cuda_graph"]) and cfg["precision"] == "fp32"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {"channels_last": True, "fused_adam": True}),  # --fast is the default: fastest_defaults("cpu")
        (["--no-fast"], {}),  # the plain eager step
        (["--compile"], {"compile": True}),  # a step flag alone: that flag only
        (["--fused-adam"], {"fused_adam": True}),  # on the CPU too
        (["--fast", "--compile"], {"compile": True, "channels_last": True, "fused_adam": True}),  # flags add
    ],
)
def test_train_step_defaults(tmp_path, flags, expected):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "64", "--device", "cpu", *TINY]
    if "--compile" in flags:  # keep the (slow) compilation out: only the resolved config matters here
        from problayers.cli import _fast_options, build_parser

        args = build_parser().parse_args([*argv, *flags])
        got = _fast_options(args, data_parallel=False)
    else:
        assert main([*argv, *flags]) == 0
        got = json.loads((out / "config.json").read_text())
    plain = {"compile": False, "channels_last": False, "cuda_graph": False, "fused_adam": False}
    assert {k: got[k] for k in plain} == {**plain, **expected}
    assert got["precision"] == "fp32"


def test_lr_schedule_choices_are_the_registry():
    from problayers.cli import build_parser
    from problayers.train.schedules import LR_SCHEDULES

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (action,) = [a for a in train._actions if a.dest == "lr_schedule"]
    assert sorted(action.choices) == sorted(LR_SCHEDULES)


def test_adam_choices_are_the_registry():
    from problayers.cli import build_parser
    from problayers.train.keras_adam import ADAMS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (action,) = [a for a in train._actions if a.dest == "adam"]
    assert list(action.choices) == list(ADAMS)


def test_train_fast_is_off_for_data_parallel_runs_unless_asked():
    from problayers.cli import _fast_options, build_parser

    args = build_parser().parse_args(["train", "--device", "cpu"])
    assert _fast_options(args, data_parallel=True)["channels_last"] is False
    args = build_parser().parse_args(["train", "--device", "cpu", "--channels-last"])
    assert _fast_options(args, data_parallel=True)["channels_last"] is True  # then train() refuses


def test_train_resume_extends(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-progress"]) == 0
    assert "epoch 2: test -ELBO" in capsys.readouterr().out
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_evaluate(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--iwae-samples",
                "8",
                "--chunk-size",
                "3",
                "--test-subset",
                "20",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "IWAE NLL (K=8)" in printed and "bits/dim" in printed
    results = json.loads(out.read_text())
    assert results["num_examples"] == 20 and results["iwae_samples"] == 8
    assert results["iwae_nll"] <= results["neg_elbo"] + 5.0  # IWAE is the tighter bound (MC noise aside)


def test_evaluate_takes_every_test_image_unless_told_not_to_whatever_the_run_used(tmp_path, capsys):
    """A run's --test-subset speeds up its epochs' reports; its evaluation is of the whole test set."""
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "64", "--test-subset", "16", *TINY]
    assert main(argv) == 0
    assert (
        main(
            ["evaluate", str(out), "--iwae-samples", "0", "--no-progress", "--out", str(tmp_path / "a.json")]
        )
        == 0
    )
    assert json.loads((tmp_path / "a.json").read_text())["num_examples"] == 64
    argv = ["evaluate", str(out), "--iwae-samples", "0", "--no-progress", "--test-subset", "8"]
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["num_examples"] == 8


def test_a_refused_run_leaves_no_directory_it_made(tmp_path, capsys):
    """``--out new/run`` with data that is refused: neither ``run`` nor ``new`` is left behind."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "new" / "run"), "--data-dir", str(tmp_path / "empty"), *TINY])
    assert exc.value.code == 2 and "problayers: error:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_sample_and_regression_that_fail_leave_no_directory_they_made(run_dir, tmp_path, monkeypatch, capsys):
    """A disk full while the pictures are written: the empty ``--out`` (and its new parent) go."""
    import problayers.demos.regression
    import problayers.vae.pictures

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(problayers.vae.pictures, "save_pictures", full)
    monkeypatch.setattr(problayers.demos.regression, "run", full)
    for argv in (["sample", str(run_dir)], ["regression"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "new" / "out")])
        assert exc.value.code == 1 and "No space left on device" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()


def test_the_parsers_epoch_limit_is_the_run_configs():
    from problayers.cli import parser
    from problayers.vae import runconfig

    assert parser.MAX_EPOCHS == runconfig.MAX_EPOCHS


def test_evaluate_bf16_channels_last(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["evaluate", str(run_dir), "--iwae-samples", "4", "--test-subset", "10", "--no-progress"]
    assert main([*argv, "--precision", "bf16", "--channels-last", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["precision"] == "bf16" and results["channels_last"] is True
    assert results["seconds"] > 0 and results["num_examples"] == 10


def test_evaluate_fast_default_and_no_fast(run_dir, tmp_path, capsys):
    argv = ["evaluate", str(run_dir), "--iwae-samples", "2", "--test-subset", "10", "--no-progress"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "a.json")]) == 0
    fast = json.loads((tmp_path / "a.json").read_text())
    assert fast["step_choice"]["chosen"] == "fp32+channels_last"  # the probe's choice (fixed timings)
    assert fast["channels_last"] is True and fast["precision"] == "fp32"
    assert "evaluation step: fp32+channels_last (" in capsys.readouterr().out
    assert main([*argv, "--device", "cpu", "--no-fast", "--out", str(tmp_path / "b.json")]) == 0
    plain = json.loads((tmp_path / "b.json").read_text())
    assert plain["channels_last"] is False and plain["precision"] == "fp32"
    # same seed, same weights: the layout changes only the summation order
    assert abs(fast["neg_elbo"] - plain["neg_elbo"]) < 1e-3 * abs(plain["neg_elbo"])


def test_sample(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--n", "5", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {
        "prior_samples.png",
        "reconstructions.png",
        "loss_curve.png",
    }


def test_weight_averaging_flags(tmp_path):
    out = tmp_path / "ema"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "128", "--ema-decay", "0.9", *TINY]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["ema_decay"] == 0.9
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "online_test_neg_elbo" in history[-1]
    evaluate = ["evaluate", str(out), "--iwae-samples", "2", "--no-progress", "--no-fast"]
    assert main([*evaluate, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*evaluate, "--online-weights", "--out", str(tmp_path / "o.json")]) == 0
    averaged, online = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ao")
    assert (averaged["weights"], online["weights"]) == ("ema 0.9", "online")
    assert averaged["neg_elbo"] != online["neg_elbo"]
    assert main(["sample", str(out), "--n", "3", "--online-weights", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "prior_samples.png").is_file()


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["train", "--data-dir", "/nonexistent/mnist", "--out", "{tmp}/x"],
            "/nonexistent/mnist (from the run's data_dir (--data-dir, or its config.json)): not a directory",
        ),
        (
            ["train", "--ema-decay", "1", "--synthetic", "8", "--out", "{tmp}/x"],
            "--ema-decay: expected a number in (0, 1)",
        ),
        (["train", "--batch-size", "0", "--synthetic", "8", "--out", "{tmp}/x"], "--batch-size"),
        (
            ["train", "--batch-size", "999", "--synthetic", "8", "--out", "{tmp}/x"],
            "--batch-size: expected at most the 8 training images, got 999",
        ),
        (["train", "--epochs", "0", "--synthetic", "8", "--out", "{tmp}/x"], "argument --epochs"),
        (["train", "--synthetic", "0", "--out", "{tmp}/x"], "--synthetic: expected an integer >= 1, got '0'"),
        (
            ["train", "--synthetic", "1000000", "--out", "{tmp}/x"],
            "--synthetic: expected an int in 0..100000",
        ),
        (["train", "--bogus"], "unrecognized arguments: --bogus (see problayers train --help)"),
        (
            ["train", "--synthetic", "8", "--data-dir", "{tmp}", "--out", "{tmp}/x"],
            "--data-dir: a synthetic run (8 generated digits) reads no MNIST directory",
        ),
        (["train", "--lr", "nan", "--synthetic", "8", "--out", "{tmp}/x"], "argument --lr"),
        (
            ["train", "--seed", "99999999999999999999", "--synthetic", "8", "--out", "{tmp}/x"],
            "argument --seed",
        ),
        (["train", "--seed", "-1", "--synthetic", "8", "--out", "{tmp}/x"], "argument --seed"),
        (["evaluate", "RUN", "--seed", "99999999999999999999"], "argument --seed"),
        (["regression", "--seed", "99999999999999999999", "--out", "{tmp}/r"], "argument --seed"),
        (["regression", "--seed", "18446744073709552", "--out", "{tmp}/r"], "<= 9223372036853775"),
        (
            ["train", "--model", "mlp", "--kl-warmup-steps", "99999999999999999999", "--out", "{tmp}/x"],
            "argument --kl-warmup-steps",
        ),
        (
            ["train", "--synthetic", "64", "--train-subset", "1000", "--batch-size", "8", "--out", "{tmp}/x"],
            "--train-subset: expected at most the 64 train images, got 1000",
        ),
        (["evaluate", "RUN", "--test-subset", "100000"], "--test-subset: expected at most the"),
        (["sample", "RUN", "--n", "100000", "--out", "{tmp}/s"], "--n: expected at most the"),
        (["train", "--synthetic", "8", "--out", ""], "--out: expected a directory, got an empty path"),
        # an empty path (an unset shell variable) is not taken for the option's absence
        (["train", "--resume", ""], "argument --resume: expected a directory, got an empty path"),
        (["evaluate", "RUN", "--data-dir", ""], "argument --data-dir: expected a directory, got an empty"),
        (
            ["train", "--epochs", "100001", "--out", "{tmp}/x"],
            "argument --epochs: expected an integer <= 100000",
        ),
        (["train", "--synthetic", "8", "--out", "/dev/null"], "got an existing file"),
        (["train", "--synthetic", "8", "--out", "{tmp}/f/sub"], "a parent is a file"),
        (["train", "--device", "meta", "--synthetic", "8", "--out", "{tmp}/x"], "device"),
        (["evaluate", "RUN", "--device", "meta"], "device"),
        (["train", "--device", "tpu", "--out", "{tmp}/x"], "device"),
        (["evaluate", "{tmp}"], "not a problayers run directory"),
        (["sample", "{tmp}"], "not a problayers run directory"),
        (["evaluate", "RUN", "--iwae-samples", "-1"], "--iwae-samples"),
        (["evaluate", "RUN", "--out", "RUN/checkpoint.pt"], "one of the run's own files"),
        (["evaluate", "RUN", "--out", "RUN/config.json"], "one of the run's own files"),
        (["evaluate", "RUN", "--out", "RUN/metrics.jsonl"], "one of the run's own files"),
        (["sample", "RUN", "--out", "RUN/checkpoint.pt"], "one of the run's own files"),
        (["sample", "RUN", "--out", "/dev/null"], "got an existing file"),
        (["evaluate", "RUN", "--out", "{tmp}"], "got an existing directory or device"),
        (["evaluate", "RUN", "--out", ""], "got an empty path"),
        (["sample", "RUN", "--out", ""], "got an empty path"),
        (["evaluate", ""], "argument run_dir: expected a directory, got an empty path"),  # not "."
        (["sample", ""], "argument run_dir: expected a directory, got an empty path"),
        (["export", "", "{tmp}/x"], "argument run_dir: expected a directory, got an empty path"),
        (["train", "--resume", "{tmp}/nope"], "is not a directory"),
        (["regression", "--out", ""], "--out: expected a directory, got an empty path"),
        (["regression", "--out", "{tmp}/f"], "got an existing file"),
        (["train", "--resume", "{tmp}"], "has no config.json"),
        (["train", "--resume", "RUN", "--lr-schedule", "cosine"], "--lr-schedule cannot change on resume"),
        (["train", "--resume", "RUN", "--batch-size", "8"], "--batch-size cannot change on resume"),
        (["train", "--resume", "RUN", "--adam", "keras"], "--adam cannot change on resume"),
        (["train", "--adam", "sgd", "--out", "{tmp}/x"], "--adam: invalid choice"),
        (["train", "--resume", "RUN", "--out", "{tmp}/x"], "--out cannot change on resume"),
        (["train", "--resume", "RUN", "--logger", "tensorboard"], "--logger cannot change on resume"),
        (["train", "--logger", "wandb", "--out", "{tmp}/x"], "--logger: invalid choice"),
        (["export", "RUN", "RUN"], "is the run directory itself"),
        (["export", "RUN", "{tmp}"], "is not empty"),
        (["export", "RUN", "{tmp}/f"], "got an existing file"),
        (
            [
                "train",
                "--cuda-graph",
                "--device",
                "cpu",
                "--synthetic",
                "64",
                "--batch-size",
                "32",
                "--out",
                "{tmp}/x",
            ],
            "--cuda-graph: needs a CUDA device",
        ),
    ],
)
def test_user_errors_are_one_line(argv, match, tmp_path, run_dir, capsys):
    (tmp_path / "f").write_text("a file")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("RUN", str(run_dir)) for a in argv]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("problayers: error:") and match in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # untouched
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_a_moved_run_whose_data_dir_is_gone_names_its_config_and_the_option_that_helps(
    tmp_path, run_dir, capsys
):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    config.update(data_dir=str(tmp_path / "gone"), synthetic=0)
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(moved), "--iwae-samples", "0"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert "(from the run's data_dir (--data-dir, or its config.json)): not a directory" in err
    assert "pass --data-dir DIR" in err and "PROBLAYERS_MNIST_DIR" not in err


def test_a_run_stopped_before_its_first_checkpoint_is_not_resumed_but_trained_again(tmp_path, capsys):
    out = tmp_path / "early"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "128", *TINY]
    assert main(argv) == 0
    for path in out.iterdir():  # as if stopped (Ctrl-C) within the first epoch: its config alone
        if path.name != "config.json":
            path.unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert "stopped before its first epoch completed" in err and f"problayers train --out {out}" in err
    assert main(argv) == 0 and (out / "checkpoint.pt").is_file()  # what the message says works


def test_export_never_replaces_another_runs_files(tmp_path, run_dir, capsys):
    """Even with --force: the export's config.json would make that run unusable."""
    other = Path(shutil.copytree(run_dir, tmp_path / "other"))
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run_dir), str(other), "--force"])
    assert exc.value.code == 2
    assert "is a training run's directory (it has checkpoint.pt, metrics.jsonl)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before
    live = tmp_path / "live"  # a run in its first epoch: its lock and config.json, no checkpoint yet
    live.mkdir()
    (live / ".lock").write_text("{}")
    (live / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), str(live), "--force"])
    assert "is a training run's directory (it has .lock)" in capsys.readouterr().err
    assert (live / "config.json").read_text() == (run_dir / "config.json").read_text()


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "problayers", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "evaluate", "sample", "export", "regression"):
        assert command in out.stdout


def test_version_and_every_option_has_help(capsys):
    from importlib.metadata import version

    from problayers.cli.parser import build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"problayers {version('problayers')}"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, sub in commands.items()
        for action in sub._actions
        if action.option_strings and not action.help
    ]
    assert missing == []


def test_train_help_names_every_registered_model():
    from problayers.cli.parser import build_parser
    from problayers.vae.models.registry import MODELS

    commands = build_parser()._subparsers._group_actions[0].choices
    (model,) = (a for a in commands["train"]._actions if "--model" in a.option_strings)
    assert sorted(MODELS) and all(name in model.help for name in MODELS), (sorted(MODELS), model.help)


def test_regression(tmp_path, capsys):
    assert main(["regression", "--out", str(tmp_path), "--epochs", "30", "--no-progress"]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert capsys.readouterr().out.strip()


def test_train_prints_and_records_its_step_choice(tmp_path, capsys, monkeypatch):
    from problayers.train import cpu, probe

    monkeypatch.setenv("PROBLAYERS_CACHE_DIR", str(tmp_path / "cache-a"))  # nothing measured before
    argv = ["train", "--epochs", "1", "--synthetic", "64", "--device", "cpu", *TINY]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("step: "))
    # the fixed timings make fp32+channels_last fastest; why bf16 lost depends on the CPU
    why = "(bf16 " if probe.cpu_has_native_bf16() else "(fastest measured; no native bf16 on this CPU"
    assert line.startswith("step: fp32+channels_last+fused_adam " + why), line
    assert "s/step:" in line and "measured now" in line
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["auto_step"] is True and cfg["step_choice"]["by"] == "probe"
    # --fast on a CPU also lets glibc keep freed memory (recorded; said in one line)
    assert cfg["retain_memory"] is True
    assert any(line.startswith("memory: ") for line in out.splitlines()), out
    assert cfg["step_choice"]["machine"]["torch"] and cfg["step_choice"]["seconds_per_step"]
    # evaluate uses the choice training measured here (the probe's cache)
    evaluate = [
        "evaluate",
        str(tmp_path / "a"),
        "--iwae-samples",
        "2",
        "--no-progress",
    ]
    assert main([*evaluate, "--test-subset", "64", "--out", str(tmp_path / "a.json")]) == 0
    evaluated = json.loads((tmp_path / "a.json").read_text())
    choice = evaluated["step_choice"]
    assert choice["by"] == "cache" and choice["measured_at"] == cfg["step_choice"]["measured_at"]
    # fewer test images than the run's batch: measured (and cached) for that batch, not the run's
    assert main([*evaluate, "--test-subset", "10", "--out", str(tmp_path / "a10.json")]) == 0
    assert json.loads((tmp_path / "a10.json").read_text())["step_choice"]["by"] == "probe"
    # on a CPU the decoder takes 4 images x 128 samples at once (this small one), and memory is kept
    assert (evaluated["batch_size"], evaluated["chunk_size"]) == (4, 128)
    assert set(evaluated["memory"]) == {"applied", "reason"}
    # bf16 measured faster (by the margin), transposed convolutions faster on the convolution's
    # passes: the run trains so, and says why
    times = {"fp32": 1.0, "fp32+channels_last": 1.0, "bf16": 0.8, "bf16+channels_last": 0.6}
    times.update({"fp32+channels_last+conv_passes": 0.9, "bf16+channels_last+conv_passes": 0.5})
    monkeypatch.setattr(
        probe, "_time_candidates", lambda m, o, f, b, cands, w, r: {c.name: times[c.name] for c in cands}
    )
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("PROBLAYERS_CACHE_DIR", str(tmp_path / "cache"))
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (cfg["precision"], cfg["channels_last"], cfg["transposed_as_conv"]) == ("bf16", True, True)
    assert cfg["narrow_conv_by_transposed"] is True
    # (and with fused Adam, which every candidate step had: not measured, named)
    assert (
        "step: bf16+channels_last+conv_passes+fused_adam (bf16 44% faster than fp32;"
        in capsys.readouterr().out
    )
    assert cfg["fused_adam"] is True
    # evaluate takes the narrow last convolution's depthwise forward with that choice, not without
    evaluate[1] = str(tmp_path / "b")
    assert main([*evaluate, "--test-subset", "64", "--out", str(tmp_path / "b.json")]) == 0
    evaluated_b = json.loads((tmp_path / "b.json").read_text())
    assert evaluated_b["step_choice"]["chosen"] == "bf16+channels_last+conv_passes"
    assert evaluated_b["narrow_conv_by_transposed"] is True
    assert evaluated["narrow_conv_by_transposed"] is False
    # a resumed run keeps its recorded choice (no new measurement, not even from a cache)
    monkeypatch.setattr(probe, "_time_candidates", None)
    monkeypatch.setenv("PROBLAYERS_CACHE_DIR", str(tmp_path / "cache-empty"))
    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["step_choice"] == cfg["step_choice"]


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--no-fast"], "step: fp32 (--no-fast: the eager step)"),
        (["--no-fast", "--channels-last"],
         "step: fp32, channels_last (--no-fast: the eager step and the options given)"),
        (["--precision", "bf16"], "step: bf16 (the options given)"),
        (["--fast", "--precision", "fp32"],
         "step: fp32, channels_last, fused_adam (the device's fastest defaults and the options given)"),
    ],
)  # fmt: skip
def test_train_step_line_without_a_probe(tmp_path, capsys, flags, line):
    argv = [
        "train",
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "1",
        "--synthetic",
        "64",
        "--device",
        "cpu",
        *TINY,
    ]
    assert main([*argv, *flags]) == 0
    assert line in capsys.readouterr().out.splitlines()
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["step_choice"] is None
    assert cfg["retain_memory"] is ("--fast" in flags)  # the CPU's fast defaults only


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--model", "mlp", "--flow-steps", "3"],
            "problayers: error: --flow-steps 3: only posterior 'iaf' uses it",
        ),
        (["--model", "mlp", "--objective", "iwae"], "problayers: error: --num-samples: objective 'iwae'"),
        (
            ["--model", "mlp", "--num-samples", "5"],
            "problayers: error: --num-samples 5: needs objective 'iwae'",
        ),
        (["--model", "mpl"], "problayers: error: --model: expected a registered model (hvae, mlp"),
        (
            ["--model", "mlp", "--prior", "vamp", "--posterior", "iaf"],
            "problayers: error: --prior/--posterior:",
        ),
        (["--model", "mlp", "--free-bits", "1e38"], "problayers: error: --free-bits: expected nats per"),
        # options the config does not use are refused at their default values too
        (["--model", "mlp", "--flow-steps", "2"], "problayers: error: --flow-steps 2: only posterior 'iaf'"),
        (
            ["--model", "seed", "--hidden-size", "300"],
            "problayers: error: --hidden-size 300: the 'seed' model",
        ),
        (
            ["--model", "hvae", "--posterior", "gaussian"],
            "problayers: error: --posterior 'gaussian': the 'hvae'",
        ),
        # a flag is named as typed, without a value (it read "--exact-kl True")
        (
            ["--model", "mlp", "--objective", "iwae", "--num-samples", "2", "--no-exact-kl"],
            "problayers: error: --no-exact-kl: only the 'elbo' objective uses it; 'iwae' computes no KL",
        ),
        (
            ["--model", "mlp", "--objective", "dreg", "--num-samples", "2", "--exact-kl"],
            "problayers: error: --exact-kl: only the 'elbo' objective",
        ),
        (
            ["--model", "resnet", "--hidden-size", "64"],
            "problayers: error: --hidden-size 64: the 'resnet' model uses it only with posterior 'iaf'",
        ),
    ],
)
def test_errors_name_the_option_as_typed(tmp_path, capsys, argv, line):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--synthetic", "64", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith(line)


def test_step_flags_refused_for_data_parallel_training_are_named_as_typed():
    # Under torchrun an explicit --fast was named "--channels-last", an option it sets.
    from problayers.cli import _as_options, _fast_options, build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--fast", "--synthetic", "64", "--out", "x"])
    with pytest.raises(ValueError, match=r"^--fast: the fast step is single-process"):
        _fast_options(args, data_parallel=True)
    assert _fast_options(args, data_parallel=False)["auto_step"]
    args = parser.parse_args(["train", "--compile", "--channels-last", "--out", "x"])
    line = "problayers: error: compile/channels_last: the fast step is single-process for now"
    got = _as_options(line, parser.commands["train"], args)
    assert got == "problayers: error: --compile/--channels-last: the fast step is single-process for now"
    assert _as_options("problayers: error: compile/nope: x", parser.commands["train"], args).endswith(
        " compile/nope: x"
    )


def test_documented_defaults():
    from problayers.cli import build_parser

    parser = build_parser()
    train_args = parser.parse_args(["train"])
    assert (train_args.batch_size, train_args.lr) == (256, 1e-3)
    assert parser.parse_args(["evaluate", "r"]).iwae_samples == 5000
    assert parser.parse_args(["sample", "r"]).n == 10


def test_evaluate_of_a_model_whose_bounds_are_not_finite_fails_after_recording(run_dir, tmp_path, capsys):
    # Status 0 for an infinite -ELBO let a script take it for a result. Finite weights (a
    # checkpoint with others is refused) whose logits' loss overflows float32.
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    state = torch.load(broken / "checkpoint.pt", weights_only=True)
    name = [k for k in state["model"] if k.startswith("decoder") and k.endswith("bias")][-1]
    state["model"][name].fill_(3e38)
    torch.save(state, broken / "checkpoint.pt")
    argv = ["evaluate", str(broken), "--iwae-samples", "2", "--test-subset", "4", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "eval.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["problayers: error: -ELBO inf, IWAE NLL inf: not finite (a diverged or damaged model)"]
    assert json.loads((tmp_path / "eval.json").read_text())["num_examples"] == 4  # the record is kept
