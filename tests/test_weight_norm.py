"""``WeightNorm``: TFP's numbers (recorded from TFP 0.25 by tests/fixtures/make_tfp_weight_norm.py),
the data-dependent initialization, the weight's direction/length split, state dicts, errors.
The generic tests (compile, autocast, pickle, meta device, a distribution as input) run it from
tests/layer_cases.py MODEL_CASES."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import problayers as pl

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "tfp_weight_norm.json").read_text())


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _from_tfp(name: str, case: dict) -> tuple[pl.WeightNorm, torch.Tensor, torch.Tensor, callable]:
    """The TFP case as a torch layer (NCHW, torch weight layouts) and its inputs; ``back`` puts
    an output into TFP's layout."""
    kernel, bias = _t(case["kernel"]), _t(case["bias"])
    if name.startswith("dense"):
        layer = nn.Linear(kernel.shape[0], kernel.shape[1], dtype=torch.float64)
        weight, x1, x2 = kernel.T, _t(case["x1"]), _t(case["x2"])
        back = lambda y: y  # noqa: E731
    else:  # Keras (kh, kw, in, out) -> torch (out, in, kh, kw); NHWC -> NCHW
        layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0], dtype=torch.float64)
        weight = kernel.permute(3, 2, 0, 1)
        x1, x2 = (_t(case[k]).permute(0, 3, 1, 2) for k in ("x1", "x2"))
        back = lambda y: y.permute(0, 2, 3, 1)  # noqa: E731
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return pl.WeightNorm(layer, data_init=case["data_init"]), x1, x2, back


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_matches_tfp(name):
    case = FIXTURE["cases"][name]
    layer, x1, x2, back = _from_tfp(name, case)
    with torch.no_grad():
        y1, y2 = back(layer(x1)), back(layer(x2))
    np.testing.assert_allclose(y1.numpy(), case["y1"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y2.numpy(), case["y2"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer.g.detach().numpy(), case["g"], rtol=1e-9)
    np.testing.assert_allclose(layer.layer.bias.detach().numpy(), case["bias_after"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "make,x,channel",
    [
        (lambda: nn.Linear(4, 3), torch.randn(8, 16, 4) * 3 + 1, -1),
        (lambda: nn.Conv2d(2, 5, 3), torch.randn(16, 2, 8, 8) + 2, 1),
        (lambda: nn.ConvTranspose2d(2, 5, 3, stride=2), torch.randn(16, 2, 4, 4) - 1, 1),
        (lambda: nn.Conv1d(2, 3, 3), torch.randn(2, 10) * 4, 0),  # unbatched: (C, L)
    ],
    ids=["Linear (2 batch dims)", "Conv2d", "ConvTranspose2d", "Conv1d unbatched"],
)
def test_first_batch_is_normalized_later_ones_are_not(make, x, channel):
    torch.manual_seed(0)
    layer = pl.WeightNorm(make())
    assert not layer.initialized
    with torch.no_grad():
        y = layer(x)
    dims = [d for d in range(y.dim()) if d != channel % y.dim()]
    var, mean = torch.var_mean(y, dim=dims, correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=0)
    assert layer.initialized
    g = layer.g.detach().clone()
    layer(x * 2 + 1)  # no second initialization
    torch.testing.assert_close(layer.g.detach(), g, rtol=0, atol=0)


def test_without_data_init_the_layer_computes_what_it_did():
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    want = linear(x)
    layer = pl.WeightNorm(linear, data_init=False)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer.g.detach(), layer.v.detach().norm(dim=1))  # g = ||v||


def test_without_data_init_g_is_the_norm_of_v_at_the_first_call():
    """TFP sets g = ||v|| at the first call (_init_norm), not at build: a direction set after
    wrapping keeps its own lengths; a restored uninitialized state is not data-initialized."""
    torch.manual_seed(0)
    layer = pl.WeightNorm(nn.Linear(4, 3), data_init=False)
    with torch.no_grad():
        nn.init.normal_(layer.v, std=5.0)
    x = torch.randn(16, 4)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.v, layer.layer.bias))
    torch.testing.assert_close(layer.g.detach(), layer.v.detach().norm(dim=1))
    fresh = pl.WeightNorm(nn.Linear(4, 3), data_init=True)  # never called: initialized=False
    plain = pl.WeightNorm(nn.Linear(4, 3), data_init=False)
    plain.load_state_dict(fresh.state_dict())
    y = plain(x * 3 + 2)
    torch.testing.assert_close(plain.g.detach(), plain.v.detach().norm(dim=1))  # g = ||v||, no data init
    assert y.mean(0).abs().max() > 0.1


def test_weight_is_g_times_the_direction_of_v_and_both_train():
    torch.manual_seed(0)
    layer = pl.WeightNorm(nn.Conv2d(2, 3, 3), data_init=False)
    x = torch.randn(2, 2, 5, 5)
    w = layer.weight
    unit = w.flatten(1).norm(dim=1)
    torch.testing.assert_close(unit, layer.g.detach().abs())  # each unit's length is |g|
    with torch.no_grad():
        before = layer(x)
        layer.v.mul_(7.0)  # the direction is v's; its length does not count
    torch.testing.assert_close(layer(x), before)
    layer(x).square().sum().backward()
    assert layer.g.grad.abs().sum() > 0 and layer.v.grad.abs().sum() > 0
    assert layer.layer.bias.grad.abs().sum() > 0
    assert {name for name, _ in layer.named_parameters()} == {"v", "g", "layer.bias"}


def test_a_loaded_state_dict_is_not_initialized_again():
    torch.manual_seed(0)
    trained = pl.WeightNorm(nn.Linear(4, 3))
    trained(torch.randn(32, 4) * 5)
    fresh = pl.WeightNorm(nn.Linear(4, 3))
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(6, 4)
    torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)  # no data init on x
    assert fresh.initialized and "initialized=True" in repr(fresh)


def test_initialized_under_autocast_uses_its_own_bias():
    """Autocast keeps its bf16 copy of a parameter for the whole region: the init computes its
    statistics apart from the parameters, so the forwards after it see the bias it set."""
    torch.manual_seed(0)
    layer = pl.WeightNorm(nn.Linear(4, 3))
    x = torch.randn(64, 4) * 2 + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = layer(x), layer(x)
    assert layer.layer.bias.abs().max() > 0.1
    for y in (first, second):
        assert y.float().mean(0).abs().max() < 0.05  # bf16 rounding; a zero bias gave ~0.44
    torch.testing.assert_close(second.float(), layer(x), atol=0.05, rtol=0.02)


def test_a_zero_unit_stays_zero():
    layer = pl.WeightNorm(nn.Linear(4, 3))
    with torch.no_grad():
        layer.v[2] = 0.0  # TFP's l2_normalize divides by max(||v||, 1e-6)
    y = layer(torch.randn(16, 4))
    assert torch.isfinite(y).all() and torch.isfinite(layer.weight).all()
    y.sum().backward()
    assert torch.isfinite(layer.v.grad).all()


def test_first_batch_too_small_and_lazy_layers_are_named():
    layer = pl.WeightNorm(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"WeightNorm: the first batch .* got input of shape \(4,\)"):
        layer(torch.randn(4))  # one value per unit: no spread to scale by
    with pytest.raises(ValueError, match=r"got input of shape \(1, 4\)"):
        layer(torch.randn(1, 4))
    layer(torch.randn(8, 4))
    assert layer(torch.randn(4)).shape == (3,)  # once initialized, any input
    with pytest.raises(ValueError, match="WeightNorm: layer: LazyLinear has no weight yet"):
        pl.WeightNorm(nn.LazyLinear(3))


def test_on_the_meta_device_and_a_meta_state_dict():
    with torch.device("meta"):
        layer = pl.WeightNorm(nn.Linear(4, 3))
        other = pl.WeightNorm(nn.Linear(4, 3))
    assert {t.device.type for t in layer.state_dict().values()} == {"meta"}
    other.load_state_dict(layer.state_dict())  # a meta state dict: nothing known yet
    assert not other._ready


def test_export_needs_the_first_forward_done():
    layer = pl.WeightNorm(nn.Linear(4, 3))
    x = torch.randn(8, 4)
    with pytest.raises(RuntimeError, match=r"WeightNorm: run one forward .* before exporting"):
        torch.export.export(layer, (x,))
    layer(x)
    program = torch.export.export(layer, (x,))
    y = torch.randn(8, 4)  # another batch: the program does not initialize again
    torch.testing.assert_close(program.module()(y), layer(y))


def test_pl_export_refuses_an_uninitialized_weight_norm_and_leaves_the_model_as_it_was():
    """The export's example input must not become the data-dependent initialization (an
    all-zeros example would set g to 1e5 in the user's own model)."""
    decoder = nn.Sequential(pl.WeightNorm(nn.Linear(2, 6)), pl.IndependentBernoulli(6))
    g = decoder[0].g.detach().clone()
    with pytest.raises(RuntimeError, match=r"^WeightNorm '0': run one forward .* before exporting$"):
        pl.export(decoder, (torch.zeros(4, 2),))
    assert not decoder[0]._ready and torch.equal(decoder[0].g, g)
    z = torch.randn(8, 2)
    decoder(z)  # the initialization, on real data
    exported = pl.export(decoder, (torch.zeros(4, 2),))
    torch.testing.assert_close(exported(z).logits, decoder(z).logits)


@pytest.mark.parametrize(
    "make,x",
    [
        (lambda: nn.Linear(4, 3), torch.randn(8, 4)),
        (lambda: nn.Conv2d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 5)),
        (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), torch.randn(2, 2, 4, 4)),
    ],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates jit.trace
def test_traces_with_torch_jit_after_the_first_forward(make, x):
    layer = pl.WeightNorm(make())
    with pytest.raises(RuntimeError, match=r"WeightNorm: run one forward .* before exporting"):
        torch.jit.trace(layer, (x,))
    layer(x)
    traced = torch.jit.trace(layer, (x,))
    y = torch.randn_like(x)
    torch.testing.assert_close(traced(y), layer(y))
    assert "weight" not in vars(layer.layer)  # the call's weight is gone after it


def test_the_first_call_through_torch_func_is_refused_later_calls_follow_the_tensors_passed():
    layer = pl.WeightNorm(nn.Linear(4, 3))
    x = torch.randn(8, 4)
    clones = {k: v.detach().clone() for k, v in layer.named_parameters()}
    with pytest.raises(RuntimeError, match="first call initializes the module's own g and bias"):
        torch.func.functional_call(layer, clones, (x,))
    with pytest.raises(RuntimeError, match="first call initializes the module's own g and bias"):
        torch.func.vmap(lambda p: torch.func.functional_call(layer, p, (x,)), randomness="same")(
            torch.func.stack_module_state([layer, layer])[0]
        )
    assert not layer.initialized and layer.g.equal(clones["g"])  # nothing half-initialized
    out = layer(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    params = {k: v.detach() * 2 for k, v in layer.named_parameters()}  # g, v, bias doubled
    torch.testing.assert_close(torch.func.functional_call(layer, params, (x,)), 2 * out)
    grads = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).square().sum())(params)
    assert set(grads) == {"g", "v", "layer.bias"} and all(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize(
    "make,error,match",
    [
        (
            lambda: pl.WeightNorm(nn.LSTM(3, 4)),
            TypeError,
            "WeightNorm: layer: expected one of Linear, Conv1d",
        ),
        (lambda: pl.WeightNorm(nn.ConvTranspose2d(2, 4, 3, groups=2)), ValueError, "groups=1, got 2"),
        (lambda: pl.WeightNorm(nn.Linear(3, 4), data_init=1), TypeError, "data_init: expected a bool"),
    ],
)
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_threads_may_share_one_module():
    # Nothing of the wrapped module changes during a call (an inference server's threads).
    import threading

    layer = pl.WeightNorm(nn.Linear(4, 3))
    x = torch.randn(8, 4)
    layer(x)
    want = layer(x).detach()
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(1500):
                if not torch.equal(layer(x).detach(), want):
                    raise AssertionError("another output")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_small_direction_norm_is_not_clamped_away():
    # w = g v / |v|: a direction of norm 1e-4 is still a unit direction times g.
    wn = pl.WeightNorm(nn.Linear(2, 1), data_init=False)
    with torch.no_grad():
        wn.v.copy_(torch.tensor([[1e-4, 0.0]]))
        wn.g.fill_(1.0)
    torch.testing.assert_close(wn.weight, torch.tensor([[1.0, 0.0]]))
