"""Layer-specific tests of the catalog's distribution layers and ``VariableLayer`` (the generic
ones run over ``layer_cases.CASES`` in test_layers.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F
from scipy import stats
from torch import nn

import problayers as pl

# -- Logistic ---------------------------------------------------------------------------------


def test_logistic_is_built_from_uniform_and_transforms_and_matches_scipy_moments():
    loc = torch.tensor([0.5, -1.0], dtype=torch.float64)
    scale = torch.tensor([2.0, 0.3], dtype=torch.float64)
    dist = pl.Logistic(loc, scale)
    assert isinstance(dist, D.TransformedDistribution) and isinstance(dist.base_dist, D.Uniform)
    x = torch.tensor([[0.1, 3.0], [-2.0, -1.2]], dtype=torch.float64)
    np.testing.assert_allclose(dist.cdf(x).numpy(), stats.logistic.cdf(x.numpy(), loc, scale), rtol=1e-12)
    np.testing.assert_allclose(dist.variance.numpy(), stats.logistic.var(loc, scale), rtol=1e-12)
    np.testing.assert_allclose(dist.mean.numpy(), stats.logistic.mean(loc, scale))
    torch.testing.assert_close(dist.mode, loc)
    assert dist.expand((3, 2)).batch_shape == (3, 2)
    assert dist.expand((3, 2)).loc.shape == (3, 2)


def test_logistic_far_tail_log_prob_is_finite():
    # The Uniform base would give -inf at sigmoid(z) == 1; the clipped sigmoid keeps it exact.
    dist = pl.Logistic(torch.zeros(()), torch.ones(()))
    x = torch.tensor([-60.0, 60.0])
    np.testing.assert_allclose(dist.log_prob(x).numpy(), stats.logistic.logpdf(x.numpy()), rtol=1e-5)


def test_logistic_lower_tail_cdf_and_icdf_keep_their_digits():
    """fp32: TransformedDistribution's ``(u - 0.5) + 0.5`` would give cdf(-17) = 2.98e-8 and
    cdf(-30) = 0; the CDF is the clipped sigmoid itself, the quantile its logit."""
    dist = pl.Logistic(torch.zeros(()), torch.ones(()))
    x = torch.tensor([-80.0, -30.0, -17.0, -5.0, 0.0, 5.0])
    np.testing.assert_allclose(dist.cdf(x).numpy(), stats.logistic.cdf(x.numpy()), rtol=1e-5)
    p = torch.tensor([1e-30, 1e-12, 1e-6, 0.3, 0.9])
    np.testing.assert_allclose(dist.icdf(p).numpy(), stats.logistic.ppf(p.double().numpy()), rtol=1e-5)


def test_logistic_rsample_statistics():
    torch.manual_seed(0)
    loc = torch.tensor(1.0, requires_grad=True)
    x = pl.Logistic(loc, torch.tensor(2.0)).rsample((20000,))
    assert abs(x.mean().item() - 1.0) < 0.1  # std of the mean: 3.63 / sqrt(2e4) = 0.026
    assert abs(x.var().item() / (np.pi**2 * 4 / 3) - 1) < 0.05
    x.sum().backward()
    assert loc.grad.item() == pytest.approx(20000.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logistic_samples_its_own_distribution_in_half_precision(dtype):
    """A bf16 uniform is 0 with probability 2^-9 and stops 2^-7 short of 1: logit(U) put 0.2%
    of the draws at -87 scales and none past +4.8, a variance 5.5x the Logistic's (sampling
    audit); fp16's stopped at +6.9. Drawn in float32 now: the tails, KS against scipy, the
    variance, gradients in the dtype."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    loc = torch.tensor(1.0, dtype=dtype, requires_grad=True)
    scale = torch.tensor(2.0, dtype=dtype)
    for draw in (pl.Logistic(loc, scale).rsample, pl.Logistic(loc, scale).sample):
        x = draw((200000,))
        assert x.dtype == dtype
        z = ((x.detach().double() - 1.0) / 2.0).numpy()
        assert z.min() > -20 and z.max() > 7.5  # P(z > 7.5) = 5.5e-4: ~110 expected
        assert abs(z.var() / (np.pi**2 / 3) - 1) < 0.03  # sd of the ratio ~0.0045
        # the rounding to the dtype moves values by up to 2^-8 relative: KS' D stays below it
        assert stats.kstest(z, stats.logistic.cdf).statistic < 0.01
    pl.Logistic(loc, scale).rsample((5,)).sum().backward()
    assert loc.grad.dtype == dtype and loc.grad.item() == 5.0
    out = pl.MixtureLogistic(2)(torch.zeros(100000, pl.MixtureLogistic.params_size(2), dtype=dtype))
    assert out.sample().min() > -20 * F.softplus(torch.zeros(())).item()
    torch.random.set_rng_state(gen_state)


# -- Poisson, categorical -------------------------------------------------------------------------


def test_poisson_rate_is_exp_of_params():
    params = torch.randn(3, 4)
    out = pl.IndependentPoisson(4)(params)
    torch.testing.assert_close(out.mean, params.exp())
    assert (out.tensor() == out.tensor().round()).all()


def test_poisson_log_prob_uses_the_log_rate_as_tfp():
    # TFP's IndependentPoisson is Poisson(log_rate=params): its log density stays finite (and
    # exact) where exp(log_rate) leaves fp32; torch's Poisson(exp(params)) gave -inf, NaN, or
    # -301.74 for -301.79. Reference: scipy in float64 (exp is finite there), then cast to fp32.
    log_rate = torch.tensor([-200.0, -100.0, 0.0, 5.0, 89.0])
    out = pl.IndependentPoisson()(log_rate[:, None, None].expand(5, 2, 1))  # batch (5, 2)
    counts = torch.tensor([0.0, 3.0]).expand(5, 2)
    want = stats.poisson.logpmf(counts.numpy(), np.exp(log_rate.double().numpy())[:, None])
    torch.testing.assert_close(out.log_prob(counts), torch.from_numpy(want).float())
    assert isinstance(out.base_dist, D.Poisson) and torch.equal(
        out.mean, log_rate.exp()[:, None].expand(5, 2)
    )


def test_one_hot_samples_are_one_hot_and_probs_are_softmax():
    params = torch.randn(5, 6)
    out = pl.OneHotCategorical(6)(params)
    assert (out.tensor().sum(-1) == 1).all() and set(out.tensor().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.probs, params.softmax(-1))


def test_categorical_mixture_probabilities_are_the_mixture_of_probabilities():
    torch.manual_seed(0)
    params = torch.randn(2, pl.CategoricalMixtureOfOneHotCategorical.params_size(5, 3))
    dist = pl.CategoricalMixtureOfOneHotCategorical(5, 3)(params)
    w = params[:, :3].softmax(-1)  # (2, K)
    p = params[:, 3:].reshape(2, 3, 5).softmax(-1)  # (2, K, E)
    expected = (w[..., None] * p).sum(1)  # (2, E)
    torch.testing.assert_close(dist.log_prob(torch.eye(5)[:, None, :]).exp().T, expected)


# -- mixtures ---------------------------------------------------------------------------------


def _direct_mixture_log_prob(params, k, component_new, x):
    """log sum_k softmax(logits)_k p_k(x), each component built on its own from its slice."""
    p = (params.shape[-1] - k) // k
    log_w = params[..., :k].log_softmax(-1)  # (*B, K)
    comps = [component_new(params[..., k + j * p : k + (j + 1) * p]).log_prob(x) for j in range(k)]
    return torch.logsumexp(log_w + torch.stack(comps, -1), -1)  # (S, *B)


@pytest.mark.parametrize(
    "layer,width,component_new",
    [
        (pl.MixtureNormal(3, (2, 3)), 3 + 3 * 12, lambda p: pl.IndependentNormal.new(p, (2, 3))),
        (pl.MixtureLogistic(2, 4), 2 + 2 * 8, lambda p: pl.IndependentLogistic.new(p, 4)),
        (
            pl.MixtureSameFamily(4, pl.IndependentPoisson(3)),
            4 + 4 * 3,
            lambda p: pl.IndependentPoisson.new(p, 3),
        ),
        (
            pl.MixtureSameFamily(2, pl.MultivariateNormalTriL(2)),
            2 + 2 * 5,
            lambda p: pl.MultivariateNormalTriL.new(p, 2),
        ),
    ],
    ids=["MixtureNormal", "MixtureLogistic", "MixtureSameFamily(Poisson)", "MixtureSameFamily(MVN)"],
)
def test_mixture_log_prob_is_a_direct_logsumexp(layer, width, component_new):
    torch.manual_seed(3)
    params = torch.randn(2, 3, width, dtype=torch.float64)
    dist = layer(params)
    assert dist.batch_shape == (2, 3)
    x = dist.sample((4,))  # (4, 2, 3, *E)
    expected = _direct_mixture_log_prob(params, layer.num_components, component_new, x)  # (4, 2, 3)
    torch.testing.assert_close(dist.log_prob(x), expected)


def test_mixture_mean_and_variance_are_the_mixture_moments():
    torch.manual_seed(0)
    params = torch.randn(5, pl.MixtureLogistic.params_size(3, 2), dtype=torch.float64)
    dist = pl.MixtureLogistic(3, 2)(params)
    w = params[:, :3].softmax(-1)[..., None]  # (5, K, 1)
    comp = pl.IndependentLogistic.new(params[:, 3:].reshape(5, 3, 4), 2)
    mean = (w * comp.mean).sum(1)
    torch.testing.assert_close(dist.mean, mean)
    torch.testing.assert_close(dist.variance, (w * (comp.variance + comp.mean**2)).sum(1) - mean**2)


def test_mixture_same_family_component_forms():
    params = torch.randn(7, 3 + 3 * 4)
    by_instance = pl.MixtureSameFamily(3, pl.IndependentNormal(2))
    by_callable = pl.MixtureSameFamily(3, lambda p: pl.IndependentNormal.new(p, 2), component_params_size=4)
    x = by_instance(params).sample()
    torch.testing.assert_close(by_instance(params).log_prob(x), by_callable(params).log_prob(x))
    by_class = pl.MixtureSameFamily(3, pl.IndependentNormal)  # the class's defaults: event ()
    params = torch.randn(7, 3 + 3 * 2)
    x = by_class(params).sample()
    assert by_class(params).event_shape == () and x.shape == (7,)
    torch.testing.assert_close(by_class(params).log_prob(x), pl.MixtureNormal(3)(params).log_prob(x))
    assert pl.MixtureSameFamily(2, pl.IndependentNormal).component_params_size == 2  # class defaults
    assert pl.MixtureSameFamily(2, pl.OneHotCategorical(5)).component_params_size == 5
    assert pl.MixtureSameFamily.params_size(3, pl.IndependentNormal(2)) == 15
    assert pl.MixtureSameFamily.params_size(3, 4) == 15
    assert (
        pl.MixtureSameFamily.params_size(3, np.int64(4))
        == pl.MixtureSameFamily.params_size(3, torch.tensor(4))
        == 15
    )
    assert pl.MixtureNormal.params_size(3, (2, 3)) == 3 + 3 * 12


def test_mixture_instance_component_parameters_are_registered():
    component = pl.DistributionLambda(lambda t: D.Normal(t[..., :1], 1.0))
    trainable = nn.Sequential(nn.Linear(2, 2), pl.MixtureSameFamily(2, component, component_params_size=1))
    names = [n for n, _ in trainable.named_modules()]
    assert "1.component_layer" in names


def test_mixture_errors_name_the_layer_expected_and_got():
    with pytest.raises(ValueError, match=r"MixtureNormal.*\(\.\.\., 15\).*\(2, 5\)"):
        pl.MixtureNormal(3, 2)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"MixtureSameFamily.*\(\.\.\., 6\).*\(4, 7\)"):
        pl.MixtureSameFamily.new(torch.randn(4, 7), 2, pl.IndependentNormal)
    with pytest.raises(ValueError, match=r"CategoricalMixtureOfOneHotCategorical.*\(\.\.\., 8\)"):
        pl.CategoricalMixtureOfOneHotCategorical(3, 2)(torch.randn(2, 9))


@pytest.mark.parametrize(
    "make,error,argument",
    [
        (lambda: pl.MixtureNormal(0), ValueError, "num_components"),
        (lambda: pl.MixtureLogistic(2.5), TypeError, "num_components"),
        (lambda: pl.MixtureNormal(2, (0,)), ValueError, "event_shape"),
        (lambda: pl.MixtureSameFamily(2, 3), TypeError, "component_layer"),
        (lambda: pl.MixtureSameFamily(2, nn.Linear), TypeError, "component_layer"),
        (
            lambda: pl.MixtureSameFamily(2, pl.MultivariateNormalTriL, component_params_size=5),
            TypeError,
            r"component_layer: the class MultivariateNormalTriL needs arguments \(event_size\); pass an",
        ),
        (lambda: pl.MixtureSameFamily(2, lambda p: p), ValueError, "component_params_size"),
        (
            lambda: pl.MixtureSameFamily(2, pl.IndependentNormal, component_params_size=0),
            ValueError,
            "component_params_size",
        ),
        (
            lambda: pl.MixtureSameFamily(2, pl.IndependentNormal(3), component_params_size=4),
            ValueError,
            "component_params_size: got 4, but component_layer takes 6 per component",
        ),
        (lambda: pl.OneHotCategorical(0), ValueError, "event_size"),
        (lambda: pl.OneHotCategorical("3"), TypeError, "event_size"),
        (lambda: pl.CategoricalMixtureOfOneHotCategorical(3, True), TypeError, "num_components"),
        (lambda: pl.IndependentPoisson(-1), ValueError, "event_shape"),
        (
            lambda: pl.IndependentLogistic(2, convert_to_tensor_fn="median"),
            ValueError,
            "convert_to_tensor_fn",
        ),
    ],
)
def test_bad_constructor_arguments_are_named(make, error, argument):
    with pytest.raises(error, match=argument):
        make()


def test_component_layer_must_return_a_distribution():
    layer = pl.MixtureSameFamily(2, lambda p: p, component_params_size=3)
    with pytest.raises(TypeError, match="returned Tensor"):
        layer(torch.randn(4, 8))


# -- VariableLayer ----------------------------------------------------------------------------


def test_variable_layer_returns_its_variable_whatever_the_input():
    layer = pl.VariableLayer((2, 3), initializer="ones")
    assert layer(torch.randn(10, 4)) is layer.variable
    assert layer() is layer.variable
    torch.testing.assert_close(layer("anything"), torch.ones(2, 3))
    assert [n for n, _ in layer.named_parameters()] == ["variable"]


@pytest.mark.parametrize(
    "initializer,expected",
    [
        ("zeros", torch.zeros(3)),
        (2.5, torch.full((3,), 2.5)),
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])),
        (torch.tensor(4.0), torch.full((3,), 4.0)),
        (lambda t: torch.nn.init.constant_(t, -1.0), -torch.ones(3)),
    ],
    ids=["name", "number", "tensor", "broadcast", "callable"],
)
def test_variable_layer_initializers(initializer, expected):
    torch.testing.assert_close(pl.VariableLayer(3, initializer=initializer)(), expected)


def test_variable_layer_named_random_initializers_are_keras():
    torch.manual_seed(0)
    normal = pl.VariableLayer(20000, initializer="normal")().detach()  # Keras' RandomNormal: std 0.05
    assert abs(normal.std().item() - 0.05) < 0.05 * 0.03 and abs(normal.mean().item()) < 0.002
    uniform = pl.VariableLayer(20000, initializer="uniform")().detach()  # RandomUniform: +-0.05
    assert uniform.abs().max() <= 0.05 and uniform.abs().max() > 0.049


def test_variable_layer_dtype_activation_and_scalar():
    layer = pl.VariableLayer(2, dtype=torch.float64, initializer=-1.0, activation=torch.exp)
    assert layer().dtype == torch.float64
    torch.testing.assert_close(layer(), torch.full((2,), np.exp(-1.0), dtype=torch.float64))
    assert pl.VariableLayer(()).variable.shape == ()


def test_variable_layer_as_a_trainable_distribution():
    layer = pl.VariableLayer(
        2, make_distribution_fn=lambda t: D.Independent(D.Normal(t, 1.0), 1), convert_to_tensor_fn="mean"
    )
    dist = layer(torch.randn(5, 7))
    assert isinstance(dist, D.Independent) and pl.is_coercible(dist)
    assert dist.batch_shape == () and dist.event_shape == (2,)
    (-dist.log_prob(torch.ones(2))).backward()
    torch.testing.assert_close(layer.variable.grad, -torch.ones(2))  # d/dloc of -log N(1; loc, 1) at 0


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        ({"shape": 0}, ValueError, "shape"),
        ({"shape": 2, "initializer": "glorot"}, ValueError, "initializer"),
        ({"shape": 2, "initializer": torch.ones(3)}, ValueError, "initializer"),
        ({"shape": 2, "initializer": object()}, TypeError, "initializer"),
        ({"shape": 2, "dtype": torch.int64}, TypeError, "dtype"),
        ({"shape": 2, "activation": 3}, TypeError, "activation"),
        ({"shape": 2, "make_distribution_fn": 3}, TypeError, "make_distribution_fn"),
        ({"shape": 2, "convert_to_tensor_fn": "median"}, ValueError, "convert_to_tensor_fn"),
    ],
)
def test_variable_layer_bad_arguments(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        pl.VariableLayer(**kwargs)


def test_variable_layer_make_distribution_fn_must_return_a_distribution():
    with pytest.raises(TypeError, match="make_distribution_fn returned Tensor"):
        pl.VariableLayer(2, make_distribution_fn=lambda t: t * 2)()


@pytest.mark.parametrize("validate_args", [False, True])
def test_one_hot_categorical_checks_only_when_asked_inner_categorical_too(validate_args):
    # torch's OneHotCategorical builds its Categorical with the global default (checks on).
    out = pl.OneHotCategorical(3, validate_args=validate_args)(torch.zeros(2, 3))
    assert type(out.distribution) is pl.layers.categorical.SoftOneHotCategorical
    assert out._validate_args is out.distribution._categorical._validate_args is validate_args
    torch.testing.assert_close(out.log_prob(torch.eye(3)[[0, 2]]), torch.full((2,), -math.log(3)))
    mix = pl.CategoricalMixtureOfOneHotCategorical(3, 2, validate_args=validate_args)(torch.zeros(2, 8))
    assert mix.component_distribution._categorical._validate_args is validate_args


def test_one_hot_log_prob_of_a_soft_label_is_tfps_cross_entropy():
    # tfd.OneHotCategorical.log_prob(y) = -softmax_cross_entropy(labels=y, logits): a smoothed
    # label, a count vector or an all-zero row score as such (torch's scores argmax(y) only),
    # in the layer, the categorical mixture and a MixtureSameFamily of it; TFP 0.25 gave
    # -0.46631 for the first row and 0 for the second (logits below).
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], requires_grad=True)
    y = torch.tensor([[0.9, 0.05, 0.05], [0.0, 0.0, 0.0]])
    out = pl.OneHotCategorical(3)(logits)
    log_p = out.log_prob(y)
    torch.testing.assert_close(log_p, -F.cross_entropy(logits, y, reduction="none"))
    assert log_p[0].item() == pytest.approx(-0.46631, abs=1e-5) and log_p[1].item() == 0.0
    (grad,) = torch.autograd.grad(log_p[0], logits)
    torch.testing.assert_close(grad[0], y[0] - logits.softmax(-1)[0])  # the soft label's gradient
    hard = torch.eye(3)[[0, 2]]
    torch.testing.assert_close(out.log_prob(hard), D.OneHotCategorical(logits=logits).log_prob(hard))
    params = torch.randn(2, 8)
    mix = pl.CategoricalMixtureOfOneHotCategorical(3, 2)(params)
    comp = params[:, 2:].reshape(2, 2, 3).log_softmax(-1)  # (B, K, E)
    direct = torch.logsumexp(params[:, :2].log_softmax(-1) + (y.unsqueeze(1) * comp).sum(-1), -1)
    torch.testing.assert_close(mix.log_prob(y), direct)
    # a masked class (logit -inf): a finite value and finite gradients to the logits
    masked_logits = torch.tensor([[1.0, 0.0, -math.inf]], requires_grad=True)
    masked = pl.OneHotCategorical(3)(masked_logits)
    (g,) = torch.autograd.grad(masked.log_prob(torch.tensor([[0.7, 0.3, 0.0]])).sum(), masked_logits)
    assert torch.isfinite(g).all()
    # the label gets no gradient (TFP's log_prob stops it: a teacher's soft labels, a
    # straight-through sample; torch's OneHotCategorical has none either), in the mixture too
    for dist in (out, mix, masked):
        label = torch.tensor([[0.2, 0.8, 0.0]], requires_grad=True)
        total = dist.log_prob(label.expand(*dist.batch_shape, 3)).sum()
        assert not total.requires_grad or torch.autograd.grad(total, label, allow_unused=True)[0] is None


def test_log_rate_poisson_expand_expands_the_log_rate():
    d = pl.LogRatePoisson(torch.zeros(3)).expand((2, 3))
    assert d.log_rate.shape == (2, 3)
    assert d.log_prob(torch.ones(())).shape == (2, 3)
    expected = stats.poisson(1.0).logpmf(1)  # rate exp(0) = 1
    np.testing.assert_allclose(d.log_prob(torch.ones(())).numpy(), np.full((2, 3), expected), rtol=1e-6)


def test_mixture_of_a_plain_callable_infers_its_component_size():
    # (*B, K + K * p) with K = 2 and a callable taking p = 6 params (3 locs, 3 raw scales).
    def component(p):  # (*B, K, 6) -> batch (*B, K), event (3,)
        return D.Independent(D.Normal(p[..., :3], nn.functional.softplus(p[..., 3:])), 1)

    out = pl.MixtureSameFamily.new(torch.zeros(4, 2 + 2 * 6), 2, component)
    assert out.batch_shape == (4,) and out.event_shape == (3,)


def test_mixture_of_a_layer_returning_coercibles_holds_plain_distributions():
    layer = pl.MixtureSameFamily(2, lambda p: pl.IndependentNormal(3)(p), component_params_size=6)
    out = layer(torch.zeros(4, 14))
    assert not pl.is_coercible(out.component_distribution)
    assert type(out.component_distribution) is D.Independent


def test_one_hot_categorical_default_value_is_a_random_sample():
    """Doc: default convert_to_tensor_fn "sample". With uniform logits over 4 classes and 4000
    rows each class gets ~1000 (binomial sd ~27); the mode would put all 4000 in class 0.
    Catches the mutation (default "mode")."""
    torch.manual_seed(0)
    value = pl.convert_to_tensor(pl.OneHotCategorical(4)(torch.zeros(4000, 4)))
    counts = value.sum(0)
    assert counts.sum() == 4000 and (counts > 800).all()


def test_categorical_mixture_default_value_is_a_one_hot_sample():
    """Doc: default "sample": a one-hot vector per row (not the mean class probabilities).
    Catches the mutation (default "mean")."""
    torch.manual_seed(0)
    out = pl.CategoricalMixtureOfOneHotCategorical(3, 2)(torch.zeros(50, 8))
    value = pl.convert_to_tensor(out)
    assert value.shape == (50, 3)
    assert set(value.unique().tolist()) <= {0.0, 1.0} and (value.sum(-1) == 1).all()


@pytest.mark.parametrize("validate_args", [False, True])
def test_categorical_mixture_validates_only_when_asked_the_mixture_too(validate_args):
    """validate_args=False: no checks anywhere (torch's default would check); a non-one-hot value
    is then not refused by the mixture. Catches the mutation (validate_args not passed to the
    MixtureSameFamily itself: the global default, checks on)."""
    mix = pl.CategoricalMixtureOfOneHotCategorical(3, 2, validate_args=validate_args)(torch.zeros(2, 8))
    assert mix._validate_args is validate_args
    bad = torch.tensor([0.5, 0.5, 0.0])
    if validate_args:
        with pytest.raises(ValueError):
            mix.log_prob(bad)
    else:
        mix.log_prob(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pl.IndependentBernoulli((2,), "sample", torch.int32),
        lambda: pl.OneHotCategorical(3, "sample", torch.int32, False),
        lambda: pl.CategoricalMixtureOfOneHotCategorical(3, 2, "sample", torch.int32),
    ],
    ids=["IndependentBernoulli", "OneHotCategorical", "CategoricalMixtureOfOneHotCategorical"],
)
def test_tfps_positional_sample_dtype_is_refused_not_read_as_validate_args(make):
    # TFP's next positional argument is sample_dtype; it was silently taken as validate_args.
    with pytest.raises(TypeError, match="positional argument"):
        make()


@pytest.mark.parametrize(
    "new",
    [
        lambda: pl.IndependentBernoulli.new(torch.zeros(2, 4), (4,), torch.float32),
        lambda: pl.OneHotCategorical.new(torch.zeros(2, 3), 3, torch.int64),
        lambda: pl.CategoricalMixtureOfOneHotCategorical.new(torch.zeros(2, 8), 3, 2, torch.int64),
    ],
    ids=["IndependentBernoulli", "OneHotCategorical", "CategoricalMixtureOfOneHotCategorical"],
)
def test_tfps_positional_dtype_of_new_is_refused_not_read_as_validate_args(new):
    # TFP's new(params, event_shape, dtype, validate_args): a dtype (truthy) turned the checks on.
    with pytest.raises(TypeError, match="positional argument"):
        new()


@pytest.mark.parametrize(
    "new",
    [
        lambda v: pl.IndependentNormal.new(torch.zeros(2, 2), 1, v),
        lambda v: pl.IndependentLogistic.new(torch.zeros(2, 2), 1, v),
        lambda v: pl.IndependentPoisson.new(torch.zeros(2, 1), 1, v),
        lambda v: pl.IndependentBernoulli.new(torch.zeros(2, 1), 1, validate_args=v),
        lambda v: pl.MultivariateNormalTriL.new(torch.zeros(2, 5), 2, v),
        lambda v: pl.OneHotCategorical.new(torch.zeros(2, 3), 3, validate_args=v),
        lambda v: pl.CategoricalMixtureOfOneHotCategorical.new(torch.zeros(2, 8), 3, 2, validate_args=v),
        lambda v: pl.MixtureNormal.new(torch.zeros(2, 6), 2, (), v),
        lambda v: pl.MixtureSameFamily.new(torch.zeros(2, 6), 2, pl.IndependentNormal(1), v),
    ],
    ids=[
        "Normal",
        "Logistic",
        "Poisson",
        "Bernoulli",
        "MVNTriL",
        "OneHot",
        "CategoricalMixture",
        "MixtureNormal",
        "MixtureSameFamily",
    ],
)
def test_new_checks_validate_args_as_the_constructors_do(new):
    """``new``'s ``validate_args`` is ``True`` or ``False``: the string ``"False"`` (true) or a
    dtype would turn torch's checks on."""
    assert new(False) is not None
    for bad in ("False", torch.float32):
        with pytest.raises(TypeError, match=r"^validate_args: expected True or False"):
            new(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pl.DenseReparameterization(4, 3, torch.relu),
        lambda: pl.DenseLocalReparameterization(4, 3, "relu"),
        lambda: pl.DenseFlipout(4, 3, torch.tanh),
        lambda: pl.DenseVariational(4, 3, use_bias=torch.relu),
        lambda: pl.Conv2dFlipout(1, 2, 3, bias="relu"),
        lambda: pl.ConvTranspose2dReparameterization(1, 2, 3, bias=torch.relu),
    ],
    ids=[
        "DenseReparameterization",
        "DenseLocalReparameterization",
        "DenseFlipout",
        "DenseVariational",
        "Conv2dFlipout",
        "ConvTranspose2dReparameterization",
    ],
)
def test_tfps_positional_activation_is_refused_not_read_as_bias(make):
    """TFP's ``DenseFlipout(units, activation)`` ported with ``in_features`` in front put the
    activation in ``bias`` (true): a linear layer, silently."""
    with pytest.raises(TypeError, match=r"bias: expected True or False, got .*pass it as activation="):
        make()
