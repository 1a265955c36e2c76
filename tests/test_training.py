"""The generic trainer: fit, non-finite loss, checkpoints and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from problayers.training import NonFiniteLossError, Trainer, TrainerConfig, fit


def regression_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def make_model():
    return nn.Sequential(nn.Linear(3, 2), pl.IndependentNormal(1))


def nll(model, batch):
    x, y = batch
    return -model(x).log_prob(y).mean()


def test_fit_trains_like_any_model():
    torch.manual_seed(0)
    model = make_model()
    history = fit(model, regression_data(), nll, torch.optim.Adam(model.parameters(), 0.05), epochs=30)
    assert len(history) == 30 and history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
    assert {"seconds", "images_per_s", "steps"} <= set(history[0])


def test_fit_collects_added_kl_losses():
    torch.manual_seed(0)
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    model = nn.Sequential(
        nn.Linear(3, pl.MultivariateNormalTriL.params_size(2)),
        pl.MultivariateNormalTriL(2, activity_regularizer=pl.KLDivergenceRegularizer(prior)),
    )

    def loss(m, batch):
        nll = -m(batch[0]).log_prob(torch.zeros(16, 2)).mean()
        kl = pl.collect_losses(m, clear=True)  # after the forward that added it
        return nll + kl, {"kl": kl.detach()}

    history = fit(model, regression_data(), loss, torch.optim.Adam(model.parameters(), 0.01), epochs=2)
    assert history[-1]["train_kl"] > 0


def _trainer(run_dir, epochs=3, loss_fn=nll, seed=0):
    torch.manual_seed(seed)
    model = make_model()
    data = regression_data()

    def batches(epoch):  # deterministic per epoch, as the MNIST batches are
        g = torch.Generator().manual_seed(100 + epoch)
        return [data[i] for i in torch.randperm(len(data), generator=g).tolist()]

    def noisy_loss(m, batch):  # uses the global RNG, like rsample
        return loss_fn(m, batch) + 0.01 * torch.randn(())

    return Trainer(
        model,
        torch.optim.Adam(model.parameters(), 0.05),
        noisy_loss,
        batches,
        TrainerConfig(epochs=epochs, progress=False),
        run_dir=run_dir,
        meta={"m": 1},
        log=lambda msg: None,
    )


def test_resume_matches_uninterrupted_bitwise(tmp_path):
    full = _trainer(tmp_path / "a", epochs=4)
    full.fit()
    part = _trainer(tmp_path / "b", epochs=2)
    part.fit()
    resumed = _trainer(tmp_path / "b", epochs=4, seed=99)  # different init: all comes from the checkpoint
    assert resumed.resume() == {"m": 1}
    assert resumed.epoch == 2
    resumed.fit()
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def exploding(m, batch):
        calls["n"] += 1
        loss = nll(m, batch)
        return loss * float("nan") if calls["n"] > 6 else loss

    trainer = _trainer(tmp_path, epochs=3, loss_fn=exploding)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint \\(epoch 1\\)"):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainerConfig(epochs=0)
    with pytest.raises(ValueError, match="log_every"):
        TrainerConfig(log_every=-1)


def test_empty_epoch_is_an_error():
    model = make_model()
    with pytest.raises(ValueError, match="no batch"):
        fit(model, [], nll, torch.optim.SGD(model.parameters(), 0.1))
