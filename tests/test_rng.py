"""The generators a run draws from: forked around seeded evaluations, saved in checkpoints, for
a device other than the CPU and CUDA too. No mps device here: a stand-in generator takes the
place of ``torch.mps``'s (portability audit: an evaluation on mps re-seeded the training noise,
and a resumed mps run restarted it)."""

from __future__ import annotations

import pytest
import torch

from problayers.train import rng, trainstate
from problayers.train.checkpoint import CheckpointError
from problayers.train.trainer import Trainer, TrainerConfig

MPS = torch.device("mps")


@pytest.fixture
def fake_mps(monkeypatch):
    """``torch.mps``'s generator, as a state this test reads and sets."""
    state = {"mps": torch.arange(8, dtype=torch.uint8)}

    def get_rng_state(device="mps"):
        return state["mps"].clone()

    def set_rng_state(new_state, device="mps"):
        state["mps"] = new_state.clone()

    monkeypatch.setattr(torch.mps, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.mps, "set_rng_state", set_rng_state)
    return state


def test_device_generator_is_the_devices_own_module():
    assert rng.device_generator(torch.device("cpu")) is None
    assert rng.device_generator(torch.device("meta")) is None
    assert rng.device_generator(MPS) is torch.mps
    assert rng.device_generator(torch.device("cuda")) is torch.cuda


def test_fork_rng_restores_the_cpu_and_the_devices_generator(fake_mps):
    before_cpu, before_mps = torch.get_rng_state(), fake_mps["mps"].clone()
    with rng.fork_rng(MPS):
        torch.rand(3)
        torch.mps.set_rng_state(torch.zeros(8, dtype=torch.uint8))  # what a seeded draw on mps does
    assert torch.equal(torch.get_rng_state(), before_cpu) and torch.equal(fake_mps["mps"], before_mps)
    with rng.fork_rng(torch.device("cpu")):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before_cpu)


def test_seeded_evaluations_seed_no_other_devices_generator(tmp_path, fake_mps, monkeypatch):
    """The test evaluation and the pictures seeded with torch.manual_seed inside the fork: the
    generators of every other device (CUDA's, queued before CUDA starts) were left re-seeded
    (global-state audit). Now only the forked ones are seeded, with the same draws."""
    from problayers.vae.experiment import test_metrics
    from problayers.vae.models import ModelConfig, build_model
    from problayers.vae.pictures import save_pictures

    seeded: list = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: seeded.append(("cuda", s)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: seeded.append(("cuda", s)))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda s: seeded.append(("mps", s)))
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_size=2, base_depth=2))
    x = (torch.rand(8, 1, 28, 28) < 0.3).float()
    seeded.clear()
    before = torch.get_rng_state()
    first = test_metrics(model, x, 4)
    save_pictures(model, x, tmp_path, n=2)
    assert seeded == [] and torch.equal(torch.get_rng_state(), before)
    assert test_metrics(model, x, 4) == first  # seeded: the same numbers every time
    with rng.fork_rng(torch.device("cpu"), 5):
        drawn = torch.rand(3)
    assert torch.equal(drawn, torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert seeded == [] and torch.equal(torch.get_rng_state(), before)
    with rng.fork_rng(MPS, 7):  # the device's own generator is seeded, then restored
        pass
    assert seeded == [("mps", 7)] and torch.equal(fake_mps["mps"], torch.arange(8, dtype=torch.uint8))


def _trainer(tmp_path):
    model = torch.nn.Linear(2, 1)
    batches = [(torch.randn(4, 2), torch.randn(4, 1))]
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), 0.1),
        lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
        lambda epoch: batches,
        TrainerConfig(epochs=1, progress=False),
        run_dir=tmp_path,
        log=lambda msg: None,
    )


def test_a_checkpoint_keeps_and_restores_the_devices_generator(tmp_path, fake_mps, monkeypatch):
    trainer = _trainer(tmp_path)
    monkeypatch.setattr(trainstate, "_device", lambda t: MPS)  # as if the model were on mps
    state = trainstate.trainer_state(trainer)
    assert torch.equal(state["rng_mps"], torch.arange(8, dtype=torch.uint8))
    fake_mps["mps"] = torch.zeros(8, dtype=torch.uint8)  # the resumed process starts elsewhere
    trainstate.load_trainer_state(trainer, state, "ckpt")
    assert torch.equal(fake_mps["mps"], torch.arange(8, dtype=torch.uint8))
    wrong = r"ckpt: rng_mps: expected a random state \(a uint8 vector\), got"
    with pytest.raises(CheckpointError, match=wrong):
        trainstate.load_trainer_state(trainer, {**state, "rng_mps": torch.zeros(2, 2)}, "ckpt")
    plain = {k: v for k, v in state.items() if k != "rng_mps"}  # written before the key existed
    trainstate.load_trainer_state(trainer, plain, "ckpt")
