"""TFP's default_* helpers in torch terms: the mean-field Normal (and its singular limit), the
(loc, scale) maker and the standard normal prior, as the weight layers' fns."""

from __future__ import annotations

import copy
import functools
import pickle

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl


def test_mean_field_normal_fn_is_distributed_as_mean_field_normal():
    torch.manual_seed(0)
    module = pl.default_mean_field_normal_fn()((40, 50))
    ref = pl.MeanFieldNormal((40, 50))
    assert set(module.state_dict()) == set(ref.state_dict()) == {"loc", "untransformed_scale"}
    for name in ("loc", "untransformed_scale"):
        a, b = getattr(module, name), getattr(ref, name)
        assert abs(a.mean() - b.mean()) < 0.02 and abs(a.std() - b.std()) < 0.01
    module.load_state_dict(ref.state_dict())
    q, r = module(torch.zeros(3)), ref()
    assert isinstance(q, D.Independent) and isinstance(q.base_dist, D.Normal)
    assert q.batch_shape == () and q.event_shape == (40, 50)
    torch.testing.assert_close(q.base_dist.scale, r.base_dist.scale)
    torch.testing.assert_close(q.base_dist.loc, r.base_dist.loc)


def test_initializers_dtype_and_layers():
    fn = pl.default_mean_field_normal_fn(
        loc_initializer=nn.init.ones_,
        untransformed_scale_initializer=functools.partial(nn.init.constant_, val=0.0),
    )
    q = fn(3, torch.float64)()
    assert q.mean.dtype == torch.float64 and q.mean.eq(1).all()
    torch.testing.assert_close(
        q.stddev, torch.full((3,), torch.finfo(torch.float64).eps + 0.6931471805599453, dtype=torch.float64)
    )
    for make in (pl.DenseLocalReparameterization, pl.DenseFlipout):
        layer = make(
            3,
            2,
            kernel_posterior_fn=fn,
            bias_posterior_fn=fn,
            kernel_prior_fn=pl.default_multivariate_normal_fn,
            bias_prior_fn=pl.default_multivariate_normal_fn,
        )
        assert layer(torch.randn(4, 3)).shape == (4, 2)
        expected = D.kl_divergence(layer.kernel_posterior(), layer.kernel_prior())
        expected = expected + D.kl_divergence(layer.bias_posterior(), layer.bias_prior())
        torch.testing.assert_close(pl.collect_losses(layer), expected)
    conv = pl.Conv1dFlipout(2, 3, 3, kernel_posterior_fn=pl.default_mean_field_normal_fn())
    assert conv(torch.randn(2, 2, 5)).shape == (2, 3, 3)


def test_singular_is_a_point_mass_with_tfp_kl():
    torch.manual_seed(0)
    layer = pl.DenseReparameterization(
        3, 2, kernel_posterior_fn=pl.default_mean_field_normal_fn(is_singular=True)
    )
    q, p = layer.kernel_posterior(), layer.kernel_prior()
    assert (
        q.batch_shape == ()
        and q.event_shape == (2, 3)
        and "untransformed_scale" not in layer.kernel_posterior.state_dict()
    )
    torch.testing.assert_close(q.rsample((4,)), q.mean.expand(4, 2, 3))
    assert q.variance.eq(0).all() and q.entropy() == 0
    assert q.log_prob(q.mean) == 0 and q.log_prob(q.mean + 1) == -torch.inf
    torch.testing.assert_close(D.kl_divergence(q, p), -p.log_prob(q.mean))
    x = torch.randn(5, 3)
    for exact in (True, False):  # the exact KL and the one-sample estimate agree: no randomness
        point = pl.DenseReparameterization(3, 2, bias=False, kl_use_exact=exact)
        point.kernel_posterior = layer.kernel_posterior
        torch.testing.assert_close(point(x), x @ q.mean.T)
        torch.testing.assert_close(pl.collect_losses(point), -p.log_prob(q.mean))
    flip = pl.DenseFlipout(
        3, 2, kernel_posterior_fn=pl.default_mean_field_normal_fn(is_singular=True), bias=False
    )
    torch.testing.assert_close(flip(x), x @ flip.kernel_posterior().mean.T)  # no perturbation
    with pytest.raises(TypeError, match="Normal"):
        pl.DenseLocalReparameterization(
            3, 2, kernel_posterior_fn=pl.default_mean_field_normal_fn(is_singular=True)
        )(x)


def test_loc_scale_fn():
    torch.manual_seed(0)
    module = pl.default_loc_scale_fn()((2, 3), torch.float64)
    loc, scale = module()
    assert loc.shape == scale.shape == (2, 3) and loc.dtype == torch.float64
    assert loc is module.loc and ((scale > 0.03) & (scale < 0.07)).all()
    torch.testing.assert_close(
        scale, torch.finfo(torch.float64).eps + nn.functional.softplus(module.untransformed_scale)
    )
    singular = pl.default_loc_scale_fn(is_singular=True)(4)
    assert singular()[1] is None and [n for n, _ in singular.named_parameters()] == ["loc"]
    loc.sum().backward()
    assert module.loc.grad is not None


def test_regularizers_are_added_losses():
    fn = pl.default_mean_field_normal_fn(
        loc_regularizer=lambda t: 0.5 * t.square().sum(),
        untransformed_scale_regularizer=lambda t: t.abs().sum(),
    )
    layer = pl.DenseReparameterization(3, 2, kernel_posterior_fn=fn, bias_posterior_fn=None)
    layer(torch.randn(2, 3))
    q = layer.kernel_posterior
    expected = (
        D.kl_divergence(q(), layer.kernel_prior())
        + 0.5 * q.loc.square().sum()
        + q.untransformed_scale.abs().sum()
    )
    torch.testing.assert_close(pl.collect_losses(layer), expected)
    with problayers_losses_skipped():
        pl.clear_losses(layer)
        layer(torch.randn(2, 3))
    assert pl.collect_losses(layer) == 0


def problayers_losses_skipped():
    from problayers.losses import added_losses_skipped

    return added_losses_skipped()


def test_multivariate_normal_fn_is_the_standard_normal():
    p = pl.default_multivariate_normal_fn((2, 3), torch.float64)
    assert isinstance(p, pl.StandardNormal) and p().event_shape == (2, 3) and p().mean.dtype == torch.float64


def test_fns_and_modules_pickle_and_copy():
    fn = pl.default_mean_field_normal_fn()
    again = pickle.loads(pickle.dumps(fn))
    assert again((2,))().event_shape == (2,) and "is_singular=False" in repr(fn)
    module = pl.default_loc_scale_fn(is_singular=True)((2,))
    torch.testing.assert_close(copy.deepcopy(module)()[0], module()[0])
    torch.testing.assert_close(pickle.loads(pickle.dumps(module)).loc, module.loc)


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        ({"is_singular": 1}, TypeError, "is_singular"),
        ({"loc_initializer": 0.1}, TypeError, "loc_initializer"),
        ({"untransformed_scale_initializer": None}, TypeError, "untransformed_scale_initializer"),
        ({"loc_regularizer": "l2"}, TypeError, "loc_regularizer"),
        ({"untransformed_scale_regularizer": 1}, TypeError, "untransformed_scale_regularizer"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, argument):
    for make in (pl.default_mean_field_normal_fn, pl.default_loc_scale_fn):
        with pytest.raises(error, match=argument):
            make(**kwargs)
    with pytest.raises(ValueError, match="shape"):
        pl.default_mean_field_normal_fn()((2, 0))


def test_regularized_posterior_compiles_fullgraph():
    torch.manual_seed(0)
    fn = pl.default_mean_field_normal_fn(loc_regularizer=torch.linalg.vector_norm)
    layer = pl.DenseFlipout(3, 2, kernel_posterior_fn=fn)
    x = torch.randn(4, 3)

    def loss(x):
        return layer(x).square().mean() + pl.collect_losses(layer, clear=True)

    torch.compiler.reset()
    try:
        torch.manual_seed(1)
        expected = loss(x)
        torch.manual_seed(1)
        got = torch.compile(loss, backend="aot_eager", fullgraph=True)(x)
    finally:
        torch.compiler.reset()
    torch.testing.assert_close(got, expected)


def test_mean_field_normal_fn_scale_has_an_eps_floor():
    made = pl.default_mean_field_normal_fn()((3,), None)
    with torch.no_grad():
        made.untransformed_scale.fill_(-200.0)
    assert torch.all(made().base_dist.scale == torch.finfo(torch.float32).eps)
    assert torch.isfinite(made().log_prob(torch.zeros(3)))
