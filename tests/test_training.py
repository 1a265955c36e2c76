"""The generic trainer: fit, non-finite loss, checkpoints and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from problayers.train.averaging import EMA
from problayers.train.checkpoint import CheckpointError
from problayers.train.trainer import NonFiniteLossError, Trainer, TrainerConfig, fit


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


def test_fit_takes_a_dataloader_without_a_length_with_its_progress_bar():
    # len() of a DataLoader over an IterableDataset raises TypeError: the bar crashed (API audit)
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from regression_data()

    torch.manual_seed(0)
    model = make_model()
    data = torch.utils.data.DataLoader(Stream(), batch_size=None)
    history = fit(model, data, nll, torch.optim.Adam(model.parameters(), 0.05), epochs=2, progress=True)
    assert [r["steps"] for r in history] == [len(regression_data())] * 2


@pytest.mark.parametrize(
    ("metric", "error"),
    [(0.5, None), (torch.ones(1), None), (torch.ones(3), "a tensor of shape [(]3,[)]"), ("x", "got str")],
)
def test_metrics_are_numbers_or_one_element_tensors(metric, error):
    model = make_model()

    def loss(m, batch):
        return nll(m, batch), {"a": metric}

    run = lambda: fit(model, regression_data(), loss, torch.optim.Adam(model.parameters(), 0.05))  # noqa: E731
    if error is None:
        assert run()[0]["train_a"] == pytest.approx(float(metric))
    else:  # a float crashed with AttributeError 'clone', a vector with torch.stack's message (API audit)
        with pytest.raises(
            ValueError, match=rf"^metric 'a': expected a number or a one-element tensor .*{error}"
        ):
            run()


def _trainer(run_dir, epochs=3, loss_fn=nll, seed=0, schedule=False, ema=False, evaluate=None):
    torch.manual_seed(seed)
    model = make_model()
    data = regression_data()
    optimizer = torch.optim.Adam(model.parameters(), 0.05)
    scheduler = None
    if schedule:  # 4 steps per epoch, over 4 epochs
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=16)

    def batches(epoch):  # deterministic per epoch, as the MNIST batches are
        g = torch.Generator().manual_seed(100 + epoch)
        return [data[i] for i in torch.randperm(len(data), generator=g).tolist()]

    def noisy_loss(m, batch):  # uses the global RNG, like rsample
        return loss_fn(m, batch) + 0.01 * torch.randn(())

    return Trainer(
        model,
        optimizer,
        noisy_loss,
        batches,
        TrainerConfig(epochs=epochs, progress=False),
        run_dir=run_dir,
        meta={"m": 1},
        log=lambda msg: None,
        scheduler=scheduler,
        averaged=EMA(model, 0.8) if ema else None,
        evaluate=evaluate,
    )


@pytest.mark.parametrize(
    "schedule, ema", [(False, False), (True, False), (False, True)], ids=["constant-lr", "onecycle", "ema"]
)
def test_resume_matches_uninterrupted_bitwise(tmp_path, schedule, ema):
    full = _trainer(tmp_path / "a", epochs=4, schedule=schedule, ema=ema)
    full.fit()
    part = _trainer(tmp_path / "b", epochs=2, schedule=schedule, ema=ema)
    part.fit()
    # different init: all comes from the checkpoint
    resumed = _trainer(tmp_path / "b", epochs=4, seed=99, schedule=schedule, ema=ema)
    assert resumed.resume() == {"m": 1}
    assert resumed.epoch == 2
    resumed.fit()
    for (name, a), b in zip(
        full.state_dict()["model"].items(), resumed.state_dict()["model"].values(), strict=True
    ):
        assert torch.equal(a, b), name
    if ema:
        assert resumed.averaged.updates == full.averaged.updates == 16
        for (name, a), b in zip(
            full.averaged.state_dict().items(), resumed.averaged.state_dict().values(), strict=True
        ):
            assert a == b if name.endswith("_extra_state") else torch.equal(a, b), name
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_scheduler_steps_once_per_optimizer_step(tmp_path):
    trainer = _trainer(None, epochs=2, schedule=True)
    trainer.fit()
    assert trainer.scheduler.last_epoch == 8  # 2 epochs x 4 batches
    assert "scheduler" in trainer.state_dict()


def test_scheduler_errors(tmp_path):
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), 0.05)
    other = torch.optim.Adam(make_model().parameters(), 0.05)
    args = (model, optimizer, nll, lambda e: regression_data())
    with pytest.raises(TypeError, match=r"^scheduler"):
        Trainer(*args, scheduler="cosine")
    with pytest.raises(ValueError, match=r"^scheduler"):
        Trainer(*args, scheduler=torch.optim.lr_scheduler.StepLR(other, 1))
    plain = _trainer(tmp_path / "c", epochs=1)
    plain.fit()
    with pytest.raises(CheckpointError, match="without a learning-rate scheduler"):
        _trainer(tmp_path / "c", epochs=4, schedule=True).resume()
    # the other way round it was accepted, and the lr stayed where the schedule stopped (API audit)
    _trainer(tmp_path / "s", epochs=1, schedule=True).fit()
    with pytest.raises(CheckpointError, match="written with a learning-rate scheduler, resumed without it"):
        _trainer(tmp_path / "s", epochs=4).resume()


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"batches": regression_data()}, TypeError, r"^batches: .* got list \(data itself: pass lambda"),
        ({"optimizer": nll}, TypeError, r"^optimizer: expected a torch.optim.Optimizer, got function"),
        ({"loss_fn": "nll"}, TypeError, r"^loss_fn: expected a callable"),
        # Keras' compile(loss=...) habit: failed inside torch at the first step (argument audit)
        ({"loss_fn": nn.MSELoss()}, TypeError, r"^loss_fn: .* got the torch loss MSELoss \(wrap it: lambda"),
        ({"config": 3}, TypeError, r"^config: expected a TrainerConfig, got int"),
        ({"evaluate": {"a": 1}}, TypeError, r"^evaluate: expected a callable or None, got dict"),
        ({"meta": {"data": Path("x")}}, TypeError, r"^meta: expected JSON values"),
        ({"plateau": True}, TypeError, r"^scheduler: ReduceLROnPlateau steps on a metric"),
    ],
)
def test_trainer_arguments_of_the_wrong_kind_are_named_when_built(change, error, match):
    """Each failed later (at the first step, or after an epoch when the checkpoint was written)
    with torch's or json's message (API audit)."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), 0.05)
    args = {"optimizer": optimizer, "loss_fn": nll, "batches": lambda e: regression_data()}
    kwargs = {k: v for k, v in change.items() if k not in args and k != "plateau"}
    if change.get("plateau"):
        kwargs["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    args.update({k: v for k, v in change.items() if k in args})
    with pytest.raises(error, match=match):
        Trainer(model, args["optimizer"], args["loss_fn"], args["batches"], **kwargs)
    with pytest.raises(TypeError, match=r"^progress: expected True or False, got 'no'"):
        TrainerConfig(progress="no")


@pytest.mark.parametrize(
    "loss_fn, error, match",
    [
        (lambda m, b: (nll(m, b), [1.0]), TypeError, r"^loss_fn: expected its metrics as a dict"),
        (lambda m, b: -m(b[0]).log_prob(b[1]), ValueError, r"^loss_fn: expected a 0-dim loss .* \(16,\)"),
    ],
)
def test_a_loss_fn_result_of_the_wrong_kind_is_named(loss_fn, error, match):
    model = make_model()
    with pytest.raises(error, match=match):
        fit(model, regression_data(), loss_fn, torch.optim.Adam(model.parameters(), 0.05))


def test_evaluate_may_return_tensors_and_numpy_numbers_and_dict_batches_count_their_examples(tmp_path):
    """Both were written to metrics.jsonl only after the epoch, where json refused them."""
    model = make_model()
    data = [{"x": x, "y": y} for x, y in regression_data()]  # 4 batches of 16

    def evaluate(m, epoch):
        return {"t": torch.tensor(1.5), "n": np.float32(2.5), "k": np.int64(3)}

    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), 0.05),
        lambda m, b: nll(m, (b["x"], b["y"])),
        lambda e: data,
        TrainerConfig(epochs=1, progress=False),
        evaluate=evaluate,
        run_dir=tmp_path,
        log=lambda msg: None,
    )
    record = trainer.fit()[0]
    assert (record["t"], record["n"], record["k"]) == (1.5, 2.5, 3)
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["k"] == 3
    assert record["images_per_s"] * record["seconds"] == pytest.approx(64)  # examples, not steps
    with pytest.raises(TypeError, match=r"^evaluate: expected it to return a dict"):
        fit(
            model,
            regression_data(),
            nll,
            torch.optim.Adam(model.parameters(), 0.05),
            evaluate=lambda m, e: [1],
        )


def test_another_optimizer_or_schedule_on_resume_is_one_line(tmp_path):
    """Resumed with SGD where Adam wrote the checkpoint (or a cosine schedule where a one-cycle one
    did): torch loaded it and failed at the first step with a KeyError (API audit)."""
    _trainer(tmp_path / "a", epochs=1, schedule=True).fit()
    resumed = _trainer(tmp_path / "a", epochs=4, schedule=True)
    model = resumed.model
    resumed.optimizer = torch.optim.SGD(model.parameters(), 0.05)
    resumed.scheduler = torch.optim.lr_scheduler.OneCycleLR(resumed.optimizer, max_lr=0.05, total_steps=16)
    with pytest.raises(CheckpointError, match=r"optimizer: written by another optimizer than this run's SGD"):
        resumed.resume()
    assert "momentum" in resumed.optimizer.param_groups[0]  # its own settings, restored
    resumed.optimizer = torch.optim.Adam(model.parameters(), 0.05)
    resumed.scheduler = torch.optim.lr_scheduler.LambdaLR(resumed.optimizer, lambda step: 1.0)
    with pytest.raises(CheckpointError, match=r"scheduler: written by another kind of .* LambdaLR"):
        resumed.resume()


def test_resume_steps_with_the_algorithm_the_run_built(tmp_path):
    """A checkpoint's weight decay, maximize and AdamW's decoupling replaced the run's on resume,
    silently (a maximizing Adam trained away from the optimum); amsgrad, which needs its own
    state, is refused (hostile-files audit). Schedules keep moving lr and betas as saved."""
    _trainer(tmp_path, epochs=1, schedule=True).fit()
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    saved_betas = state["optimizer"]["param_groups"][0]["betas"]
    for group in state["optimizer"]["param_groups"]:
        group.update(maximize=True, weight_decay=100.0, decoupled_weight_decay=True)
    torch.save(state, path)
    resumed = _trainer(tmp_path, epochs=4, schedule=True)
    resumed.resume()
    group = resumed.optimizer.param_groups[0]
    assert (group["maximize"], group["weight_decay"], group["decoupled_weight_decay"]) == (False, 0, False)
    assert tuple(group["betas"]) == tuple(saved_betas)  # the one-cycle schedule's, as saved
    for group in state["optimizer"]["param_groups"]:
        group.update(amsgrad=True)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"written by another optimizer .* differ in amsgrad"):
        _trainer(tmp_path, epochs=4, schedule=True).resume()


def test_a_model_with_a_sparse_buffer_resumes(tmp_path):
    """The new dense-weights check refused the trainer's own checkpoint of a model holding a
    sparse buffer (diff review): layouts are compared with the model's."""

    def build(run_dir, epochs):
        torch.manual_seed(0)
        model = make_model()
        model.register_buffer("adjacency", torch.eye(3).to_sparse())
        optimizer = torch.optim.Adam(model.parameters(), 0.05)
        config = TrainerConfig(epochs=epochs, progress=False)
        return Trainer(
            model, optimizer, nll, lambda e: regression_data(), config, run_dir=run_dir, log=lambda m: None
        )

    build(tmp_path, 1).fit()
    resumed = build(tmp_path, 2)
    resumed.resume()
    assert resumed.model.adjacency.layout == torch.sparse_coo and resumed.epoch == 1


def test_weight_averaging_is_evaluated_and_checkpointed(tmp_path):
    seen = []

    def evaluate(model, epoch):
        seen.append(model)
        return {"test_loss": float(epoch)}

    trainer = _trainer(tmp_path / "e", epochs=2, ema=True, evaluate=evaluate)
    history = trainer.fit()
    assert trainer.averaged.updates == 8  # once per optimizer step
    # The averaged model gives the epoch's metrics, the trained one the online_ ones.
    assert seen == [trainer.averaged.module, trainer.model] * 2
    assert trainer.result_model is trainer.averaged.module
    assert {"test_loss", "online_test_loss"} <= set(history[-1])
    assert "averaged" in trainer.state_dict()
    assert not torch.equal(trainer.averaged.module[0].weight, trainer.model[0].weight)
    plain = _trainer(tmp_path / "p", epochs=1)
    plain.fit()
    assert plain.result_model is plain.model
    with pytest.raises(CheckpointError, match="without weight averaging"):
        _trainer(tmp_path / "p", epochs=2, ema=True).resume()
    with pytest.raises(CheckpointError, match="written with weight averaging, resumed without it"):
        _trainer(tmp_path / "e", epochs=3).resume()  # the average would have been dropped


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


@pytest.mark.parametrize("part", [slice(None), (0, 0)], ids=["whole-weight", "one-element"])
def test_weights_made_non_finite_by_an_epochs_last_update_are_not_saved(tmp_path, part):
    """The loss of each step is finite, but epoch 2's last update (its gradient NaN: d/dw sqrt(w
    - w)) makes the weights NaN (all of them, or one element): the checkpoint of epoch 1 stays,
    and the error says so."""
    calls = {"n": 0}

    def nan_gradient_at_step_8(m, batch):
        calls["n"] += 1
        loss = nll(m, batch)
        if calls["n"] == 8:  # 4 steps per epoch: epoch 2's last
            w = m[0].weight[part]
            loss = loss + torch.sqrt(w - w).sum()  # value 0, gradient NaN
        return loss

    trainer = _trainer(tmp_path, epochs=3, loss_fn=nan_gradient_at_step_8)
    with pytest.raises(
        NonFiniteLossError, match=r"weight\(s\) 0.weight not finite after epoch 2.*epoch 1\) is kept"
    ):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.parametrize(
    "extra, phrase",
    [
        ({}, r"averaged: does not fit \(EMA state: updates: expected an int >= 0, got None\)"),
        ({"updates": 8, "decay": 5.0}, r"EMA state: decay: expected a number in \(0, 1\), got 5.0"),
        ({"updates": 8, "decay": 0.5}, r"averaged: decay 0.5 differs from the run's 0.8"),
    ],
    ids=["empty", "decay-5", "other-decay"],
)
def test_resume_validates_the_averaged_state(tmp_path, extra, phrase):
    _trainer(tmp_path, epochs=1, ema=True).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["averaged"]["_extra_state"] = extra
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=phrase):
        _trainer(tmp_path, epochs=3, ema=True).resume()


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainerConfig(epochs=0)
    with pytest.raises(ValueError, match="log_every"):
        TrainerConfig(log_every=-1)


def test_empty_epoch_is_an_error():
    model = make_model()
    with pytest.raises(ValueError, match="no batch"):
        fit(model, [], nll, torch.optim.SGD(model.parameters(), 0.1))


def test_a_generator_for_several_epochs_is_refused_before_training():
    """A generator is used up by the first epoch: the second would have no batch."""
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    data = (batch for batch in regression_data())
    with pytest.raises(ValueError, match=r"^data: expected a re-iterable .* for 2 epochs, got a generator"):
        fit(model, data, nll, torch.optim.SGD(model.parameters(), 0.1), epochs=2)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    history = fit(model, iter(regression_data()), nll, torch.optim.Adam(model.parameters(), 0.05))
    assert len(history) == 1  # one epoch: an iterator is fine


def test_non_finite_loss_in_the_first_epoch_says_no_checkpoint(tmp_path):
    def nan_loss(m, batch):
        return nll(m, batch) * float("nan")

    with pytest.raises(NonFiniteLossError, match=r"no checkpoint was written \(no epoch completed\)"):
        _trainer(tmp_path, epochs=2, loss_fn=nan_loss).fit()
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(NonFiniteLossError, match="nothing was saved"):
        _trainer(None, epochs=2, loss_fn=nan_loss).fit()


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (lambda s: s.pop("rng_cpu"), "missing 'rng_cpu'"),
        (lambda s: s.update(epoch=7), r"epoch: expected an int in 0\.\.3"),
        (lambda s: s.update(epoch=True), "epoch: expected an int"),
        (lambda s: s.update(history="not json"), "history/meta"),
        (lambda s: s.update(history="[]"), "history/meta"),
        (lambda s: s.update(rng_cpu=torch.zeros(3)), "rng_cpu: expected a CPU random state"),
        (lambda s: s["model"].update({"0.weight": torch.zeros(1)}), r"'0.weight': expected shape \(2, 3\)"),
        (lambda s: s["optimizer"].update(param_groups=[]), "0 parameter groups"),
        (lambda s: s.update(world_size=0), "world_size"),
    ],
)
def test_resume_validates_the_checkpoint(tmp_path, edit, phrase):
    _trainer(tmp_path, epochs=1).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=phrase) as info:
        _trainer(tmp_path, epochs=3).resume()
    assert str(tmp_path / "checkpoint.pt") in str(info.value) and "\n" not in str(info.value)


def test_images_per_s_counts_examples():
    # 4 batches of 16 examples an epoch (regression_data): 64 images in the epoch's seconds.
    model = make_model()
    history = fit(model, regression_data(), nll, torch.optim.Adam(model.parameters(), 0.05), epochs=2)
    for record in history:
        assert record["steps"] == 4
        assert record["images_per_s"] * record["seconds"] == pytest.approx(64)


def test_every_epoch_trains_in_training_mode_after_an_evaluation(tmp_path):
    # An evaluate callback that leaves the model in eval mode (as evaluation code does) must not
    # make the next epoch train with BatchNorm's running statistics or a frozen warm-up.
    modes = []

    def recording_loss(m, batch):
        modes.append(m.training)
        return nll(m, batch)

    def evaluate(m, epoch):
        m.eval()
        return {"x": 0.0}

    _trainer(tmp_path, epochs=3, loss_fn=recording_loss, evaluate=evaluate).fit()
    assert len(modes) == 12 and all(modes)


@pytest.mark.parametrize("given_step", [False, True], ids=["default-step", "compiled-step"])
def test_a_dropped_trainer_frees_its_model_without_a_collection(given_step):
    # A bound method of itself kept in the trainer (its default step_fn), or in a compiled
    # step's wrapper, made a cycle: a finished run's model, optimizer state and data stayed
    # allocated until Python's cycle collector ran (sweeps in a notebook piled them up).
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), 0.05)
        step = pl.train.make_train_step(model, opt, nll, compile=True) if given_step else None
        trainer = Trainer(
            model, opt, nll, lambda epoch: regression_data(), TrainerConfig(epochs=1), step_fn=step
        )
        assert trainer.step_fn == (step or trainer.step)  # what the epochs run, read without a cycle
        if not given_step:
            trainer.fit()  # the compiled one is only built (compiling is slow), the cycle is there
        dead = weakref.ref(model)
        del model, opt, step, trainer
        assert dead() is None
    finally:
        gc.enable()
