"""The VAE job end to end on tiny data: files, exact resume after SIGKILL, foreign checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from problayers.train.checkpoint import CheckpointError
from problayers.vae.experiment import RunConfig, _images, load_run, load_test_images, resume, train
from problayers.vae.models import ModelConfig
from problayers.vae.rundir import check_consistent

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(latent_size=4, base_depth=4)


def tiny_config(**kw):
    base = dict(model=TINY, epochs=2, batch_size=32, synthetic=128, progress=False, eval_batch_size=64)
    base.update(kw)
    return RunConfig(**base)


def test_train_writes_the_run(tmp_path):
    history = train(tiny_config(), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "prior_samples.png",
        "reconstructions.png",
        "loss_curve.png",
    } <= names
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == history and [r["epoch"] for r in records] == [1, 2]
    for key in (
        "train_loss",
        "train_recon",
        "train_kl",
        "test_neg_elbo",
        "test_recon",
        "test_kl",
        "seconds",
        "images_per_s",
    ):
        assert all(isinstance(r[key], float) for r in records), key
    assert RunConfig.from_json(json.loads((tmp_path / "config.json").read_text())) == tiny_config()
    model, cfg, info = load_run(tmp_path, device="cpu")
    assert info["epoch"] == 2 and not model.training and cfg.model == TINY


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tiny_config(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(epochs=1), tmp_path)


def test_checkpoint_from_another_model_config_is_refused(tmp_path):
    train(tiny_config(epochs=1), tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["model"]["latent_size"] = 5
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    # names the fields that differ, not both whole configs
    match = (
        r"trained with another model config than this run's config.json "
        r"\(checkpoint vs run: latent_size 4 vs 5\)$"
    )
    with pytest.raises(CheckpointError, match=match):
        load_run(tmp_path / "a", device="cpu")
    with pytest.raises(CheckpointError, match=match):
        resume(tmp_path / "a")
    # a field the saved config lacks is named as it is read (a seed config without tril_order
    # means the row-by-row order), not as a dump of both configs
    cfg = tiny_config(epochs=1)
    old = {k: v for k, v in cfg.to_json()["model"].items() if k != "tril_order"}
    with pytest.raises(CheckpointError, match=r"\(checkpoint vs run: tril_order 'rows' vs 'tfp'\)$"):
        check_consistent(cfg, {"model": old}, 1, "ckpt")
    # another model: its name first (it was cut off behind four fields in sorted order)
    other = {
        **cfg.to_json()["model"],
        "name": "mlp",
        "base_depth": 5,
        "beta": 2.0,
        "exact_kl": False,
        "hidden_size": 7,
    }
    with pytest.raises(CheckpointError, match=r"\(checkpoint vs run: name 'mlp' vs 'seed', base_depth 5 vs "):
        check_consistent(cfg, {"model": other}, 1, "ckpt")


def test_configs_take_numpy_numbers_as_pythons():
    """A sweep over np.arange passed numpy numbers: refused with "expected a positive int, got
    np.int64(8)" (argument audit). They become Python's, so config.json is still JSON."""
    import dataclasses

    import numpy as np

    from problayers.train.trainer import TrainerConfig

    model = ModelConfig(latent_size=np.int64(8), beta=np.float32(0.5), kl_warmup_steps=np.uint16(3))
    cfg = RunConfig(model=model, batch_size=np.int32(64), lr=np.float32(1e-3), test_subset=np.int64(10))
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["model"]["latent_size"] == 8
    assert type(cfg.batch_size) is int and type(cfg.lr) is float and type(model.beta) is float
    assert TrainerConfig(epochs=np.int64(2)).epochs == 2
    with pytest.raises(ValueError, match=r"^latent_size: expected a positive int, got np.float64"):
        ModelConfig(latent_size=np.float64(8))
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive int, got np.True_"):
        RunConfig(batch_size=np.bool_(True))


def test_config_errors():
    with pytest.raises(ValueError, match="batch_size"):
        tiny_config(batch_size=0)
    with pytest.raises(ValueError, match="device"):
        tiny_config(device="tpu")
    with pytest.raises(ValueError, match="lr"):
        tiny_config(lr=-1.0)
    with pytest.raises(ValueError, match="only"):
        resume("nowhere", batch_size=3)


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "problayers",
        "train",
        "--synthetic",
        "192",
        "--batch-size",
        "32",
        "--latent-size",
        "4",
        "--base-depth",
        "4",
        "--no-progress",
        "--channels-last",  # given: not measured, so both runs take the same step
        "--out",
        str(out),
        *extra,
    ]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """Kill -9 a run as soon as its first checkpoint lands (mid-epoch 2 or later), resume it,
    and compare with an uninterrupted run: bitwise equal weights and equal metrics."""
    epochs = "4"
    subprocess.run(
        [*_cli(tmp_path / "full", "--epochs", epochs)],
        check=True,
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.Popen(
        _cli(tmp_path / "killed", "--epochs", epochs),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < 4, "the run was not killed mid-way"
    subprocess.run(
        [sys.executable, "-m", "problayers", "train", "--resume", str(tmp_path / "killed"), "--no-progress"],
        check=True,
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(ckpt, weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 4
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name

    def strip(path):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]

    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "killed" / "metrics.jsonl")


def test_resume_can_extend_training(tmp_path):
    train(tiny_config(epochs=1), tmp_path)
    history = resume(tmp_path, epochs=2)
    assert [r["epoch"] for r in history] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2


def test_lr_schedule(tmp_path):
    history = train(tiny_config(epochs=2, lr_schedule="onecycle"), tmp_path)
    assert len(history) == 2
    assert json.loads((tmp_path / "config.json").read_text())["lr_schedule"] == "onecycle"
    with pytest.raises(ValueError, match=r"^epochs: the run's lr_schedule 'onecycle'"):
        resume(tmp_path, epochs=3)  # the schedule spans the run's 2 epochs
    with pytest.raises(ValueError, match=r"^lr_schedule"):
        tiny_config(lr_schedule="linear")


def test_keras_adam(tmp_path):
    from problayers.train.checkpoint import load_checkpoint

    train(tiny_config(epochs=1, adam="keras"), tmp_path / "keras")
    history = resume(tmp_path / "keras", epochs=2)  # the step count continues
    assert json.loads((tmp_path / "keras" / "config.json").read_text())["adam"] == "keras"
    (group,) = load_checkpoint(tmp_path / "keras" / "checkpoint.pt")["optimizer"]["param_groups"]
    assert group["iterations"] == sum(r["steps"] for r in history) and group["keras_eps"] == 1e-7
    train(tiny_config(epochs=2), tmp_path / "torch")
    weights = [load_checkpoint(tmp_path / d / "checkpoint.pt")["model"] for d in ("keras", "torch")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # not torch's update
    with pytest.raises(ValueError, match=r"^adam: expected one of \['torch', 'keras'\], got 'sgd'"):
        tiny_config(adam="sgd")
    with pytest.raises(ValueError, match=r"^adam/cuda_graph: Keras' Adam changes eps every step"):
        tiny_config(adam="keras", cuda_graph=True)


def test_cuda_only_options_on_cpu(tmp_path):
    with pytest.raises(ValueError, match=r"^cuda_graph: needs a CUDA device"):
        train(tiny_config(device="cpu", cuda_graph=True), tmp_path / "a")
    with pytest.raises(ValueError, match=r"^compile_mode='reduce-overhead' needs compile=True"):
        tiny_config(compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match=r"^compile_mode"):
        tiny_config(compile=True, compile_mode="fastest")
    with pytest.raises(ValueError, match=r"^cuda_graph"):
        tiny_config(cuda_graph=1)


def test_fused_adam_on_the_cpu_trains_as_the_loop(tmp_path):
    # torch's fused Adam (one kernel per parameter group; `--fast` takes it on the CPU too) makes
    # the same update as its per-parameter loop: after 8 steps the weights agree to float rounding.
    train(tiny_config(device="cpu", fused_adam=True), tmp_path / "fused")
    train(tiny_config(device="cpu"), tmp_path / "loop")
    from problayers.train.checkpoint import load_checkpoint

    states = [load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("fused", "loop")]
    assert [s["optimizer"]["param_groups"][0]["fused"] for s in states] == [True, None]
    for name, fused in states[0]["model"].items():
        torch.testing.assert_close(fused, states[1]["model"][name], rtol=1e-4, atol=1e-5, msg=name)


def test_fast_step_options(tmp_path):
    history = train(tiny_config(epochs=1, channels_last=True), tmp_path)
    assert history[0]["test_neg_elbo"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["channels_last"] is True
    with pytest.raises(ValueError, match="precision"):
        tiny_config(precision="fp16")
    with pytest.raises(ValueError, match="compile"):
        tiny_config(compile="yes")
    from problayers.vae.runconfig import train_step_args

    assert train_step_args(tiny_config()) is None  # the trainer's own step
    assert train_step_args(tiny_config(precision="bf16", transposed_as_conv=True)) == {
        "precision": "bf16",
        "transposed_as_conv": True,
    }  # only what differs from make_train_step's defaults (and names them in errors)


def test_weight_averaging(tmp_path):
    from problayers.vae.experiment import load_test_images, test_metrics

    history = train(tiny_config(epochs=2, ema_decay=0.9), tmp_path)
    assert {"test_neg_elbo", "online_test_neg_elbo"} <= set(history[-1])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    averaged, cfg, _ = load_run(tmp_path, device="cpu")
    online, _, _ = load_run(tmp_path, device="cpu", online=True)
    for name, tensor in averaged.state_dict().items():
        assert torch.equal(tensor, state["averaged"][f"module.{name}"]), name
    for name, tensor in online.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    # The run's reported metrics are those of the averaged weights it saved.
    test_x = load_test_images(cfg, torch.device("cpu"))
    last = history[-1]
    assert test_metrics(averaged, test_x, cfg.eval_batch_size)["test_neg_elbo"] == last["test_neg_elbo"]
    assert test_metrics(online, test_x, cfg.eval_batch_size)["test_neg_elbo"] == last["online_test_neg_elbo"]
    assert len(resume(tmp_path, epochs=3)) == 3
    with pytest.raises(ValueError, match=r"^ema_decay: expected a number in \(0, 1\), got 1.0"):
        tiny_config(ema_decay=1.0)


def test_check_consistent_refuses_a_checkpoint_past_the_configs_epochs():
    cfg = tiny_config(epochs=2)
    check_consistent(cfg, cfg.to_json(), 2, "ckpt")
    with pytest.raises(CheckpointError, match="has trained 3 epochs"):
        check_consistent(cfg, cfg.to_json(), 3, "ckpt")


def test_check_consistent_refuses_another_runs_checkpoint():
    """config.json edited (or from another run) beside a checkpoint: resume followed config.json,
    another batch size and seed, and recorded nothing (hostile-files audit)."""
    cfg = tiny_config(epochs=2)
    other = {**cfg.to_json(), "batch_size": cfg.batch_size * 2, "seed": 7}
    want = (
        rf"^ckpt: written by another run .*batch_size {cfg.batch_size * 2} vs {cfg.batch_size}, seed 7 vs 0\)"
    )
    with pytest.raises(CheckpointError, match=want):
        check_consistent(cfg, other, 2, "ckpt")
    # what a resume may change, and rewrites in config.json before its next checkpoint
    resumed = {"epochs": 1, "lr": 0.5, "device": "cuda", "fused_adam": True, "resumed": [], "step_choice": {}}
    check_consistent(cfg, {**cfg.to_json(), **resumed}, 1, "ckpt")
    older = {k: v for k, v in cfg.to_json().items() if k not in ("logger", "ema_decay")}  # before the fields
    check_consistent(cfg, older, 1, "ckpt")


def test_a_subset_larger_than_the_data_is_refused():
    from problayers.vae import experiment

    with pytest.raises(ValueError, match=r"^train_subset: expected at most the 128 train images, got 129"):
        experiment._images(tiny_config(train_subset=129), "train")


def test_load_run_refuses_a_checkpoint_whose_averaging_the_config_does_not_say(tmp_path):
    # An EMA checkpoint beside a config without ema_decay was evaluated with the averaged
    # weights and labelled "online" (and the reverse); resume already refused it.
    train(tiny_config(epochs=1, ema_decay=0.9), tmp_path / "ema")
    cfg = json.loads((tmp_path / "ema" / "config.json").read_text())
    cfg["ema_decay"] = None
    (tmp_path / "ema" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"written with weight averaging, but the run's config.json has ema_decay None$"
    ):
        load_run(tmp_path / "ema", device="cpu")


def test_synthetic_data_is_a_fixed_train_and_test_set_whatever_the_seed():
    # As MNIST's: the run's seed picked the synthetic test set (another seed's training set).
    sets = [load_test_images(tiny_config(seed=s, synthetic=64), torch.device("cpu")) for s in (0, 1, 2)]
    assert torch.equal(sets[0], sets[1]) and torch.equal(sets[0], sets[2])
    train_set = _images(tiny_config(seed=1, synthetic=64), "train")
    assert torch.equal(train_set, _images(tiny_config(seed=2, synthetic=64), "train"))
    assert not torch.equal(train_set, _images(tiny_config(seed=0, synthetic=64), "test"))


def test_a_subset_does_not_keep_the_whole_data_set():
    # A view kept all 60,000 MNIST images (47 MB) alive for a run of a few hundred.
    images = _images(tiny_config(train_subset=16), "train")
    assert images.shape[0] == 16
    assert images.untyped_storage().nbytes() == images.numel() * images.element_size()


def test_test_metrics_builds_the_prior_without_a_graph(monkeypatch):
    # A VampPrior's prior runs the encoder on its pseudo-inputs: built with gradients on, its
    # graph was held through the whole evaluation.
    from problayers._state import first_floating_tensor
    from problayers.vae import experiment
    from problayers.vae.models import build_model

    seen = []

    def fake_evaluate(encode, decode, prior, x, batch_size):
        seen.append(first_floating_tensor(prior).requires_grad)  # the components' means
        return {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}

    monkeypatch.setattr(experiment, "evaluate", fake_evaluate)
    model = build_model(ModelConfig.for_model("mlp", latent_size=4, prior="vamp", prior_components=3))
    experiment.test_metrics(model, torch.zeros(2, 1, 28, 28), 2)
    assert seen == [False]
