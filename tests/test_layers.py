"""Generic tests over every distribution layer (driven by ``layer_cases.CASES``), and the
layer-specific ones."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from layer_cases import CASES
from problayers.losses import added_losses_skipped

BATCH_SHAPES = [(), (4,), (2, 3)]
ids = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
def test_shapes(case, batch):
    torch.manual_seed(0)
    params = torch.randn(*batch, case.params_size)
    out = case.make_layer()(params)
    assert isinstance(out, D.Distribution)
    assert out.batch_shape == torch.Size(batch)
    assert out.event_shape == torch.Size(case.event_shape)
    assert out.shape == torch.Size(batch + case.event_shape)  # the tensor value
    assert out.log_prob(out.sample()).shape == torch.Size(batch)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_params_size_is_what_new_consumes(case):
    params = torch.randn(5, case.params_size)
    case.new(params)  # exactly params_size works
    for wrong in (case.params_size - 1, case.params_size + 1):
        with pytest.raises(ValueError, match=r"params_size|expected params"):
            case.make_layer()(torch.randn(5, wrong))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_layer_equals_pure_new(case):
    torch.manual_seed(1)
    params = torch.randn(4, case.params_size)
    layer_dist, new_dist = case.make_layer()(params), case.new(params)
    x = new_dist.sample()
    torch.testing.assert_close(layer_dist.log_prob(x), new_dist.log_prob(x))


@pytest.mark.parametrize("case", [c for c in CASES if c.scipy_log_prob], ids=lambda c: c.name)
def test_log_prob_against_scipy(case):
    torch.manual_seed(2)
    params = torch.randn(7, case.params_size, dtype=torch.float64)
    dist = case.make_layer()(params)
    x = dist.sample()
    expected = case.scipy_log_prob(params.numpy(), x.numpy())
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", [c for c in CASES if c.has_rsample], ids=lambda c: c.name)
def test_rsample_carries_gradients_to_inputs(case):
    params = torch.randn(3, case.params_size, requires_grad=True)
    out = case.make_layer()(params)
    (out * 1.0).square().sum().backward()  # uses the cached rsample
    assert params.grad is not None and params.grad.abs().sum() > 0


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_forwards_graph_is_freed_without_the_cycle_collector(case):
    # torch keeps a transform's inverse on it (a cycle); the Logistic's affine map held the
    # network's loc and scale there, so each forward's graph lived until Python's cycle
    # collector ran: ~20 at once in a loop without backward, 10x the memory (memory audit).
    layer = case.make_layer()
    x = torch.randn(3, case.params_size, requires_grad=True)
    layer(x * 1.0).log_prob(case.new(x.detach()).sample())  # first use: lazy classes and caches
    while gc.collect():  # what earlier tests left (a compiled step's trace): gone before the count
        pass
    gc.disable()
    try:
        params = x * 1.0  # a tensor of this forward's graph
        freed = weakref.ref(params)
        out = layer(params)
        out.log_prob(out.sample()).sum()
        del params, out
        assert freed() is None and gc.collect() == 0  # nothing left for the cycle collector
    finally:
        gc.enable()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_value_is_cached(case):
    out = case.make_layer()(torch.randn(3, case.params_size))
    assert out.tensor() is out.tensor()
    torch.testing.assert_close(out + 0, out.tensor())


@pytest.mark.parametrize("bad", [torch.randn(()), "x"], ids=["0-dim", "str"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_bad_params_type_or_rank(case, bad):
    with pytest.raises((ValueError, TypeError)):
        case.make_layer()(bad)


def test_integer_params_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        pl.IndependentNormal.new(torch.ones(3, 2, dtype=torch.long), 1)


@pytest.mark.parametrize("shape", [0, -1, (2, 0)])
def test_bad_event_shape(shape):
    with pytest.raises(ValueError, match="event_shape"):
        pl.IndependentBernoulli(shape)


@pytest.mark.parametrize("shape", [object(), (1.5,), "16", 2.0, True, [2, "a"]])
def test_bad_event_shape_type(shape):
    with pytest.raises(TypeError, match="event_shape: expected a positive int or a tuple of them, got"):
        pl.IndependentNormal(shape)


def test_event_size_is_one_int():
    with pytest.raises(ValueError, match="event_size"):
        pl.MultivariateNormalTriL(0)
    with pytest.raises(
        ValueError, match=r"event_size: expected one positive int \(the dimension\), got \(4, 4\)"
    ):
        pl.MultivariateNormalTriL((4, 4))
    with pytest.raises(TypeError, match=r"event_size: .* got str '16'"):
        pl.MultivariateNormalTriL("16")
    with pytest.raises(TypeError, match=r"event_size: expected a positive int, got tuple \(4, 4\)"):
        pl.OneHotCategorical((4, 4))  # one class count: a sequence of one only


@pytest.mark.parametrize("size", [np.int64(3), np.int32(3), torch.tensor(3), (np.int64(3),), 3])
def test_integer_like_sizes(size):
    assert pl.IndependentNormal(size).event_shape == (3,)
    assert pl.MultivariateNormalTriL(size).event_size == 3
    assert pl.OneHotCategorical(size).event_size == 3  # TFP takes (3,) and [3] too
    assert pl.OneHotCategorical.params_size(size) == 3
    assert pl.CategoricalMixtureOfOneHotCategorical.params_size(size, 2) == 8
    assert pl.IndependentNormal.params_size(size) == 6 and pl.MultivariateNormalTriL.params_size(size) == 9
    assert pl.MixtureNormal(np.int64(2), size).num_components == 2


def test_default_event_shape_is_scalar_as_tfp():
    layer = pl.IndependentNormal()
    assert layer.event_shape == () and pl.IndependentNormal.params_size() == 2
    out = layer(torch.randn(4, 2))
    assert out.batch_shape == (4,) and out.event_shape == ()
    y = torch.randn(4)
    assert out.log_prob(y).shape == (4,)  # one density per target, not their sum
    torch.testing.assert_close(out.log_prob(y), out.base_dist.log_prob(y))
    for cls in (pl.IndependentBernoulli, pl.IndependentLogistic, pl.IndependentPoisson):
        assert cls().event_shape == ()
    assert pl.MixtureNormal(3).event_shape == () and pl.MixtureLogistic(3).event_shape == ()


def test_error_names_layer_expected_and_got():
    with pytest.raises(ValueError, match=r"MultivariateNormalTriL.*\(\.\.\., 9\).*\(2, 8\)"):
        pl.MultivariateNormalTriL(3)(torch.randn(2, 8))


@pytest.mark.parametrize(
    "order,diagonal",
    # where each order keeps the diagonal: TFP's fill_triangular puts the last parameter at
    # (0, 0)... read from its layout [[4], [8, 9], [7, 6, 5], [3, 2, 1, 0]] for d=4
    [("tfp", [4, 9, 5, 0]), ("rows", [0, 2, 5, 9])],
)
def test_mvn_tril_scale_structure(order, diagonal):
    d = 4
    # float64, so that the tolerance is far below the 1e-5 shift it checks
    params = torch.randn(6, pl.MultivariateNormalTriL.params_size(d), dtype=torch.float64)
    tril = pl.MultivariateNormalTriL.new(params, d, tril_order=order).scale_tril
    assert torch.equal(tril, tril.tril())
    diag = tril.diagonal(dim1=-2, dim2=-1)
    assert (diag > 0).all()
    raw_diag = torch.nn.functional.softplus(params[:, d:][:, diagonal]) + 1e-5
    torch.testing.assert_close(diag, raw_diag, rtol=0.0, atol=1e-12)
    assert pl.MultivariateNormalTriL.params_size(16) == 16 + 136


def test_mvn_tril_order_is_checked():
    with pytest.raises(ValueError, match="tril_order: expected one of"):
        pl.MultivariateNormalTriL(3, tril_order="columns")


def test_bernoulli_default_value_is_sample_and_rsample_is_refused():
    out = pl.IndependentBernoulli(3)(torch.zeros(2, 3))
    assert set(out.tensor().unique().tolist()) <= {0.0, 1.0}
    layer = pl.IndependentBernoulli(3, convert_to_tensor_fn="rsample")
    with pytest.raises(ValueError, match="no reparameterized sampler"):
        layer(torch.zeros(2, 3))


@pytest.mark.parametrize("fn,expect", [("mean", "mean"), ("mode", "mode")])
def test_convert_to_tensor_fn_names(fn, expect):
    params = torch.randn(2, 4)
    out = pl.IndependentNormal(2, convert_to_tensor_fn=fn)(params)
    torch.testing.assert_close(out.tensor(), getattr(out, expect))


def test_convert_to_tensor_fn_callable_and_bad_name():
    out = pl.IndependentNormal(2, convert_to_tensor_fn=lambda d: d.mean * 2)(torch.randn(2, 4))
    torch.testing.assert_close(out.tensor(), out.mean * 2)
    for bad in ("median", ["mean"]):  # a name it does not know; an unhashable value
        for make in (
            lambda bad=bad: pl.IndependentNormal(2, convert_to_tensor_fn=bad),
            lambda bad=bad: pl.VariableLayer(2, convert_to_tensor_fn=bad),
            lambda bad=bad: pl.as_coercible(D.Normal(0.0, 1.0), bad),
        ):
            with pytest.raises(ValueError, match=r"^convert_to_tensor_fn: expected one of \['auto'"):
                make()
    # TFP's example passes tfd.Bernoulli.logits, a method there and a property here: the error
    # showed the property object's repr (first-programs audit)
    with pytest.raises(ValueError, match=r"the property Bernoulli.logits .*; pass lambda d: d.logits$"):
        pl.IndependentBernoulli(3, convert_to_tensor_fn=D.Bernoulli.logits)
    with pytest.raises(
        ValueError, match=r"the property Distribution.mean .*; pass lambda d: d.mean or \"mean\"$"
    ):
        pl.IndependentNormal(3, convert_to_tensor_fn=D.Distribution.mean)


def test_distribution_lambda_must_return_distribution():
    layer = pl.DistributionLambda(lambda t: t * 2)
    with pytest.raises(TypeError, match="make_distribution_fn returned Tensor"):
        layer(torch.ones(2))
    with pytest.raises(TypeError, match="make_distribution_fn"):
        pl.DistributionLambda(3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pl.IndependentNormal(2, validate_args=True),
        lambda: pl.MultivariateNormalTriL(2, validate_args=True),
    ],
)
def test_validate_args_refuses_nan_parameters(make):
    # torch's constraints refuse NaN; an infinite loc or scale satisfies `real`/`positive`.
    layer = make()
    params = torch.zeros(3, layer.params_size())
    assert layer(params).batch_shape == (3,)  # finite: accepted
    params[1, 0] = float("nan")
    with pytest.raises(ValueError, match="Expected parameter loc"):
        layer(params)
    # Without validate_args (the default, as in TFP) nothing is checked: the value propagates.
    assert not torch.isfinite(type(layer)(2)(params).mean).all()


def test_multivariate_normal_tril_layer_uses_its_tril_order():
    params = torch.randn(2, 9)
    out = pl.MultivariateNormalTriL(3, tril_order="rows")(params)
    expected = pl.MultivariateNormalTriL.new(params, 3, tril_order="rows").scale_tril
    torch.testing.assert_close(out.scale_tril, expected)
    assert not torch.equal(expected, pl.MultivariateNormalTriL.new(params, 3).scale_tril)


def test_activity_regularizer_is_not_recorded_inside_added_losses_skipped():
    """Catches the mutation (added_losses_enabled() dropped from the activity_regularizer condition)."""
    layer = pl.DistributionLambda(lambda t: D.Normal(t, 1.0), activity_regularizer=lambda d: d.mean.sum())
    with added_losses_skipped():
        layer(torch.ones(3))
    assert float(pl.collect_losses(layer)) == 0.0
    layer(torch.ones(3))  # outside the block it is recorded: sum of the means = 3
    assert float(pl.collect_losses(layer)) == 3.0


def test_params_size_on_an_instance_with_keyword_arguments_uses_them():
    """As TFP's static params_size: arguments win over the instance's settings, keywords too.
    Catches the mutation (only positional arguments taken: keywords silently ignored)."""
    assert pl.OneHotCategorical(4).params_size(event_size=6) == 6
    assert pl.CategoricalMixtureOfOneHotCategorical(4, 3).params_size(event_size=2, num_components=5) == 15


_PRIOR = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
VGP, KLR = pl.VariationalGaussianProcess, pl.KLDivergenceRegularizer


@pytest.mark.parametrize(
    "make, error, message",
    [
        # Keras' dtype strings, integer and complex dtypes: torch's multi-line errors, or a
        # complex layer that failed at its first call (argument audit)
        (
            lambda: pl.DenseReparameterization(3, 2, dtype="float32"),
            TypeError,
            "dtype: .*'float32' \\(torch.float32\\)",
        ),
        (lambda: pl.DenseFlipout(3, 2, dtype=torch.int64), TypeError, "dtype: expected a floating"),
        (lambda: pl.Conv2dFlipout(1, 2, 3, dtype=torch.complex64), TypeError, "dtype: expected a floating"),
        (lambda: pl.DenseVariational(3, 2, dtype="float32"), TypeError, "dtype: expected a floating"),
        (
            lambda: VGP(2, 3, dtype="float64"),
            TypeError,
            "dtype: expected a floating",
        ),
        (lambda: pl.AutoregressiveNetwork(2, 3, dtype=torch.int64), TypeError, "dtype: expected a floating"),
        (lambda: pl.VariableLayer(3, dtype="float32"), TypeError, "dtype: expected a floating"),
        # a tensor weight was never checked: a negative or NaN KL term, or a (2,) "loss"
        (
            lambda: KLR(_PRIOR, weight=torch.tensor(-1.0)),
            ValueError,
            "weight: .*>= 0, got -1.0",
        ),
        (
            lambda: KLR(_PRIOR, weight=torch.tensor(float("nan"))),
            ValueError,
            "weight: ",
        ),
        (
            lambda: KLR(_PRIOR, weight=torch.ones(2)),
            ValueError,
            "weight: .*0-dim tensor",
        ),
        # inf passed the "positive number" checks: NaN and inf results, or a Cholesky failure
        (
            lambda: VGP(2, 3, amplitude=math.inf),
            ValueError,
            "amplitude: .*finite positive",
        ),
        (lambda: VGP(2, 3, length_scale=math.inf), ValueError, "length_scale: "),
        (
            lambda: pl.to_bayesian(nn.Linear(2, 2), init_scale=math.inf),
            ValueError,
            "init_scale: .*finite positive",
        ),
        (lambda: pl.to_bayesian(nn.Linear(2, 2), prior=math.inf), ValueError, "prior: expected a positive"),
        # the string "False" is true: a joint GP, an exact KL, argument checks switched on
        (
            lambda: VGP(2, 3, joint="False"),
            TypeError,
            "joint: expected True or False",
        ),
        (lambda: pl.DenseReparameterization(3, 2, kl_use_exact="False"), TypeError, "kl_use_exact: "),
        (lambda: pl.DenseVariational(3, 2, kl_use_exact="no"), TypeError, "kl_use_exact: "),
        (lambda: KLR(_PRIOR, use_exact_kl="False"), TypeError, "use_exact_kl: "),
        (lambda: pl.IndependentNormal(3, validate_args="False"), TypeError, "validate_args: .*got 'False'"),
        (lambda: pl.OneHotCategorical(3, validate_args=1), TypeError, "validate_args: "),
        (lambda: pl.AutoregressiveNetwork(2, 3, input_order=None), TypeError, "input_order: .*got NoneType"),
        # named in one line where torch or Python failed without the argument's name
        (lambda: pl.posterior_mean_field("3"), TypeError, "kernel_size: expected a positive int"),
        (
            lambda: pl.posterior_mean_field(3, bias_size=-1),
            ValueError,
            "bias_size: expected an int >= 0, got -1",
        ),
        (lambda: pl.prior_trainable(3, bias_size=-1), ValueError, "bias_size: "),
        (
            lambda: pl.to_bayesian(nn.Linear(2, 2), skip=None),
            TypeError,
            "skip: expected an iterable .*NoneType",
        ),
        (
            lambda: pl.MaskedAutoregressiveTransform(pl.AutoregressiveNetwork(2, 2), network_state=1.0),
            TypeError,
            "network_state: expected a dict",
        ),
        (
            lambda: pl.export(nn.Linear(2, 2), (torch.zeros(1, 2),), kwargs=[1]),
            TypeError,
            "kwargs: expected a dict",
        ),
        (lambda: pl.MeanFieldNormal(3, loc_init_std="0.1"), TypeError, "loc_init_std: "),
        (lambda: pl.MeanFieldNormal(3, loc_init_std=None), TypeError, "loc_init_std: "),
        (
            lambda: pl.MeanFieldNormal(3, untransformed_scale_init_mean=math.nan),
            ValueError,
            "untransformed_scale_init_mean: ",
        ),
    ],
)
def test_wrong_arguments_are_named_at_construction(make, error, message):
    with pytest.raises(error, match="^" + message):
        make()


def test_numpy_flags_and_numbers_are_taken():
    assert VGP(2, 3, joint=np.bool_(True), amplitude=np.float32(2.0)).joint is True
    assert KLR(_PRIOR, weight=torch.tensor(0.5)).weight == 0.5
