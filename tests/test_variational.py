"""Weight-uncertainty layers: shapes, KL terms collected and scaled, unbiased gradients, errors."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

import problayers as pl

DENSE = [pl.DenseReparameterization, pl.DenseLocalReparameterization, pl.DenseFlipout]
CONV = [pl.Conv2dReparameterization, pl.Conv2dFlipout]


def _spread_posteriors(layer: nn.Module, seed: int = 0) -> None:
    """Give every MeanFieldNormal a random loc and a scale around 0.5 (a posterior worth testing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, pl.MeanFieldNormal):
                m.loc.copy_(torch.randn(m.loc.shape, generator=gen))
                m.untransformed_scale.copy_(torch.randn(m.loc.shape, generator=gen) * 0.3 - 0.4)


# -- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", DENSE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)], ids=str)
def test_dense_shapes(cls, batch):
    layer = cls(3, 5)
    assert layer(torch.randn(*batch, 3)).shape == (*batch, 5)
    assert pl.DenseVariational(3, 5)(torch.randn(*batch, 3)).shape == (*batch, 5)


@pytest.mark.parametrize("cls", CONV, ids=lambda c: c.__name__)
def test_conv_shapes_match_nn_conv2d(cls):
    kwargs = {"kernel_size": (3, 2), "stride": 2, "padding": 1, "dilation": 1, "groups": 2}
    layer, ref = cls(4, 6, **kwargs), nn.Conv2d(4, 6, **kwargs)
    x = torch.randn(2, 4, 9, 8)
    assert layer(x).shape == ref(x).shape
    assert layer(x[0]).shape == ref(x[0]).shape
    assert cls(4, 6, 3, padding="same")(x).shape == (2, 6, 9, 8)


def test_activation_float64_and_no_bias():
    layer = pl.DenseFlipout(3, 2, bias=False, activation=torch.relu, dtype=torch.float64)
    out = layer(torch.randn(4, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and (out >= 0).all()
    assert layer.bias_posterior is None and layer.bias_prior is None
    assert pl.DenseVariational(3, 2, use_bias=False).posterior.shape == (6,)


def test_defaults_mean_field_posterior_standard_normal_prior():
    """TFP's defaults: a mean-field kernel with a fixed N(0, 1) prior; a point-estimate bias
    (``default_mean_field_normal_fn(is_singular=True)``) with no prior, so no bias KL."""
    torch.manual_seed(0)  # the scale's bounds below are ~3.8 sd of the initial noise
    layer = pl.DenseReparameterization(3, 2)
    assert isinstance(layer.kernel_posterior, pl.MeanFieldNormal)
    assert isinstance(layer.kernel_prior, pl.StandardNormal)
    assert layer.bias_posterior.is_singular and layer.bias_prior is None
    bias = layer.bias_posterior().rsample()
    assert bias.shape == (2,) and bias.ne(0).all() and bias.eq(layer.bias_posterior.loc).all()
    assert layer.kl_use_exact and layer.kl_weight == 1.0
    assert not pl.DenseVariational(3, 2).kl_use_exact
    scale = layer.kernel_posterior().base_dist.scale
    assert ((scale > 0.03) & (scale < 0.07)).all()  # softplus(-3 +- noise)
    state = layer.state_dict()
    assert "kernel_posterior.loc" in state and "kernel_prior.loc" not in state  # fixed prior: no state
    assert "bias_posterior.loc" in state and "bias_posterior.untransformed_scale" not in state


# -- KL terms ---------------------------------------------------------------------------------


def _exact_kl(layer) -> torch.Tensor:
    kl = D.kl_divergence(layer.kernel_posterior(), layer.kernel_prior())
    if layer.bias_prior is not None:
        kl = kl + D.kl_divergence(layer.bias_posterior(), layer.bias_prior())
    return kl


def test_kl_terms_are_collected_from_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(
        pl.DenseFlipout(3, 4, activation=torch.tanh),
        pl.DenseLocalReparameterization(4, 4, bias_prior_fn=None),
        pl.DenseReparameterization(4, 2),
    )
    model(torch.randn(5, 3))
    expected = sum(_exact_kl(layer) for layer in model)
    torch.testing.assert_close(pl.collect_losses(model), expected)
    conv = pl.Conv2dFlipout(2, 3, 3)
    conv(torch.randn(1, 2, 5, 5))
    torch.testing.assert_close(pl.collect_losses(conv), _exact_kl(conv))


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "monte-carlo"])
@pytest.mark.parametrize(
    "make",
    [
        lambda w, e: pl.DenseVariational(3, 2, pl.posterior_mean_field, pl.prior_trainable, w, e),
        lambda w, e: pl.DenseFlipout(3, 2, kl_weight=w, kl_use_exact=e),
        lambda w, e: pl.DenseLocalReparameterization(3, 2, kl_weight=w, kl_use_exact=e),
        lambda w, e: pl.Conv2dReparameterization(2, 2, 3, kl_weight=w, kl_use_exact=e),
    ],
    ids=["DenseVariational", "DenseFlipout", "DenseLocalReparameterization", "Conv2dReparameterization"],
)
def test_kl_term_scales_with_kl_weight(make, exact):
    one, small = make(1.0, exact), make(0.01, exact)
    small.load_state_dict(one.state_dict())
    x = torch.randn(2, 2, 4, 4) if isinstance(one, pl.Conv2dReparameterization) else torch.randn(2, 3)
    for layer in (one, small):
        torch.manual_seed(7)
        layer(x)
    kl_one, kl_small = pl.collect_losses(one), pl.collect_losses(small)
    assert kl_one.abs() > 0
    torch.testing.assert_close(kl_small, 0.01 * kl_one, rtol=1e-5, atol=0)


# TFP's divergence functions: the Bayesian MNIST example's ``kl / N`` ported as it is written.
@pytest.mark.parametrize(
    "make,x_shape",
    [
        (lambda **kw: pl.DenseFlipout(3, 2, bias_prior_fn=pl.StandardNormal, **kw), (4, 3)),
        (lambda **kw: pl.DenseReparameterization(3, 2, bias_prior_fn=pl.StandardNormal, **kw), (4, 3)),
        (lambda **kw: pl.DenseLocalReparameterization(3, 2, bias_prior_fn=pl.StandardNormal, **kw), (4, 3)),
        (lambda **kw: pl.Conv2dFlipout(2, 2, 3, bias_prior_fn=pl.StandardNormal, **kw), (1, 2, 5, 5)),
        (
            lambda **kw: pl.ConvTranspose1dReparameterization(2, 2, 3, bias_prior_fn=pl.StandardNormal, **kw),
            (1, 2, 4),
        ),
    ],
    ids=[
        "DenseFlipout",
        "DenseReparameterization",
        "DenseLocalReparameterization",
        "Conv2dFlipout",
        "ConvT1dRep",
    ],
)
def test_divergence_fns_replace_or_drop_each_term(make, x_shape):
    n = 60000

    def scaled_kl(q, p, w):  # TFP's example: lambda q, p, _: tfd.kl_divergence(q, p) / N
        return D.kl_divergence(q, p) / n

    default = make()
    _spread_posteriors(default)
    x = torch.randn(x_shape)
    default(x)
    kernel_kl = D.kl_divergence(default.kernel_posterior(x), default.kernel_prior(x))
    bias_kl = D.kl_divergence(default.bias_posterior(x), default.bias_prior(x))
    torch.testing.assert_close(pl.collect_losses(default), kernel_kl + bias_kl)
    for kwargs, want in [
        (dict(kernel_divergence_fn=scaled_kl, bias_divergence_fn=scaled_kl), (kernel_kl + bias_kl) / n),
        (dict(kernel_divergence_fn=None), bias_kl),  # TFP: None adds no term
        (dict(bias_divergence_fn=None), kernel_kl),
        (dict(kernel_divergence_fn=None, bias_divergence_fn=None), torch.zeros(())),
        (dict(kernel_divergence_fn=scaled_kl, kl_weight=0.5), 0.5 * (kernel_kl / n + bias_kl)),
    ]:
        layer = make(**kwargs)
        layer.load_state_dict(default.state_dict())
        layer(x)
        torch.testing.assert_close(pl.collect_losses(layer), want, msg=str(kwargs))


def test_divergence_fn_gets_the_weights_the_forward_used():
    seen = {}

    def record(role):
        def fn(q, p, w):
            seen[role] = w
            return D.kl_divergence(q, p)

        return fn

    kw = dict(kernel_divergence_fn=record("kernel"), bias_divergence_fn=record("bias"))
    layer = pl.DenseReparameterization(3, 2, bias_prior_fn=pl.StandardNormal, **kw)
    _spread_posteriors(layer)
    x = torch.randn(4, 3)
    out = layer(x)
    torch.testing.assert_close(out, F.linear(x, seen["kernel"], seen["bias"]))
    local = pl.DenseLocalReparameterization(
        3, 2, bias_posterior_fn=pl.MeanFieldNormal, bias_prior_fn=pl.StandardNormal, **kw
    )
    out = local(torch.cat([torch.zeros(1, 3), x]))  # a zero row: its output is the bias
    assert seen["kernel"] is None  # local reparameterization draws no kernel (TFP passes None too)
    assert seen["bias"].shape == (2,)  # but TFP draws the bias: its sample, as a one-sample estimate needs
    assert not torch.equal(seen["bias"], local.bias_posterior(x).mean)
    torch.testing.assert_close(out[0], seen["bias"])  # the bias the forward added


def test_dropped_terms_and_numbers():
    # None drops a term even for a posterior that has no mean (a Logistic kernel posterior)
    layer = pl.DenseReparameterization(
        3, 2, kernel_posterior_fn=_LogisticPosterior, kernel_divergence_fn=None
    )
    assert layer(torch.randn(4, 3)).shape == (4, 2)
    added = pl.collect_losses(layer)
    assert isinstance(added, torch.Tensor) and added.item() == 0.0
    constant = pl.DenseFlipout(3, 2, kernel_divergence_fn=lambda q, p, w: 0.5, kl_weight=2.0)
    constant(torch.randn(2, 3))  # a number is taken, as TFP's tf.identity takes it
    assert pl.collect_losses(constant).item() == 1.0


def test_number_terms_and_flipout_outputs_take_the_models_dtype():
    # A divergence given as a number is recorded in the input's dtype (it was float32 in a
    # float64 model), and Flipout's output under bf16 autocast is bf16, as nn.Linear's and the
    # other weight layers' (its sign tensor made it float32).
    layer = pl.DenseFlipout(3, 2, kernel_divergence_fn=lambda q, p, w: 0.1, bias_divergence_fn=None).double()
    layer(torch.randn(2, 3, dtype=torch.float64))
    term = pl.collect_losses(layer)
    assert term.dtype == torch.float64 and term.item() == 0.1
    cases = [
        (pl.DenseFlipout(3, 2), (2, 3)),
        (pl.Conv1dFlipout(1, 2, 3), (2, 1, 5)),
        (nn.Linear(3, 2), (2, 3)),
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for layer, shape in cases:
            assert layer(torch.randn(shape)).dtype == torch.bfloat16, type(layer).__name__


def test_bad_divergence_fns_are_named():
    with pytest.raises(TypeError, match="kernel_divergence_fn: expected 'kl', None or a callable"):
        pl.DenseFlipout(3, 2, kernel_divergence_fn="exact")
    with pytest.raises(TypeError, match=r"bias_divergence_fn: expected .* got 1\.0"):
        pl.Conv2dFlipout(2, 2, 3, bias_divergence_fn=1.0)
    with pytest.raises(TypeError, match=r"kernel_divergence_fn: expected .* got ndarray"):
        pl.DenseFlipout(3, 2, kernel_divergence_fn=np.zeros(3))
    layer = pl.DenseFlipout(3, 2, bias_prior_fn=pl.StandardNormal, bias_divergence_fn=lambda q, p, w: "kl")
    with pytest.raises(
        TypeError, match="DenseFlipout: bias_divergence_fn returned str, expected a Tensor or a number"
    ):
        layer(torch.randn(2, 3))


def test_monte_carlo_kl_is_unbiased():
    """DenseVariational's default one-sample KL averages to the exact KL (4 standard errors)."""
    torch.manual_seed(0)
    layer = pl.DenseVariational(2, 2)
    _spread_posteriors(layer)
    x = torch.randn(3, 2)
    with torch.no_grad():
        draws = []
        for _ in range(4000):
            layer(x)
            draws.append(pl.collect_losses(layer, clear=True))
    draws = torch.stack(draws)
    exact = D.kl_divergence(layer.posterior(), layer.prior())
    assert abs(draws.mean() - exact) < 4 * draws.std() / 4000**0.5


# -- unbiased gradients -----------------------------------------------------------------------


def _dense_op(x, kernel, bias):
    return F.linear(x, kernel, bias)


def _conv_op(x, kernel, bias):
    return F.conv2d(x, kernel, bias, padding=1)


def _conv1d_op(x, kernel, bias):
    return F.conv1d(x, kernel, bias, padding=1)


def _conv_transpose2d_op(x, kernel, bias):
    return F.conv_transpose2d(x, kernel, bias, stride=2)


def _conv_transpose3d_op(x, kernel, bias):
    return F.conv_transpose3d(x, kernel, bias)


def _moments(layer):
    """(kernel mean, kernel variance, bias mean, bias variance) of the layer's posteriors."""
    if isinstance(layer, pl.DenseVariational):
        q = layer.posterior()
        k = layer.kernel_size
        shape = (layer.units, layer.in_features)
        return q.mean[:k].view(shape), q.variance[:k].view(shape), q.mean[k:], q.variance[k:]
    qk, qb = layer.kernel_posterior(), layer.bias_posterior()
    return qk.mean, qk.variance, qb.mean, qb.variance


@pytest.mark.parametrize(
    "make,op,x_shape",
    [
        (lambda: pl.DenseReparameterization(3, 2), _dense_op, (4, 3)),
        (lambda: pl.DenseLocalReparameterization(3, 2), _dense_op, (4, 3)),
        (lambda: pl.DenseFlipout(3, 2), _dense_op, (4, 3)),
        (lambda: pl.DenseVariational(3, 2), _dense_op, (4, 3)),
        (lambda: pl.Conv2dReparameterization(2, 2, 3, padding=1), _conv_op, (2, 2, 3, 3)),
        (lambda: pl.Conv2dFlipout(2, 2, 3, padding=1), _conv_op, (2, 2, 3, 3)),
        (lambda: pl.Conv1dFlipout(2, 2, 3, padding=1), _conv1d_op, (3, 2, 4)),
        (lambda: pl.ConvTranspose2dReparameterization(2, 2, 2, stride=2), _conv_transpose2d_op, (2, 2, 2, 2)),
        (lambda: pl.ConvTranspose2dFlipout(2, 2, 2, stride=2), _conv_transpose2d_op, (2, 2, 2, 2)),
        (lambda: pl.ConvTranspose3dFlipout(2, 2, 2), _conv_transpose3d_op, (2, 2, 2, 2, 2)),
    ],
    ids=[
        "DenseReparam",
        "DenseLocalReparam",
        "DenseFlipout",
        "DenseVariational",
        "Conv2dReparam",
        "Conv2dFlipout",
        "Conv1dFlipout",
        "ConvTranspose2dReparam",
        "ConvTranspose2dFlipout",
        "ConvTranspose3dFlipout",
    ],
)
def test_gradients_are_unbiased(make, op, x_shape):
    """The average of the estimator's gradients of ``sum (out - y)^2`` over M seeded draws
    matches the exact gradient of its expectation

        E[sum (out - y)^2] = sum (op(x, E W, E b) - y)^2 + op(x^2, Var W, Var b)

    (independent Gaussian weights) within 4 Monte Carlo standard errors, per parameter."""
    torch.manual_seed(0)
    layer = make()
    _spread_posteriors(layer)
    x, y = torch.randn(x_shape), None
    with torch.no_grad():
        y = torch.randn_like(layer(x))
    params = list(layer.parameters())

    mk, vk, mb, vb = _moments(layer)
    expected = ((op(x, mk, mb) - y).square() + op(x.square(), vk, vb)).sum()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(expected, params)])

    m = 1000
    draws = []
    for _ in range(m):
        loss = (layer(x) - y).square().sum()
        draws.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    draws = torch.stack(draws)  # (M, P)
    mean, se = draws.mean(0), draws.std(0) / m**0.5
    assert (se > 0).all()
    assert ((mean - exact).abs() <= 4 * se + 1e-5).all(), ((mean - exact) / se).abs().max()


def test_flipout_decorrelates_examples_reparameterization_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 3).expand(6, 3)  # six copies of one example
    flip, rep = pl.DenseFlipout(3, 2), pl.DenseReparameterization(3, 2)
    _spread_posteriors(flip), _spread_posteriors(rep)
    assert flip(x).std(0).min() > 0
    assert rep(x).std(0).max() == 0


def test_flipout_signs_both_sides_of_the_perturbation():
    # out = x W + ((x * s_in) dW) * s_out. With copies of one one-hot input, the signs on the input
    # side alone make every example's perturbation +-dW[:, 0]: outputs 0 and 1 would be perfectly
    # correlated across examples. The output-side signs decorrelate them.
    torch.manual_seed(0)
    layer = pl.DenseFlipout(3, 2)
    _spread_posteriors(layer)
    x = torch.tensor([[1.0, 0.0, 0.0]]).expand(400, 3)
    out = layer(x).detach()
    corr = torch.corrcoef(out.T)[0, 1]
    assert abs(float(corr)) < 0.3, float(corr)


def test_local_reparameterization_output_has_the_weights_variance():
    # Given the forward's bias draw b ~ q_b (one per forward, shared by the batch, as TFP's),
    # each output is Normal(x m_k + b, x^2 s_k^2): 20,000 copies of one x beside a zero row
    # (whose output is b); the sample variance's relative standard error is sqrt(2 / 20000) =
    # 1%, the tolerance 5%. Over 2,000 forwards b has q_b's mean and variance (relative
    # standard error 3.2%, tolerance 12%).
    torch.manual_seed(0)
    layer = pl.DenseLocalReparameterization(3, 2, bias_posterior_fn=pl.MeanFieldNormal)
    _spread_posteriors(layer)
    with torch.no_grad():
        qk, qb = layer.kernel_posterior(), layer.bias_posterior()
        x = torch.tensor([0.5, -1.0, 2.0])
        out = layer(torch.cat([torch.zeros(1, 3), x.expand(20_000, 3)]))
        bias, out = out[0], out[1:]
        var = qk.variance @ x.square()  # (2,)
        torch.testing.assert_close(out.var(0), var, rtol=0.05, atol=0.0)
        torch.testing.assert_close(
            out.mean(0), qk.mean @ x + bias, rtol=0.0, atol=5 * float(var.max().sqrt()) / 141
        )
        biases = torch.stack([layer(torch.zeros(4, 3)) for _ in range(2_000)])  # (2000, 4, 2)
        assert torch.equal(biases, biases[:, :1].expand_as(biases))  # one bias per forward
        torch.testing.assert_close(biases[:, 0].var(0), qb.variance, rtol=0.12, atol=0.0)
        torch.testing.assert_close(
            biases[:, 0].mean(0), qb.mean, rtol=0.0, atol=5 * float(qb.variance.max().sqrt()) / 2_000**0.5
        )


# -- errors -----------------------------------------------------------------------------------


class _LogisticPosterior(nn.Module):
    """A symmetric, non-Gaussian posterior without a KL formula against a Normal."""

    def __init__(self, shape, dtype=None):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(shape))

    def forward(self, *ignored):
        return D.Independent(pl.Logistic(self.loc, torch.ones_like(self.loc)), self.loc.dim())


def test_local_reparameterization_needs_a_normal_kernel_posterior_only():
    layer = pl.DenseLocalReparameterization(3, 2, kernel_posterior_fn=_LogisticPosterior, kl_use_exact=False)
    with pytest.raises(TypeError, match=r"Independent\(Normal\)\) kernel posterior, got Logistic$"):
        layer(torch.randn(2, 3))
    pl.DenseFlipout(3, 2, kernel_posterior_fn=_LogisticPosterior, kl_use_exact=False)(torch.randn(2, 3))
    # any bias posterior with rsample, as TFP's: one draw per forward, added to every example
    layer = pl.DenseLocalReparameterization(3, 2, bias_posterior_fn=_LogisticPosterior, kl_use_exact=False)
    out = layer(torch.zeros(4, 3))  # the kernel's term is 0: each row is the bias
    assert torch.equal(out, out[:1].expand(4, 2)) and not torch.equal(out[0], torch.zeros(2))


def test_wrong_posterior_shape_is_named():
    bad = functools.partial(lambda shape, dtype: pl.MeanFieldNormal(5))
    with pytest.raises(ValueError, match=r"DenseReparameterization.*kernel posterior.*\(2, 3\).*\(5,\)"):
        pl.DenseReparameterization(3, 2, kernel_posterior_fn=bad)(torch.randn(1, 3))
    with pytest.raises(TypeError, match=r"posterior returned (Tensor|Parameter)"):
        pl.DenseVariational(3, 2, lambda k, b, d: pl.VariableLayer(k + b))(torch.randn(1, 3))


def test_exact_kl_without_a_formula_says_so():
    layer = pl.DenseReparameterization(3, 2, kernel_posterior_fn=_LogisticPosterior, bias=False)
    with pytest.raises(NotImplementedError, match=r"kl_use_exact=True.*register_kl"):
        layer(torch.randn(2, 3))


@pytest.mark.parametrize(
    "make,error,argument",
    [
        (lambda: pl.DenseFlipout(0, 2), ValueError, "in_features"),
        (lambda: pl.DenseReparameterization(3, 2.0), TypeError, "out_features"),
        (lambda: pl.DenseFlipout(3, 2, kl_weight=-1.0), ValueError, "kl_weight"),
        (lambda: pl.DenseFlipout(3, 2, kl_weight=float("nan")), ValueError, "kl_weight: expected a finite"),
        (
            lambda: pl.DenseVariational(3, 2, kl_weight=float("inf")),
            ValueError,
            "kl_weight: expected a finite",
        ),
        (lambda: pl.DenseFlipout(3, 2, kl_weight="1"), TypeError, "kl_weight"),
        (
            lambda: pl.DenseFlipout(3, 2, activation="Relu"),
            ValueError,
            "activation: expected a callable, None or one of",
        ),
        (lambda: pl.DenseFlipout(3, 2, activation=3), TypeError, "activation"),
        (lambda: pl.DenseFlipout(3, 2, kernel_posterior_fn=None), TypeError, "kernel_posterior_fn"),
        (lambda: pl.Conv2dFlipout(3, 4, 3, groups=2), ValueError, "groups"),
        (lambda: pl.Conv2dFlipout(3, 4, (1, 2, 3)), ValueError, "kernel_size"),
        (lambda: pl.Conv2dReparameterization(3, 4, 3, padding="full"), ValueError, "padding"),
        (lambda: pl.Conv2dReparameterization(3, 4, 3, stride=0), ValueError, "stride"),
        (lambda: pl.DenseVariational(3, 0), ValueError, "units"),
        (  # TFP's order (units, posterior, prior): the message said only "got function"
            lambda: pl.DenseVariational(2, pl.posterior_mean_field, pl.prior_trainable),
            TypeError,
            r"units: .*got a callable; DenseVariational takes in_features first",
        ),
        (lambda: pl.DenseVariational(3, 2, make_posterior_fn=3), TypeError, "make_posterior_fn"),
        (lambda: pl.DenseVariational(3, 2, make_prior_fn=lambda k, b, d: 3), TypeError, "make_prior_fn"),
    ],
)
def test_bad_constructor_arguments_are_named(make, error, argument):
    with pytest.raises(error, match=argument):
        make()


@pytest.mark.parametrize(
    "layer,x",
    [
        (pl.DenseFlipout(3, 2), torch.randn(2, 4)),
        (pl.DenseVariational(3, 2), torch.randn(2, 4)),
        (pl.Conv2dFlipout(3, 2, 3), torch.randn(2, 4, 5, 5)),
        (pl.Conv2dReparameterization(3, 2, 3), torch.randn(5, 5)),
    ],
    ids=["dense", "variational", "conv-channels", "conv-rank"],
)
def test_bad_input_shape_is_named(layer, x):
    with pytest.raises(
        ValueError, match=rf"{type(layer).__name__}: expected input of shape.*{tuple(x.shape)}"
    ):
        layer(x)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: pl.DenseVariational(3, 2), "DenseVariational"),
        (lambda: pl.AutoregressiveNetwork(2, 3), "AutoregressiveNetwork"),
    ],
)
def test_a_list_as_input_is_named(make, name):
    with pytest.raises(TypeError, match=f"{name}: expected input as a torch.Tensor, got list"):
        make()([[0.0, 1.0, 2.0]])


def test_mean_field_scale_has_an_eps_floor():
    # A collapsed raw scale gives eps, not 0: log_prob and the KL stay finite.
    q = pl.MeanFieldNormal(3)
    with torch.no_grad():
        q.untransformed_scale.fill_(-200.0)
    assert torch.all(q.scale == torch.finfo(torch.float32).eps)
    assert torch.isfinite(q().log_prob(torch.zeros(3)))


def test_prior_trainable_has_unit_scale():
    prior = pl.prior_trainable(6, 2)(torch.zeros(1))
    assert torch.equal(prior.stddev, torch.ones(8))
    assert prior.event_shape == (8,)


def test_divergence_fn_returning_per_weight_terms_is_summed():
    # A TFP-style divergence_fn may return one term per weight; the layer records their sum.
    layer = pl.DenseReparameterization(3, 2, kernel_divergence_fn=lambda q, p, w: torch.ones(2, 3))
    layer(torch.zeros(5, 3))
    assert pl.collect_losses(layer).item() == 6.0


def test_variable_layer_activation_passes_gradients_to_the_variable():
    """activation(variable) is differentiable in the variable: d/dv sum(exp(v)) = exp(v) = e^-1.
    Catches the mutation (activation applied to a detached variable)."""
    layer = pl.VariableLayer(2, dtype=torch.float64, initializer=-1.0, activation=torch.exp)
    layer().sum().backward()
    torch.testing.assert_close(layer.variable.grad, torch.full((2,), math.exp(-1.0), dtype=torch.float64))


def test_dense_variational_uses_a_coercible_posteriors_value():
    # TFP's w = convert_to_tensor(q): a posterior built as the notebooks build it, a
    # VariableLayer and a DistributionLambda with convert_to_tensor_fn="mean", gives the
    # posterior-mean weights every call (it used to draw q.rsample() regardless); the MC KL is
    # evaluated there.
    def posterior(kernel_size, bias_size, dtype=None):
        n = kernel_size + bias_size
        return nn.Sequential(
            pl.VariableLayer(2 * n, dtype=dtype),
            pl.DistributionLambda(
                lambda t: D.Independent(D.Normal(t[..., :n], 1e-5 + F.softplus(t[..., n:])), 1),
                convert_to_tensor_fn="mean",
            ),
        )

    torch.manual_seed(0)
    layer = pl.DenseVariational(3, 2, make_posterior_fn=posterior)
    x = torch.randn(4, 3)
    mean = layer.posterior[0].variable[:8].detach()  # (kernel_size + bias_size,)
    expected = F.linear(x, mean[:6].view(2, 3), mean[6:])
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x), expected)  # the same weights every call
    q, p = layer.posterior(x), layer.prior(x)
    torch.testing.assert_close(pl.collect_losses(layer), q.log_prob(mean) - p.log_prob(mean))


def test_tfps_call_forms_padding_in_capitals_and_kl_weight_none():
    # TFP's Bayesian MNIST example writes padding="SAME"; DenseVariational's kl_weight
    # defaults to None in TFP (no scaling).
    layer = pl.Conv2dFlipout(1, 2, 3, padding="SAME")
    assert layer.padding == "same" and layer(torch.randn(1, 1, 5, 5)).shape == (1, 2, 5, 5)
    assert pl.Conv2dReparameterization(1, 2, 3, padding="VALID")(torch.randn(1, 1, 5, 5)).shape == (
        1,
        2,
        3,
        3,
    )
    assert pl.DenseVariational(3, 2, kl_weight=None).kl_weight == 1.0
