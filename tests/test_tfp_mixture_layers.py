"""TFP's distribution_layer_test.py, translated: MixtureLogistic, MixtureNormal,
MixtureSameFamily and the VariationalGaussianProcess end to end (issue 16).

See tests/tfp_cases.py for how TFP's Keras mechanics are translated.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from tfp_cases import (
    DTYPES,
    adam_steps,
    mvn_tril_params,
    nll_minibatches,
    softplus_inverse,
    state_dict_copy,
    uniform,
)

# -- distribution_layer_test.py: _MixtureLayerTest (MixtureLogistic, MixtureNormal) --------------------

MIXTURES = {"logistic": (pl.MixtureLogistic, pl.Logistic), "normal": (pl.MixtureNormal, D.Normal)}


def check_mixture(name: str, t: torch.Tensor, x: D.Distribution, k: int, batch) -> None:
    _, dist_class = MIXTURES[name]
    assert isinstance(x, D.MixtureSameFamily)
    assert isinstance(x.mixture_distribution, D.Categorical)
    assert isinstance(x.component_distribution, D.Independent)
    assert isinstance(x.component_distribution.base_dist, dist_class)
    assert x.mean.dtype == t.dtype
    base = x.component_distribution.base_dist
    per_component = (*batch, k, -1)
    t_back = torch.cat(
        [
            x.mixture_distribution.logits,
            torch.cat(
                [base.loc.reshape(per_component), softplus_inverse(base.scale).reshape(per_component)], -1
            ).reshape(*batch, -1),
        ],
        dim=-1,
    )
    assert t_back.dtype == t.dtype
    # torch stores the mixture logits normalized.
    expected = torch.cat([t[..., :k].log_softmax(-1), t[..., k:]], dim=-1)
    torch.testing.assert_close(t_back, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(MIXTURES))
def test_mixture_new_round_trips_its_params(name, dtype):
    """distribution_layer_test.py _MixtureLayerTest.test_new"""
    torch.manual_seed(42)
    layer_class = MIXTURES[name][0]
    k, event_shape, batch = 4, 3, (4, 2)
    t = uniform((*batch, layer_class.params_size(k, event_shape)), dtype=dtype)
    x = layer_class.new(t, k, event_shape, validate_args=True)
    assert x.batch_shape == batch and x.event_shape == (3,)
    check_mixture(name, t, x, k, batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(MIXTURES))
def test_mixture_layer_round_trips_its_params(name, dtype):
    """distribution_layer_test.py _MixtureLayerTest.test_layer"""
    torch.manual_seed(42)
    layer_class = MIXTURES[name][0]
    k, event_shape, batch = 3, (4, 2), (7, 3)
    t = uniform((*batch, layer_class.params_size(k, event_shape)), dtype=dtype)
    x = layer_class(k, event_shape, validate_args=True)(t)
    assert x.batch_shape == batch and x.event_shape == event_shape
    check_mixture(name, t, x, k, batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(MIXTURES))
def test_mixture_serialization(name, dtype):
    """distribution_layer_test.py _MixtureLayerTest.test_serialization"""
    torch.manual_seed(42)
    layer_class = MIXTURES[name][0]
    k, event_shape, batch_size = 3, (), 7
    p = layer_class.params_size(k, event_shape)

    def build():
        return nn.Sequential(nn.Linear(p, p, dtype=dtype), layer_class(k, event_shape, validate_args=True))

    model = build()
    copy = state_dict_copy(model, build)
    x = uniform((batch_size, p), dtype=dtype)
    assert torch.equal(model(x).mean, copy(x).mean)
    assert model(x).mean.dtype == dtype
    ones = torch.ones(3, 2, batch_size, *event_shape, dtype=dtype)
    assert torch.equal(model(x).log_prob(ones), copy(x).log_prob(ones))


def cardioid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = uniform((n, 1), -math.pi, math.pi)
    r = 2 * (1 - torch.cos(t))
    x = r * torch.sin(t) + 0.1 * torch.randn(n, 1)
    y = r * torch.cos(t) + 0.1 * torch.randn(n, 1)
    return x, y


MDN_HEADS = {
    "MixtureLogistic": (lambda: pl.MixtureLogistic.params_size(5, [1]), lambda: pl.MixtureLogistic(5, [1])),
    "MixtureNormal": (lambda: pl.MixtureNormal.params_size(5, [1]), lambda: pl.MixtureNormal(5, [1])),
    "MixtureSameFamily": (
        lambda: pl.MixtureSameFamily.params_size(5, pl.IndependentNormal.params_size([1])),
        lambda: pl.MixtureSameFamily(5, pl.IndependentNormal([1])),
    ),
}


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: pl.MixtureNormal(3, 2, **kw),
        lambda **kw: pl.MixtureLogistic(3, 2, **kw),
        lambda **kw: pl.MixtureSameFamily(3, pl.IndependentNormal(2), **kw),
    ],
    ids=["normal", "logistic", "same-family"],
)
def test_mixture_value_is_tfps_sample_with_its_gradient(make):
    """TFP's default value, ``tfd.Distribution.sample``, draws every component reparameterized
    and keeps the drawn one: the draw is torch's ``sample()``'s (same seed, same numbers), and
    the gradient reaches the drawn component's location (1) and no other, nor the mixing
    logits (0), as TFP's; ``"sample"`` gives none."""
    layer = make()
    torch.manual_seed(0)
    params = torch.randn(6, pl.MixtureNormal.params_size(3, 2))  # (6, 3 + 3 * 4)
    per_component = params[:, 3:].view(6, 3, 4)  # (6, K, loc 2 + raw scale 2)
    per_component[..., :2] *= 20  # locs far apart, scales ~0.007: the value says its component
    per_component[..., 2:] = -5.0
    params = params.requires_grad_()
    torch.manual_seed(1)
    out = layer(params)
    value = pl.convert_to_tensor(out)  # (6, 2)
    torch.manual_seed(1)
    assert torch.equal(value.detach(), out.sample())
    value.sum().backward()
    locs = params.detach()[:, 3:].reshape(6, 3, 4)[..., :2]  # (6, K, 2)
    drawn = (value.detach()[:, None, :] - locs).abs().sum(-1).argmin(-1)  # (6,)
    loc_grad = params.grad[:, 3:].reshape(6, 3, 4)[..., :2]  # (6, K, 2)
    expected = torch.nn.functional.one_hot(drawn, 3).float()[..., None].expand(6, 3, 2)
    assert torch.equal(loc_grad, expected)
    assert torch.equal(params.grad[:, :3], torch.zeros(6, 3))  # the logits: none
    assert not pl.convert_to_tensor(make(convert_to_tensor_fn="sample")(params)).requires_grad


def test_auto_value_of_a_mixture_under_independent_is_the_drawn_components():
    """``"auto"`` (``DistributionLambda``'s default) looks through ``Independent`` to a mixture
    of reparameterizable components: TFP's gradient, torch's draw."""
    loc = torch.randn(4, 2, 3, requires_grad=True)  # (B, event 2, K)

    def make(t):
        components = D.Normal(t, 0.1)  # batch (4, 2, 3)
        mixture = D.MixtureSameFamily(D.Categorical(logits=torch.zeros(4, 2, 3)), components)
        return D.Independent(mixture, 1)  # batch (4,), event (2,)

    torch.manual_seed(2)
    out = pl.DistributionLambda(make)(loc)
    value = pl.convert_to_tensor(out)  # (4, 2)
    torch.manual_seed(2)
    assert torch.equal(value.detach(), out.sample())
    value.sum().backward()
    assert torch.equal(loc.grad.sum(-1), torch.ones(4, 2))  # one component each: its loc


def test_auto_value_of_a_transformed_mixture_is_the_transformed_draw():
    """A mixture of log-normals, ``TransformedDistribution(MixtureSameFamily(...), Exp)``: TFP's
    ``sample`` transforms the mixture's draw, so its gradient reaches the drawn component's loc
    as ``exp(x) = value``; torch's ``sample()`` has the same numbers and no gradient."""
    loc = torch.tensor([[0.5, -1.0, 2.0]] * 4, requires_grad=True)  # (B, K)

    def make(t):
        mixture = D.MixtureSameFamily(D.Categorical(logits=torch.zeros(4, 3)), D.Normal(t, 1e-3))
        return D.TransformedDistribution(mixture, [D.ExpTransform()])  # batch (4,), event ()

    torch.manual_seed(3)
    out = pl.DistributionLambda(make)(loc)
    value = pl.convert_to_tensor(out)  # (4,)
    torch.manual_seed(3)
    assert torch.equal(value.detach(), out.sample())
    value.sum().backward()
    drawn = (value.detach().log()[:, None] - loc.detach()).abs().argmin(-1)  # (4,)
    expected = torch.zeros(4, 3)
    expected[torch.arange(4), drawn] = value.detach()
    torch.testing.assert_close(loc.grad, expected)


@pytest.mark.parametrize("head", list(MDN_HEADS))
def test_mixture_density_network_on_a_cardioid(head):
    """distribution_layer_test.py _MixtureLogisticTest/_MixtureNormalTest/_MixtureSameFamilyTest.test_doc_string"""  # noqa: E501
    torch.manual_seed(0)
    params_size, make_head = MDN_HEADS[head]
    assert params_size() == 15
    n = 2000
    x, y = cardioid(n)
    model = nn.Sequential(nn.Linear(1, 12), nn.ReLU(), nn.Linear(12, 15), make_head())
    nll = lambda: -model(x).log_prob(y).mean()  # noqa: E731
    before = nll().item()
    adam_steps(model, nll_minibatches(model, x, y, 100), steps=20, lr=0.02)  # one epoch
    assert nll().item() < before


# -- distribution_layer_test.py: _MixtureSameFamilyTest ------------------------------------------------


def check_mvn_mixture(t: torch.Tensor, x: D.Distribution, k: int, batch) -> None:
    assert isinstance(x, D.MixtureSameFamily)
    assert isinstance(x.mixture_distribution, D.Categorical)
    assert isinstance(x.component_distribution, D.MultivariateNormal)
    t_back = torch.cat(
        [x.mixture_distribution.logits, mvn_tril_params(x.component_distribution).reshape(*batch, -1)], -1
    )
    expected = torch.cat([t[..., :k].log_softmax(-1), t[..., k:]], dim=-1)
    torch.testing.assert_close(t_back, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixture_same_family_new_of_multivariate_normal_tril(dtype):
    """distribution_layer_test.py _MixtureSameFamilyTest.test_new"""
    torch.manual_seed(42)
    k, batch, d = 4, (4, 2), 3
    cps = pl.MultivariateNormalTriL.params_size(d)
    t = uniform((*batch, pl.MixtureSameFamily.params_size(k, cps)), dtype=dtype)
    component = pl.MultivariateNormalTriL(d, validate_args=True)
    x = pl.MixtureSameFamily.new(t, k, component, validate_args=True)
    assert x.batch_shape == batch and x.event_shape == (d,) and x.mean.dtype == dtype
    check_mvn_mixture(t, x, k, batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixture_same_family_layer_of_multivariate_normal_tril(dtype):
    """distribution_layer_test.py _MixtureSameFamilyTest.test_layer"""
    torch.manual_seed(42)
    k, batch, d = 3, (7, 3), 4
    cps = pl.MultivariateNormalTriL.params_size(d)
    layer = pl.MixtureSameFamily(k, pl.MultivariateNormalTriL(d, validate_args=True), validate_args=True)
    t = uniform((*batch, pl.MixtureSameFamily.params_size(k, cps)), dtype=dtype)
    x = layer(t)
    assert x.batch_shape == batch and x.event_shape == (d,) and x.mean.dtype == dtype
    check_mvn_mixture(t, x, k, batch)


# -- distribution_layer_test.py: VariationalGaussianProcessEndToEnd -------------------------------------


def test_variational_gaussian_process_end_to_end():
    """distribution_layer_test.py VariationalGaussianProcessEndToEnd.testEndToEnd"""
    torch.manual_seed(43)
    dtype = torch.float64
    n, x_range = 300, (-20.0, 60.0)
    x = uniform((n, 1), *x_range, dtype=dtype)
    g = (x - x_range[0]) / (x_range[1] - x_range[0])
    y = 0.125 * x * (1 + torch.sin(x)) + 5.0 + torch.randn(n, 1, dtype=dtype) * 3 * (0.25 + g**2)
    num_inducing = 50
    dense = nn.Linear(1, 1, bias=False, dtype=dtype)
    nn.init.ones_(dense.weight)
    model = nn.Sequential(
        dense,
        pl.VariationalGaussianProcess(
            1,
            num_inducing,
            inducing_points=torch.linspace(*x_range, num_inducing, dtype=dtype)[:, None],
            variational_scale=1e-3,
            kl_weight=1 / n,
            dtype=dtype,
        ),
    )
    batch_size = 64
    nll = nll_minibatches(model, x, y, batch_size)
    losses = adam_steps(model, lambda: nll() + pl.collect_losses(model, clear=True), steps=24, lr=0.02)
    assert all(math.isfinite(v) for v in losses)  # about 5 epochs
    x0 = torch.linspace(*x_range, 1000, dtype=dtype)[:, None]
    samples = model(x0).sample((7,))
    assert samples.shape == (7, 1000, 1) and samples.dtype == dtype
