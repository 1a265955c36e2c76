"""Experiment loggers: the trainer's logger calls (window means at global steps, epoch records,
close), the TensorBoard logger's event files read back, and ``--logger tensorboard`` end to end."""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import pytest
import torch
from torch import nn

from problayers.cli import main
from problayers.train import Trainer, TrainerConfig
from problayers.train.loggers import LOGGERS, Logger, TensorBoardLogger, numeric_fields
from problayers.vae.experiment import RunConfig, resume, train
from problayers.vae.models import ModelConfig

TINY = ["--latent-size", "4", "--base-depth", "4", "--batch-size", "32", "--no-progress"]


def _events(log_dir):
    """{tag: [(step, value)]} of the scalars and {tag: [(step, width, height)]} of the images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


class Recorder:
    def __init__(self):
        self.calls = []

    def log_scalars(self, step, scalars):
        self.calls.append(("scalars", step, dict(scalars)))

    def log_epoch(self, epoch, record):
        self.calls.append(("epoch", epoch, dict(record)))

    def close(self):
        self.calls.append(("close",))


def _toy_trainer(loggers, epochs=2):
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    batches = [torch.full((2, 1), float(i)) for i in range(5)]  # the metric "v" of batch i is i

    def loss_fn(model, x):
        return model(x).pow(2).mean(), {"v": x.mean()}

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    config = TrainerConfig(epochs=epochs, log_every=2, progress=False)
    return Trainer(model, optimizer, loss_fn, lambda e: batches, config, log=lambda m: None, loggers=loggers)


def test_trainer_sends_window_means_at_global_steps_then_epochs_then_closes():
    rec = Recorder()
    assert isinstance(rec, Logger)
    history = _toy_trainer([rec]).fit()
    scalars = [(c[1], c[2]["train/v"]) for c in rec.calls if c[0] == "scalars"]
    # every 2 steps and the epoch's last step: the mean of v over those steps; steps count on
    assert scalars == [(2, 0.5), (4, 2.5), (5, 4.0), (7, 0.5), (9, 2.5), (10, 4.0)]
    assert all(set(c[2]) == {"train/loss", "train/v"} for c in rec.calls if c[0] == "scalars")
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    assert [(c[1], c[2]) for c in epochs] == [(1, history[0]), (2, history[1])]
    assert rec.calls[-1] == ("close",) and rec.calls.count(("close",)) == 1


def test_a_resumed_trainer_continues_the_step_count():
    first = _toy_trainer([], epochs=1)
    first.fit()
    rec = Recorder()
    second = _toy_trainer([rec], epochs=2)
    second.load_state_dict(first.state_dict())
    assert second.global_step == 5
    second.fit()
    assert [c[1] for c in rec.calls if c[0] == "scalars"] == [7, 9, 10]


def test_loggers_are_closed_when_training_fails():
    rec = Recorder()
    trainer = _toy_trainer([rec])
    trainer.loss_fn = lambda model, x: (model(x).sum() * float("nan"), {})
    with pytest.raises(Exception, match="loss is nan"):
        trainer.fit()
    assert rec.calls == [("close",)]


def test_tensorboard_logger_event_files_read_back(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_scalars(3, {"train/loss": 1.5})
    record = {"epoch": 1, "test_neg_elbo": 99.5, "steps": 3, "flag": True, "note": "text"}
    assert numeric_fields(record) == {"test_neg_elbo": 99.5, "steps": 3.0}
    logger.log_epoch(1, record)
    logger.log_images(1, {"pictures/grid": torch.arange(12, dtype=torch.uint8).reshape(3, 4).numpy()})
    logger.close()
    scalars, images = _events(tmp_path)
    assert scalars == {
        "train/loss": [(3, 1.5)],
        "epoch/test_neg_elbo": [(1, 99.5)],
        "epoch/steps": [(1, 3.0)],
    }
    assert images == {"pictures/grid": [(1, 4, 3)]}


def _config(**changes):
    model = ModelConfig(latent_size=4, base_depth=4)
    base = dict(model=model, epochs=1, batch_size=32, synthetic=128, log_every=2, progress=False)
    return RunConfig(**{**base, "device": "cpu", "logger": "tensorboard", **changes})


def test_train_and_resume_write_tensorboard(tmp_path):
    run = tmp_path / "run"
    train(_config(), run)
    scalars, images = _events(run / "tensorboard")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train/loss", "train/recon", "train/kl"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [2, 4]  # 128 / 32 = 4 steps, every 2
    mean = sum(v for _, v in scalars["train/loss"]) / 2  # two windows of 2 steps: their mean
    assert mean == pytest.approx(record["train_loss"], rel=1e-5)
    for key, value in numeric_fields(record).items():
        assert scalars[f"epoch/{key}"] == [(1, pytest.approx(value, rel=1e-6))]
    from PIL import Image

    for name in ("prior_samples", "reconstructions"):  # the pictures save_pictures draws
        with Image.open(run / f"{name}.png") as image:
            width, height = image.size
        assert images[f"pictures/{name}"] == [(1, width, height)]

    # A killed run logged step 6 after its last checkpoint (epoch 1): the resume hides it.
    ghost = TensorBoardLogger(run / "tensorboard")
    ghost.log_scalars(6, {"train/loss": 1e6})
    ghost.close()
    time.sleep(1.1)  # event files are read in the order of their names (seconds first)
    resume(run, epochs=2)
    scalars, images = _events(run / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6, 8]
    assert all(v < 1e6 for _, v in scalars["train/loss"])
    assert [s for s, _ in scalars["epoch/test_neg_elbo"]] == [1, 2]
    assert [s for s, *_ in images["pictures/prior_samples"]] == [1, 2]


def test_logger_none_writes_no_events(tmp_path):
    train(_config(logger="none", synthetic=64), tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_the_logger_field_of_config_json():
    cfg = _config().to_json()
    assert cfg["logger"] == "tensorboard"
    del cfg["logger"]  # a config.json of an older version
    assert RunConfig.from_json(cfg).logger == "none"
    with pytest.raises(ValueError, match="logger: expected one of"):
        RunConfig.from_json({**cfg, "logger": "wandb"})
    assert dataclasses.replace(_config(), logger="none").logger in LOGGERS


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "x"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--synthetic",
                "64",
                *TINY,
                "--logger",
                "tensorboard",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("problayers: error: --logger tensorboard: needs the tensorboard package")
    assert "pip install 'tensorboard>=2.14'" in err and "\n" not in err
    assert not out.exists()  # refused before the run directory was made


def test_logger_choices_are_the_registry():
    from problayers.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (action,) = [a for a in train._actions if a.dest == "logger"]
    assert list(action.choices) == list(LOGGERS) and action.default == "none"
