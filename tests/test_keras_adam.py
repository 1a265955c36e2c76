"""KerasAdam follows tf_keras 2.18's Adam step for step (a fixture recorded once from tf_keras;
``fixtures/make_keras_adam.py`` is its command), unlike torch's Adam, and keeps torch's features."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from problayers.train.keras_adam import KerasAdam

FIXTURE = json.loads((Path(__file__).resolve().parent / "fixtures" / "keras_adam.json").read_text())
KW = {"learning_rate": "lr", "epsilon": "eps"}


def _kwargs(setting: dict) -> dict:
    out = {KW.get(k, k): v for k, v in setting.items() if k not in ("beta_1", "beta_2")}
    if "beta_1" in setting:
        out["betas"] = (setting["beta_1"], setting["beta_2"])
    return out


def _run(opt_cls, setting: dict, **extra) -> dict[int, torch.Tensor]:
    var = torch.tensor(FIXTURE["init"], dtype=torch.float64, requires_grad=True)
    opt = opt_cls([var], **_kwargs(setting), **extra)
    after = {}
    for t, g in enumerate(FIXTURE["grads"], start=1):
        var.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        after[t] = var.detach().clone()
    return after


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=["keras-defaults", "non-default"])
@pytest.mark.parametrize(
    "extra",
    [{}, {"foreach": False}, {"foreach": True}, {"fused": True}],
    ids=["default", "loop", "foreach", "fused"],  # fused: on the CPU, as `problayers train --fast` there
)
def test_matches_tf_keras(case, extra):
    # Compared as displacements from the initial values, to 2e-5 of each: tf_keras computes its
    # learning rate and bias corrections from ``tf.cast(python_float, float64)``, which rounds
    # lr, beta_1 and beta_2 to float32 first (a 6e-6 relative change of the step, measured:
    # with those three rounded the fixture's first step is reproduced to 0.0), while the moment
    # updates use them in float64. KerasAdam does not copy that rounding.
    init = torch.tensor(FIXTURE["init"], dtype=torch.float64)
    after = _run(KerasAdam, case["setting"], **extra)
    for step, want in case["after"].items():
        want_move = torch.tensor(want, dtype=torch.float64) - init
        torch.testing.assert_close(after[int(step)] - init, want_move, rtol=2e-5, atol=0)


def test_torch_adam_differs_where_gradients_are_small():
    # The reason the class exists: torch's epsilon (1e-8 after the bias correction) moves the
    # entries with tiny gradients by up to lr per step; Keras' barely moves them at first.
    case = FIXTURE["cases"][0]
    want = torch.tensor(case["after"]["1"], dtype=torch.float64)
    init = torch.tensor(FIXTURE["init"], dtype=torch.float64)
    torch_after = _run(torch.optim.Adam, {**case["setting"], "epsilon": 1e-7})[1]
    gap = (torch_after - want).abs() / (want - init).abs().clamp_min(1e-30)
    assert gap[:5].min() > 0.5  # the smallest-gradient entries: their steps differ by > 50%
    assert gap[-5:].max() < 1e-3  # the large-gradient ones agree


def test_checkpoint_round_trip_continues_the_same_trajectory():
    case = FIXTURE["cases"][1]
    var = torch.tensor(FIXTURE["init"], dtype=torch.float64, requires_grad=True)
    opt = KerasAdam([var], **_kwargs(case["setting"]))
    for g in FIXTURE["grads"][:10]:
        var.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    state = pickle.loads(pickle.dumps(opt.state_dict()))
    var2 = var.detach().clone().requires_grad_(True)
    opt2 = KerasAdam([var2], **_kwargs(case["setting"]))
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["iterations"] == 10
    for v, o in ((var, opt), (var2, opt2)):
        for g in FIXTURE["grads"][10:]:
            v.grad = torch.tensor(g, dtype=torch.float64)
            o.step()
    torch.testing.assert_close(var.detach(), var2.detach(), rtol=0, atol=0)
    init = torch.tensor(FIXTURE["init"], dtype=torch.float64)
    want_move = torch.tensor(case["after"]["30"], dtype=torch.float64) - init
    torch.testing.assert_close(var2.detach() - init, want_move, rtol=2e-5, atol=0)


def test_rebuilt_from_defaults_keeps_keras_epsilon():
    # the step probe rebuilds an optimizer as ``type(opt)(params, **opt.defaults)``
    p = torch.zeros(3, requires_grad=True)
    opt = KerasAdam([p], eps=1e-6)
    p.grad = torch.ones(3)
    opt.step()
    twin = type(opt)([torch.zeros(3, requires_grad=True)], **opt.defaults)
    assert twin.param_groups[0]["keras_eps"] == 1e-6 and twin.param_groups[0]["iterations"] == 0


def test_closure_and_groups_without_gradients():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = KerasAdam([{"params": [a]}, {"params": [b]}])

    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 2.0
    assert [g["iterations"] for g in opt.param_groups] == [1, 0]  # b had no gradient
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))


def test_capturable_is_refused():
    with pytest.raises(ValueError, match="capturable"):
        KerasAdam([torch.zeros(1, requires_grad=True)], capturable=True)
