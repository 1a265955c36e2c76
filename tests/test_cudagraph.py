"""The whole-step CUDA graph (problayers.train.cudagraph, ``make_train_step(cuda_graph=True)``).

Needs a GPU: skipped on CPU-only machines (CI), run on a lent GPU with
``python3 -m pytest tests/test_cudagraph.py`` (see docs/benchmarks.md). The option errors that
need no GPU are tested in tests/test_fastpath.py."""

from __future__ import annotations

import pytest
import torch

from problayers.train.averaging import EMA
from problayers.train.cudagraph import CUDAGraphStep
from problayers.train.fastpath import make_train_step
from problayers.train.trainer import Trainer, TrainerConfig
from problayers.vae.models import vae_loss
from test_fastpath import batches, small_seed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def graphed(lr=1e-3, **kwargs):
    torch.manual_seed(0)
    model = small_seed().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=True)
    return model, optimizer, make_train_step(model, optimizer, vae_loss, cuda_graph=True, **kwargs)


def cuda_batches(n, batch=16, seed=1):
    return [x.cuda() for x in batches((batch, 1, 28, 28), n=n, seed=seed)]


def test_captures_after_warmup_and_trains():
    _, _, step = graphed(lr=3e-3)
    assert isinstance(step, CUDAGraphStep) and step.options["cuda_graph"] is True
    data = cuda_batches(1)[0]
    losses = []
    for i in range(40):
        loss, metrics = step(data)
        losses.append(float(loss))
        assert step.captured == (i >= 3)  # 3 warm-up steps, then capture
        assert set(metrics) == {"recon", "kl"}
    assert step.replays == 37
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[3:8]) / 5 - 1.0  # replays keep training


def test_replays_draw_new_random_numbers():
    _, _, step = graphed(lr=0.0)  # no learning: the loss varies only through z ~ q
    data = cuda_batches(1)[0]
    losses = {float(step(data)[0]) for _ in range(10)}
    assert len(losses) > 5


def test_learning_rate_changes_reach_the_graph():
    model, optimizer, step = graphed(lr=1e-3)
    data = cuda_batches(1)[0]
    for _ in range(5):
        step(data)
    assert step.captured
    optimizer.param_groups[0]["lr"] = 0.0  # as a scheduler would set it
    before = [p.detach().clone() for p in model.parameters()]
    step(data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    optimizer.param_groups[0]["lr"] = 1e-3
    step(data)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert isinstance(optimizer.param_groups[0]["lr"], float)  # the group keeps its own value


def test_other_batch_shape_runs_the_ordinary_step():
    _, _, step = graphed()
    for x in cuda_batches(5):
        step(x)
    replays = step.replays
    loss, _ = step(cuda_batches(1, batch=8)[0])
    assert torch.isfinite(loss) and step.replays == replays


def test_bf16_channels_last():
    _, _, step = graphed(precision="bf16", channels_last=True)
    for x in cuda_batches(6):
        loss, _ = step(x)
    assert step.captured and torch.isfinite(loss)


def test_ema_follows_the_replayed_parameters():
    # `--ema-decay` with the graphed step: each update must read the parameters the replay
    # has just written (graph and EMA on the same stream, no copy in between), including the
    # channels_last ones of the fast step.
    model, _, step = graphed(lr=3e-3, precision="bf16", channels_last=True)
    ema = EMA(model, 0.9)
    reference = None
    for n, x in enumerate(cuda_batches(12)):
        step(x)
        ema.update(model)  # as Trainer does after every step, without a sync
        params = [p.detach().double().clone() for p in model.parameters()]
        weight = 1.0 - min(0.9, (1 + n) / (10 + n))  # EMA's warmed-up decay, update n
        if reference is None:
            reference = params
        else:
            reference = [r + (q - r) * weight for r, q in zip(reference, params, strict=True)]
    assert step.captured and step.replays == 8
    averaged = [p.double() for p in ema.module.parameters()]
    for a, r in zip(averaged, reference, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, p.double()) for a, p in zip(averaged, model.parameters(), strict=True))


def test_trainer_with_ema_and_the_graphed_step():
    model, optimizer, step = graphed(lr=3e-3, precision="bf16", channels_last=True)
    data = cuda_batches(6)
    seen = []

    def evaluate(m, epoch):
        seen.append(m)
        with torch.no_grad():
            return {"loss": float(vae_loss(m, data[0])[0])}

    ema = EMA(model, 0.99)
    trainer = Trainer(
        model,
        optimizer,
        vae_loss,
        lambda epoch: data,
        TrainerConfig(epochs=2, progress=False),
        step_fn=step,
        averaged=ema,
        evaluate=evaluate,
        log=lambda msg: None,
    )
    history = trainer.fit()
    assert ema.updates == 12 and step.replays == 8
    assert seen and all(m is ema.module for m in seen[::2])  # the epoch's metrics are the average's
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


def test_optimizer_must_be_capturable():
    model = small_seed().cuda()
    with pytest.raises(ValueError, match="capturable=True"):
        make_train_step(model, torch.optim.Adam(model.parameters(), fused=True), vae_loss, cuda_graph=True)
    with pytest.raises(ValueError, match="not with compile=True"):
        make_train_step(
            model,
            torch.optim.Adam(model.parameters(), capturable=True),
            vae_loss,
            cuda_graph=True,
            compile=True,
        )


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("hvae", {"prior": "vamp", "prior_components": 5, "objective": "iwae", "num_samples": 2}),
        ("mlp", {"posterior": "iaf", "objective": "dreg", "num_samples": 2, "kl_warmup_steps": 5}),
    ],
    ids=["hvae-vamp-iwae", "mlp-iaf-dreg-warmup"],
)
def test_zoo_models_capture_and_the_replays_train(name, options):
    # tests/test_zoo.py checks on the CPU that nothing in a zoo model's step is read back on the
    # host; here the capture itself, and that the graph keeps training.
    from problayers.vae.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig.for_model(name, latent_size=4, hidden_size=16, **options)
    model = build_model(cfg).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True, capturable=True)
    step = make_train_step(model, optimizer, vae_loss, cuda_graph=True)
    data = cuda_batches(1)[0]
    losses = [float(step(data)[0]) for _ in range(40)]
    assert step.captured and step.replays == 36
    assert sum(losses[-5:]) / 5 < sum(losses[3:8]) / 5
