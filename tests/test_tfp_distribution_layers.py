"""TFP's distribution_layer_test.py, translated: MultivariateNormalTriL, OneHotCategorical,
CategoricalMixtureOfOneHotCategorical and the Independent layers (issue 16).

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
    Lambda,
    adam_steps,
    mvn_tril_params,
    nll_minibatches,
    softplus_inverse,
    state_dict_copy,
    tfp_fill_triangular_inverse,
    uniform,
    vec_pad,
)


def test_fill_triangular_inverse_helper_matches_tfp_documented_example():
    """distribution_layer_test.py MultivariateNormalTriLTest (the helper its round trips use)."""
    # TFP's docs: fill_triangular([1, 2, 3, 4, 5, 6]) = [[4, 0, 0], [6, 5, 0], [3, 2, 1]].
    tril = torch.tensor([[4.0, 0, 0], [6, 5, 0], [3, 2, 1]])
    assert tfp_fill_triangular_inverse(tril).tolist() == [1, 2, 3, 4, 5, 6]


# -- distribution_layer_test.py: MultivariateNormalTriLTest --------------------------------------------


def test_multivariate_normal_tril_new_round_trips_its_params():
    """distribution_layer_test.py MultivariateNormalTriLTest.test_new"""
    torch.manual_seed(42)
    d = 4
    t = torch.randn(2, 3, pl.MultivariateNormalTriL.params_size(d))
    x = pl.MultivariateNormalTriL.new(t, d, validate_args=True)
    assert isinstance(x, D.MultivariateNormal)
    torch.testing.assert_close(mvn_tril_params(x), t, atol=1e-6, rtol=1e-5)


def test_multivariate_normal_tril_layer_round_trips_and_converts_by_mean():
    """distribution_layer_test.py MultivariateNormalTriLTest.test_layer"""
    torch.manual_seed(42)
    d = 4
    layer = pl.MultivariateNormalTriL(d, convert_to_tensor_fn="mean")
    t = torch.randn(2, 3, pl.MultivariateNormalTriL.params_size(d))
    x = layer(t)
    assert isinstance(x.distribution, D.MultivariateNormal)
    torch.testing.assert_close(mvn_tril_params(x.distribution), t, atol=1e-6, rtol=1e-5)
    assert torch.equal(pl.convert_to_tensor(x), x.loc)


def test_multivariate_normal_tril_true_parameters_stay_put_under_fitting():
    """distribution_layer_test.py MultivariateNormalTriLTest.test_doc_string"""
    torch.manual_seed(0)
    n, scale_noise = 1000, 0.01
    scale_tril = torch.tensor([[1.6180, 0.0], [-2.7183, 3.1416]])
    x = torch.randn(n, 2)
    y = x @ scale_tril + scale_noise * torch.randn(n, 2)
    d = y.shape[-1]
    # The answer encoded in the initial weights (TFP's "cheat"): loc = x @ scale_tril, and the
    # diagonal raw scales (entries 2 and 4) log(noise), so that softplus gives about the noise.
    true_kernel = nn.functional.pad(scale_tril, (0, 3))  # (2, 5) as TFP's (in, out)
    true_bias = torch.tensor([0.0, 0.0, math.log(scale_noise), 0.0, math.log(scale_noise)])
    dense = nn.Linear(2, pl.MultivariateNormalTriL.params_size(d))
    with torch.no_grad():
        dense.weight.copy_(true_kernel.T)
        dense.bias.copy_(true_bias)
    model = nn.Sequential(dense, pl.MultivariateNormalTriL(d))
    torch.testing.assert_close(
        model(x[:3]).scale_tril.diagonal(dim1=-2, dim2=-1), torch.full((3, 2), 0.01), atol=1e-4, rtol=0
    )
    adam_steps(model, nll_minibatches(model, x, y, 100), steps=10)  # one epoch, batch size 100
    torch.testing.assert_close(dense.weight.T.detach(), true_kernel, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(dense.bias.detach(), true_bias, atol=1e-2, rtol=1e-3)


# -- distribution_layer_test.py: OneHotCategoricalTest ------------------------------------------------


def check_one_hot_categorical(t: torch.Tensor, x: D.Distribution) -> None:
    assert isinstance(x, D.OneHotCategorical)
    # torch stores logits normalized (TFP's logits_parameter() gives them as passed).
    torch.testing.assert_close(x.logits, t.log_softmax(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.probs, x.mean, atol=1e-6, rtol=1e-5)


def test_one_hot_categorical_new():
    """distribution_layer_test.py OneHotCategoricalTest.test_new"""
    torch.manual_seed(42)
    d = 4
    t = torch.randn(2, 3, pl.OneHotCategorical.params_size(d))
    check_one_hot_categorical(t, pl.OneHotCategorical.new(t, d, validate_args=True))


def test_one_hot_categorical_layer():
    """distribution_layer_test.py OneHotCategoricalTest.test_layer"""
    torch.manual_seed(42)
    d = 4
    t = torch.randn(2, 3, pl.OneHotCategorical.params_size(d))
    x = pl.OneHotCategorical(d, validate_args=True)(t)
    check_one_hot_categorical(t, x.distribution)
    value = pl.convert_to_tensor(x)  # a one-hot sample
    assert value.shape == (2, 3, d) and torch.equal(value.sum(-1), torch.ones(2, 3))


def synthetic_one_hot_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 2)
    eps = 0.01 * torch.randn(n, 1)
    logits = vec_pad(0.3142 + 1.6180 * x[..., :1] - 2.7183 * x[..., 1:] + eps)  # (n, 2)
    return x, D.OneHotCategorical(logits=logits).sample()


def test_one_hot_categorical_logistic_regression_fits():
    """distribution_layer_test.py OneHotCategoricalTest.test_doc_string"""
    torch.manual_seed(0)
    n = 2000
    x, y = synthetic_one_hot_data(n)
    d = y.shape[-1]
    model = nn.Sequential(
        nn.Linear(2, pl.OneHotCategorical.params_size(d) - 1), Lambda(vec_pad), pl.OneHotCategorical(d)
    )
    nll = lambda: -model(x).log_prob(y).mean()  # noqa: E731
    before = nll().item()
    adam_steps(model, nll_minibatches(model, x, y, 100), steps=20, lr=0.5)  # one epoch
    assert nll().item() < before


# -- distribution_layer_test.py: CategoricalMixtureOfOneHotCategoricalTest -----------------------------


def check_one_hot_mixture(t: torch.Tensor, x: D.Distribution, k: int, d: int) -> None:
    assert isinstance(x, D.MixtureSameFamily)
    assert isinstance(x.mixture_distribution, D.Categorical)
    assert isinstance(x.component_distribution, D.OneHotCategorical)
    t_back = torch.cat(
        [x.mixture_distribution.logits, x.component_distribution.logits.reshape(2, 3, -1)], dim=-1
    )
    expected = torch.cat(
        [t[..., :k].log_softmax(-1), t[..., k:].unflatten(-1, (k, d)).log_softmax(-1).flatten(-2)], -1
    )
    torch.testing.assert_close(t_back, expected, atol=1e-6, rtol=1e-5)
    mean = x.mean  # (2, 3, d)
    torch.testing.assert_close(mean, x.log_mean().exp(), atol=1e-6, rtol=1e-5)
    n = 10_000
    samples = x.sample((n,))
    # Tolerance: 5 standard errors (sqrt(p (1 - p) / n)) of each class frequency, n = 10000 draws.
    se = (mean * (1 - mean) / n).sqrt()
    assert ((samples.mean(0) - mean).abs() < 5 * se).all()


def test_categorical_mixture_of_one_hot_categorical_new():
    """distribution_layer_test.py CategoricalMixtureOfOneHotCategoricalTest.test_new"""
    torch.manual_seed(42)
    k, d = 2, 4
    t = torch.randn(2, 3, pl.CategoricalMixtureOfOneHotCategorical.params_size(d, k))
    x = pl.CategoricalMixtureOfOneHotCategorical.new(t, d, k, validate_args=True)
    check_one_hot_mixture(t, x, k, d)


def test_categorical_mixture_of_one_hot_categorical_layer():
    """distribution_layer_test.py CategoricalMixtureOfOneHotCategoricalTest.test_layer"""
    torch.manual_seed(42)
    k, d = 2, 4
    t = torch.randn(2, 3, pl.CategoricalMixtureOfOneHotCategorical.params_size(d, k))
    x = pl.CategoricalMixtureOfOneHotCategorical(d, k, validate_args=True)(t)
    check_one_hot_mixture(t, x, k, d)


def test_categorical_mixture_of_one_hot_categorical_fits():
    """distribution_layer_test.py CategoricalMixtureOfOneHotCategoricalTest.test_doc_string"""
    torch.manual_seed(0)
    x, y = synthetic_one_hot_data(1000)
    d, k = y.shape[-1], 2
    model = nn.Sequential(
        nn.Linear(2, pl.CategoricalMixtureOfOneHotCategorical.params_size(d, k)),
        pl.CategoricalMixtureOfOneHotCategorical(d, k),
    )
    losses = adam_steps(model, lambda: -model(x[:100]).log_prob(y[:100]).mean(), steps=1, lr=0.5)
    assert math.isfinite(losses[0])
    yhat = model(x)
    assert isinstance(yhat, D.MixtureSameFamily)
    assert isinstance(yhat.mixture_distribution, D.Categorical)
    assert isinstance(yhat.component_distribution, D.OneHotCategorical)


# -- distribution_layer_test.py: _IndependentLayerTest (Bernoulli, Logistic, Normal, Poisson) ----------


def _loc_and_raw_scale(base, batch):
    flat = (*batch, -1)
    return torch.cat([base.loc.reshape(flat), softplus_inverse(base.scale.reshape(flat))], -1)


INDEPENDENT = {
    "bernoulli": (pl.IndependentBernoulli, D.Bernoulli, lambda base, batch: base.logits.reshape(*batch, -1)),
    "logistic": (pl.IndependentLogistic, pl.Logistic, _loc_and_raw_scale),
    "normal": (pl.IndependentNormal, D.Normal, _loc_and_raw_scale),
    "poisson": (pl.IndependentPoisson, D.Poisson, lambda base, batch: base.rate.log().reshape(*batch, -1)),
}


def check_independent(name: str, t: torch.Tensor, x: D.Distribution, batch) -> None:
    _, dist_class, to_params = INDEPENDENT[name]
    assert isinstance(x, D.Independent) and isinstance(x.base_dist, dist_class)
    t_back = to_params(x.base_dist, batch)
    assert t_back.dtype == t.dtype and x.mean.dtype == t.dtype
    torch.testing.assert_close(t_back, t, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(INDEPENDENT))
def test_independent_new_round_trips_its_params(name, dtype):
    """distribution_layer_test.py _IndependentLayerTest.test_new"""
    torch.manual_seed(42)
    layer_class = INDEPENDENT[name][0]
    batch, event_shape = (2,), (2, 1, 2)
    t = uniform((*batch, layer_class.params_size(event_shape)), dtype=dtype)
    x = layer_class.new(t, event_shape, validate_args=True)
    assert x.batch_shape == batch and x.event_shape == event_shape
    check_independent(name, t, x, batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(INDEPENDENT))
def test_independent_layer_round_trips_its_params(name, dtype):
    """distribution_layer_test.py _IndependentLayerTest.test_layer"""
    torch.manual_seed(42)
    layer_class = INDEPENDENT[name][0]
    p = layer_class.params_size()
    assert type(p) is int  # TFP: an int32, not a tensor of another dtype
    batch = (5, 5)
    t = uniform((*batch, p), dtype=dtype)
    x = layer_class(validate_args=True)(t)
    check_independent(name, t, x.distribution, batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(INDEPENDENT))
def test_independent_serialization(name, dtype):
    """distribution_layer_test.py _IndependentLayerTest.test_serialization"""
    torch.manual_seed(42)
    layer_class = INDEPENDENT[name][0]
    event_shape, batch = (), (4, 1)
    p = layer_class.params_size(event_shape)

    def build():
        return nn.Sequential(nn.Linear(p, p, dtype=dtype), layer_class(event_shape, validate_args=True))

    model = build()
    copy = state_dict_copy(model, build)
    x = uniform((*batch, p), dtype=dtype)
    assert torch.equal(model(x).mean, copy(x).mean)
    assert model(x).mean.dtype == dtype
    ones = torch.ones(7, *batch, *event_shape, dtype=dtype)
    assert torch.equal(model(x).log_prob(ones), copy(x).log_prob(ones))


def test_independent_bernoulli_logistic_regression_recovers_the_weights():
    """distribution_layer_test.py IndependentBernoulliTestStaticShape.test_doc_string"""
    torch.manual_seed(0)
    n = 10_000
    scale_tril = torch.tensor([[1.6180, 0.0], [-2.7183, 3.1416]])
    x = torch.randn(n, 2)
    logits = (x @ scale_tril + 0.01 * torch.randn(n, 2)).reshape(n, 1, 2, 1)
    y = D.Bernoulli(logits=logits).sample()
    event_shape = tuple(y.shape[1:])
    dense = nn.Linear(2, pl.IndependentBernoulli.params_size(event_shape))
    model = nn.Sequential(dense, pl.IndependentBernoulli(event_shape))
    adam_steps(model, lambda: -model(x).log_prob(y).mean(), steps=100, lr=0.5)  # 100 full-batch epochs
    torch.testing.assert_close(dense.weight.T.detach(), scale_tril, atol=0.15, rtol=0.15)
    torch.testing.assert_close(dense.bias.detach(), torch.zeros(2), atol=0.15, rtol=0.15)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "layer_class", [pl.IndependentLogistic, pl.IndependentNormal], ids=lambda c: c.__name__
)
def test_independent_encoder_output_used_as_a_tensor(layer_class, dtype):
    """distribution_layer_test.py IndependentLogisticTestStaticShape/IndependentNormalTestStaticShape.test_doc_string"""  # noqa: E501
    torch.manual_seed(0)
    encoded_shape = 2
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 10),
        nn.ReLU(),
        nn.Linear(10, layer_class.params_size(encoded_shape)),
        layer_class(encoded_shape),
        Lambda(lambda x: x + 0.0),  # forces the conversion to a tensor
    ).to(dtype)
    out = encoder(torch.randn(1, 1, 28, 28, dtype=dtype))  # NCHW of TFP's [1, 28, 28, 1]
    assert isinstance(out, torch.Tensor) and not pl.is_coercible(out)
    assert out.shape == (1, 2) and out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_independent_normal_after_a_reshape_to_several_events(dtype):
    """distribution_layer_test.py _IndependentNormalTest.test_keras_sequential_with_unknown_input_size"""
    torch.manual_seed(0)
    encoded_shape = (2,)
    params_size = pl.IndependentNormal.params_size(encoded_shape)
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 12),
        nn.ReLU(),
        Lambda(lambda x: x.reshape(*x.shape[:-1], -1, params_size)),  # (1, 12) -> (1, 3, 4)
        pl.IndependentNormal(encoded_shape),
        Lambda(lambda x: x + 0.0),
    ).to(dtype)
    out = encoder(torch.randn(1, 1, 28, 28, dtype=dtype))
    assert out.shape == (1, 3, 2) and out.dtype == dtype


def test_independent_poisson_regression_fits():
    """distribution_layer_test.py IndependentPoissonTestStaticShape.test_doc_string"""
    torch.manual_seed(42)
    n, d = 2000, 4
    dtype = torch.float64
    x = uniform((n, d), 1.0, 10.0, dtype=dtype)
    w = torch.tensor([[0.314], [0.272], [-0.162], [0.058]], dtype=dtype)
    y = D.Poisson((x @ w - 0.141).exp()).sample()  # (n, 1)
    model = nn.Sequential(
        nn.Linear(d, pl.IndependentPoisson.params_size(1), dtype=dtype), pl.IndependentPoisson(1)
    )
    nll = lambda: -model(x).log_prob(y).mean()  # noqa: E731
    before = nll().item()
    adam_steps(model, nll_minibatches(model, x, y, 50), steps=40, lr=0.05)  # one epoch
    assert nll().item() < before
