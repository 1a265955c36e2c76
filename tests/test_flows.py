"""MADE's autoregressive property, the MAF bijection and the ``AutoregressiveTransform`` layer."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.distributions as D
from torch import nn
from torch.autograd.functional import jacobian

import problayers as pl


def _order(made: pl.AutoregressiveNetwork) -> torch.Tensor:
    return made.input_degrees


# -- MADE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=str)
def test_made_output_shape(batch):
    made = pl.AutoregressiveNetwork(3, 4, [8])
    assert made(torch.randn(*batch, 4)).shape == (*batch, 4, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_units": [16, 16]},
        {"hidden_units": [16, 16], "input_order": "right-to-left"},
        {"hidden_units": [7], "input_order": "random", "hidden_degrees": "random"},
        {"hidden_units": [12, 9], "input_order": [3, 1, 5, 2, 4]},
        {"hidden_units": []},
    ],
    ids=["left-to-right", "right-to-left", "random", "explicit", "no-hidden"],
)
def test_made_jacobian_is_triangular_in_the_input_order(kwargs):
    """d out[i, p] / d x[j] is zero unless x_j comes before x_i in the order (checked with the
    Jacobian); with tanh and 'equal' hidden degrees every allowed entry is also nonzero."""
    torch.manual_seed(0)
    d = 5
    made = pl.AutoregressiveNetwork(2, d, activation=torch.tanh, **kwargs)
    x = torch.randn(d)
    jac = jacobian(made, x)  # (d, params, d)
    order = _order(made)
    if isinstance(kwargs.get("input_order"), list):  # the order asked for, not another
        assert order.tolist() == kwargs["input_order"]
    allowed = order[None, :] < order[:, None]  # (i, j): x_j before x_i
    assert (jac.abs().amax(1)[~allowed] == 0).all()
    if kwargs.get("hidden_degrees", "equal") == "equal":
        assert (jac.abs().amin(1)[allowed] > 0).all()
    permuted = jac.abs().amax(1)[order.argsort()][:, order.argsort()]  # rows/cols in the order
    assert torch.equal(permuted, permuted.tril(-1))


def test_made_random_input_order_is_a_seeded_permutation():
    """``input_order="random"``: each network a permutation of ``1..d``, drawn from torch's
    generator (the same seed, the same order; not always the same order)."""
    d = 6
    torch.manual_seed(0)
    orders = [
        tuple(pl.AutoregressiveNetwork(2, d, [7], input_order="random").input_degrees.tolist())
        for _ in range(5)
    ]
    assert all(sorted(o) == list(range(1, d + 1)) for o in orders)
    assert len(set(orders)) > 1
    torch.manual_seed(0)
    assert (
        tuple(pl.AutoregressiveNetwork(2, d, [7], input_order="random").input_degrees.tolist()) == orders[0]
    )


@pytest.mark.parametrize("d,hidden_units", [(10, (2, 20)), (4, (3, 9, 2)), (6, (40,)), (1, (3,))])
def test_made_equal_hidden_degrees_are_tfps(d, hidden_units):
    """TFP's 'equal' rule (``_create_degrees``): ``max(low, ceil(k (d - 1) / (units + 1)))``,
    ``low`` the previous layer's lowest degree (capped at ``d - 1``). Without the ``max``, a
    narrow layer followed by a wide one has units that see no input at all."""
    made = pl.AutoregressiveNetwork(2, d, hidden_units)
    degrees = [made.input_degrees]
    for units in hidden_units:
        low = min(int(degrees[-1].min()), d - 1)
        k = torch.arange(1, units + 1)
        degrees.append(torch.maximum(torch.full((units,), low), torch.ceil(k * (d - 1) / (units + 1)).long()))
    for layer, prev, deg in zip(made.layers[:-1], degrees[:-1], degrees[1:], strict=True):
        assert torch.equal(layer.mask.bool(), deg[:, None] >= prev[None, :])
        if d > 1:
            assert layer.mask.sum(1).min() > 0  # every hidden unit sees an input


def test_made_is_linear_without_activation_and_has_masked_layers():
    made = pl.AutoregressiveNetwork(2, 3, [6], activation=None)
    x = torch.randn(3)
    torch.testing.assert_close(made(2 * x) - made(x), made(x) - made(torch.zeros(3)))
    masks = [layer.mask for layer in made.layers]
    assert [tuple(m.shape) for m in masks] == [(6, 3), (6, 6)]


# -- the bijection ----------------------------------------------------------------------------


def _made(d=3, seed=0):
    torch.manual_seed(seed)
    return pl.AutoregressiveNetwork(2, d, [16, 16], activation=torch.tanh)


@pytest.mark.parametrize("inverse", [False, True], ids=["maf", "iaf"])
def test_forward_inverts_inverse_and_log_det_is_the_jacobians(inverse):
    made = _made()
    t = pl.MaskedAutoregressiveTransform(made, cache_size=0, inverse=inverse)
    u = torch.randn(4, 3, dtype=torch.float32)
    y = t(u)  # d sequential passes
    torch.testing.assert_close(t.inv(y), u)  # one pass
    torch.testing.assert_close(t(t.inv(y)), y)
    for ui, yi in zip(u, y, strict=True):
        _, logdet = torch.linalg.slogdet(jacobian(t, ui))
        torch.testing.assert_close(t.log_abs_det_jacobian(ui, yi), logdet, rtol=1e-4, atol=1e-5)
    assert t.log_abs_det_jacobian(u, y).shape == (4,)


def test_autoregressive_transform_log_prob_is_change_of_variables():
    """log p(x) = log p_base(f^{-1}(x)) + log |det d f^{-1} / dx| with the Jacobian from autograd."""
    made = _made(d=4)
    base = D.Independent(D.Normal(torch.zeros(4), torch.ones(4) * 1.5), 1)
    dist = pl.AutoregressiveTransform(made)(base)
    x = torch.randn(6, 4) * 2
    inverse = pl.MaskedAutoregressiveTransform(made, cache_size=0).inv
    expected = []
    for xi in x:
        _, logdet = torch.linalg.slogdet(jacobian(inverse, xi))
        expected.append(base.log_prob(inverse(xi)) + logdet)
    torch.testing.assert_close(dist.log_prob(x), torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_the_networks_outputs_are_shift_then_log_scale():
    """TFP's convention, ``shift, log_scale = made(.).unbind(-1)``, written out: the MAF's density
    at ``x`` is ``p_base((x - shift(x)) exp(-log_scale(x))) exp(-sum log_scale(x))``; the IAF's
    forward (TFP's ``Invert`` of the MAF) takes ``u`` to ``(u - shift(u)) exp(-log_scale(u))``.
    A swap of the two outputs is a bijection too, so the Jacobian tests above do not see it."""
    made = _made(d=3)
    with torch.no_grad():  # the two outputs of each coordinate clearly apart
        made.layers[-1].bias.copy_(torch.tensor([0.7, -0.9]).repeat(3))
    base = D.Independent(D.Normal(torch.zeros(3), 1.0), 1)
    x = torch.randn(5, 3)
    shift, log_scale = made(x).unbind(-1)  # (5, 3) each
    maf = pl.AutoregressiveTransform(made)(base)
    expected = base.log_prob((x - shift) * torch.exp(-log_scale)) - log_scale.sum(-1)
    torch.testing.assert_close(maf.log_prob(x), expected)
    iaf = pl.MaskedAutoregressiveTransform(made, cache_size=0, inverse=True)
    torch.testing.assert_close(iaf(x), (x - shift) * torch.exp(-log_scale))


@pytest.mark.parametrize(
    "base,batch",
    [
        (D.Normal(torch.zeros(3), 1.0), ()),
        (D.Normal(torch.zeros(4, 3), 1.0), (4,)),
        (D.Independent(D.Normal(torch.zeros(2, 5, 3), 1.0), 1), (2, 5)),
    ],
    ids=["event-from-batch", "batch", "independent"],
)
def test_layer_shapes_and_sample_round_trip(base, batch):
    made = _made()
    dist = pl.AutoregressiveTransform(made)(base)
    assert dist.batch_shape == batch and dist.event_shape == (3,)
    x = dist.sample((7,))
    assert x.shape == (7, *batch, 3)
    assert dist.log_prob(x).shape == (7, *batch)
    assert dist.shape == (*batch, 3)  # the tensor value: one sample


def test_samples_carry_gradients_to_the_made():
    made = _made()
    out = pl.AutoregressiveTransform(made)(D.Normal(torch.zeros(3), 1.0))
    (out * 1.0).square().sum().backward()
    assert all(p.grad is not None for p in made.parameters())


def _flow_model(inverse: bool) -> nn.Sequential:
    made = pl.AutoregressiveNetwork(2, 3, hidden_units=(8,))
    return nn.Sequential(
        nn.Linear(5, 6), pl.IndependentNormal(3), pl.AutoregressiveTransform(made, inverse=inverse)
    )


@pytest.mark.parametrize("inverse", [False, True], ids=["maf", "iaf"])
def test_output_runs_the_network_at_the_weights_of_a_functional_call(inverse):
    # The output's log_prob runs the MADE after the forward; it must use the weights that
    # torch.func.functional_call gave the forward, not the module's own (restored by then).
    torch.manual_seed(0)
    model, twin = _flow_model(inverse), _flow_model(inverse)
    other = {k: torch.randn_like(v) for k, v in model.named_parameters() if k.startswith("2.")}
    twin.load_state_dict({**model.state_dict(), **other})
    x, y = torch.randn(4, 5), torch.randn(4, 3)
    got = torch.func.functional_call(model, other, (x,)).log_prob(y)
    torch.testing.assert_close(got, twin(x).log_prob(y).detach())
    assert not torch.allclose(got, model(x).log_prob(y).detach())

    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = torch.func.grad(lambda p: -torch.func.functional_call(model, p, (x,)).log_prob(y).mean())(params)
    (-model(x).log_prob(y).mean()).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)


@pytest.mark.parametrize("inverse", [False, True], ids=["maf", "iaf"])
def test_output_made_without_grad_computes_without_grad(inverse):
    model, x, y = _flow_model(inverse), torch.randn(4, 5), torch.zeros(4, 3)
    with torch.no_grad():
        out = model(x)
    assert not out.log_prob(y).requires_grad
    with torch.inference_mode():
        out = model(x)
    torch.testing.assert_close(out.log_prob(y), model(x).log_prob(y).detach())


def test_stacked_flows_fit_a_banana_better_than_any_gaussian():
    torch.manual_seed(0)
    x1 = torch.randn(256)
    data = torch.stack([x1, 0.8 * x1**2 - 0.8 + 0.3 * torch.randn(256)], -1)  # (256, 2)
    gaussian = D.MultivariateNormal(data.mean(0), covariance_matrix=torch.cov(data.T))
    flow = nn.Sequential(
        pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 2, [32, 32])),
        pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 2, [32, 32], input_order="right-to-left")),
    )
    base = D.Normal(torch.zeros(2), torch.ones(2))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(120):
        opt.zero_grad()
        loss = -flow(base).log_prob(data).mean()
        loss.backward()
        opt.step()
    gaussian_nll = -gaussian.log_prob(data).mean()  # the best Gaussian (maximum likelihood)
    assert loss < gaussian_nll - 1.0


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        ({"params": 0, "event_shape": 3}, ValueError, "params"),
        ({"params": 2, "event_shape": (2, 3)}, ValueError, "event_shape"),
        ({"params": 2, "event_shape": 3, "hidden_units": [0]}, ValueError, "hidden_units"),
        ({"params": 2, "event_shape": 3, "hidden_units": 8}, TypeError, "hidden_units: expected a sequence"),
        ({"params": 2, "event_shape": 3, "input_order": "middle-out"}, ValueError, "input_order"),
        ({"params": 2, "event_shape": 3, "input_order": [1, 1, 2]}, ValueError, "input_order"),
        ({"params": 2, "event_shape": 3, "hidden_degrees": "equal-ish"}, ValueError, "hidden_degrees"),
        ({"params": 2, "event_shape": 3, "activation": "rectifier"}, ValueError, "activation"),
        ({"params": 2, "event_shape": 3, "activation": 1.0}, TypeError, "activation"),
    ],
)
def test_made_bad_arguments(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        pl.AutoregressiveNetwork(**kwargs)


def test_transform_errors():
    with pytest.raises(ValueError, match=r"params=2.*params=3"):
        pl.AutoregressiveTransform(pl.AutoregressiveNetwork(3, 2))
    with pytest.raises(TypeError, match="made"):
        pl.AutoregressiveTransform(nn.Linear(2, 4))
    layer = pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3))
    with pytest.raises(ValueError, match=r"AutoregressiveTransform.*R\^3.*event_shape \(4,\)"):
        layer(D.Independent(D.Normal(torch.zeros(4), 1.0), 1))
    with pytest.raises(TypeError, match="expected a Distribution"):
        layer(torch.zeros(3))
    with pytest.raises(ValueError, match=r"AutoregressiveNetwork: expected input of shape \(\.\.\., 3\)"):
        layer.made(torch.zeros(2, 4))
    for name in ("inverse", "validate_args"):
        with pytest.raises(TypeError, match=rf"^{name}: expected True or False, got 1$"):
            pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3), **{name: 1})


@pytest.mark.parametrize("validate_args", [False, True])
def test_transform_validates_only_when_asked(validate_args):
    layer = pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3), validate_args=validate_args)
    base = D.Independent(D.Normal(torch.zeros(4, 3), 1.0, validate_args=False), 1, validate_args=False)
    out = layer(base)
    assert out._validate_args is validate_args
    nan = torch.full((4, 3), float("nan"))
    if validate_args:
        with pytest.raises(ValueError, match="support"):
            out.log_prob(nan)
    else:
        assert out.log_prob(nan).isnan().all()


def test_random_hidden_degrees_cover_1_to_d_minus_1():
    # Left-to-right input order: a hidden unit of degree k sees inputs 1..k, so its mask row sums to k.
    torch.manual_seed(0)
    made = pl.AutoregressiveNetwork(2, 4, hidden_units=(200,), hidden_degrees="random")
    degrees = made.layers[0].mask.sum(-1).long()
    assert set(degrees.tolist()) == {1, 2, 3}


@pytest.mark.parametrize("hidden_degrees", ["equal", "random"])
def test_made_built_on_meta_is_a_made_after_to_empty_and_reset_parameters(hidden_degrees):
    # torch's idiom for meta-device init (FSDP's default param_init_fn): to_empty, then
    # reset_parameters; the masks and degrees come back as constructed (they were garbage).
    torch.manual_seed(0)
    reference = pl.AutoregressiveNetwork(2, event_shape=3, hidden_units=(5, 4), hidden_degrees=hidden_degrees)
    torch.manual_seed(0)
    with torch.device("meta"):
        made = pl.AutoregressiveNetwork(2, event_shape=3, hidden_units=(5, 4), hidden_degrees=hidden_degrees)
    made.to_empty(device="cpu")
    with torch.no_grad():  # what uninitialized memory may hold
        for b in made.buffers():
            b.fill_(7)
    for module in made.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    assert torch.equal(made.input_degrees, reference.input_degrees)
    for mine, theirs in zip(made.layers, reference.layers, strict=True):
        assert torch.equal(mine.mask, theirs.mask)
    x = torch.randn(1, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(made(x)[0, 0].sum(), x)  # output 0 sees no input
    assert torch.equal(grad, torch.zeros(1, 3))


@pytest.mark.parametrize("inverse", [False, True], ids=["maf", "iaf"])
def test_a_forward_leaves_no_reference_cycle(inverse):
    # torch keeps a transform's inverse on it, and the inverse the transform: a cycle, here
    # holding the transform's cached (x, y) pair and so the forward's graph until Python's cycle
    # collector ran (the zoo's IAF posterior in a loop without backward: memory audit).
    made, loc = _made(), torch.zeros(3, requires_grad=True)
    layer = pl.AutoregressiveTransform(made, inverse=inverse)
    layer(D.Normal(loc * 1.0, 1.0)).log_prob(torch.zeros(3))  # first use
    while gc.collect():  # what earlier tests left (a compiled step's trace): gone before the count
        pass
    gc.disable()
    try:
        out = layer(D.Normal(loc * 1.0, 1.0))
        out.log_prob(out + 0).sum()
        del out
        assert gc.collect() == 0  # nothing of the forward was left for the cycle collector
    finally:
        gc.enable()
