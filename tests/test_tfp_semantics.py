"""TFP's semantics where a port depends on them (issue 16): the DistributionLambda default,
params_size on an instance, log_mean, test_points_reduce_axis=None, the nn.Module prior
convention, the regularizer's errors for priors that cannot be one, and every layer taking another
layer's output (a distribution) as its input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from layer_cases import MODEL_CASES, ModelCase


def test_distribution_lambda_default_samples_where_there_is_no_rsample():
    # TFP's default convert_to_tensor_fn is `sample`, reparameterized where possible.
    bern = pl.DistributionLambda(lambda t: D.Bernoulli(logits=t))(torch.zeros(3))
    assert set(bern.tensor().tolist()) <= {0.0, 1.0}
    mix = pl.DistributionLambda(
        lambda t: D.MixtureSameFamily(D.Categorical(logits=t), D.Normal(torch.zeros(2), 1.0))
    )(torch.zeros(2))
    assert mix.shape == () and torch.isfinite(mix.tensor())
    loc = torch.zeros(3, requires_grad=True)
    normal = pl.DistributionLambda(lambda t: D.Normal(t, 1.0))(loc)
    normal.tensor().sum().backward()  # rsample: the gradient reaches the parameters
    assert torch.equal(loc.grad, torch.ones(3))


def test_params_size_on_an_instance_uses_its_settings():
    assert pl.IndependentNormal((1, 28, 28)).params_size() == 2 * 784
    assert pl.IndependentNormal.params_size((1, 28, 28)) == 2 * 784  # static, as in tfp.layers
    assert pl.IndependentBernoulli((2, 3)).params_size() == 6
    assert pl.MultivariateNormalTriL(4).params_size() == 4 + 10
    assert pl.OneHotCategorical(5).params_size() == 5
    assert pl.CategoricalMixtureOfOneHotCategorical(4, 3).params_size() == 15
    assert pl.MixtureNormal(3, (2,)).params_size() == 3 + 3 * 4
    assert pl.MixtureSameFamily(3, pl.IndependentNormal(2)).params_size() == 15
    assert pl.IndependentNormal((1, 28, 28)).params_size(3) == 6  # arguments still win


def test_log_mean_of_the_one_hot_mixture():
    torch.manual_seed(0)
    params = torch.randn(4, pl.CategoricalMixtureOfOneHotCategorical.params_size(5, 3))
    out = pl.CategoricalMixtureOfOneHotCategorical(5, 3)(params)
    weights = out.mixture_distribution.probs.unsqueeze(-1)  # (4, 3, 1)
    direct = (weights * out.component_distribution.probs).sum(-2).log()  # log of the mean, (4, 5)
    torch.testing.assert_close(out.log_mean(), direct)
    torch.testing.assert_close(out.log_mean().exp(), out.mean)
    assert isinstance(out, D.MixtureSameFamily)


def test_test_points_reduce_axis_none_means_all_axes():
    torch.manual_seed(0)
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    q = pl.as_coercible(D.Independent(D.Normal(torch.randn(4, 2), 1.0), 1), lambda d: d.rsample((5,)))
    everything = pl.KLDivergenceRegularizer(prior, test_points_reduce_axis=None)(q)
    samples_first = pl.KLDivergenceRegularizer(prior, test_points_reduce_axis=0)(q)
    torch.testing.assert_close(everything, samples_first)
    with pytest.raises(TypeError, match="test_points_reduce_axis: expected an int"):
        pl.KLDivergenceRegularizer(prior, test_points_reduce_axis="x")


def test_a_module_prior_is_called_with_the_posterior():
    # TFP's trainable prior, VariableLayer + DistributionLambda, as an nn.Sequential.
    prior = nn.Sequential(
        pl.VariableLayer(2, initializer="zeros"),
        pl.DistributionLambda(lambda loc: D.Independent(D.Normal(loc, 1.0), 1)),
    )
    seen = []

    class Recording(nn.Module):
        def forward(self, q):
            seen.append(q)
            return D.Independent(D.Normal(torch.zeros(2), 1.0), 1)

    q = pl.IndependentNormal(2)(torch.zeros(4, 4))
    kl = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q)
    kl.backward()
    assert prior[0].variable.grad is not None  # the prior is trained
    pl.KLDivergenceRegularizer(Recording())(q)
    assert seen == [q]

    class NoInput(nn.Module):
        def forward(self):
            return D.Independent(D.Normal(torch.zeros(2), 1.0), 1)

    assert torch.isfinite(pl.KLDivergenceRegularizer(NoInput())(q))


def test_priors_that_cannot_be_one_are_named_at_the_regularizer():
    q = pl.IndependentNormal(3)(torch.zeros(4, 6))
    with pytest.raises(TypeError, match="KLDivergenceRegularizer: prior: the Linear returned Tensor"):
        pl.KLDivergenceRegularizer(nn.Linear(3, 3))(q)
    wrong = D.Independent(D.Normal(torch.zeros(4), 1.0), 1)
    with pytest.raises(ValueError, match=r"prior's event_shape \(4,\) differs from the posterior's \(3,\)"):
        pl.KLDivergenceRegularizer(wrong)(q)
    with pytest.raises(ValueError, match="event_shape"):
        pl.KLDivergenceRegularizer(wrong, use_exact_kl=True)(q)
    with pytest.raises(TypeError, match=r"prior: expected a torch\.distributions\.Distribution"):
        pl.KLDivergenceRegularizer(3)


def test_collect_losses_of_something_else_is_a_clear_error():
    with pytest.raises(TypeError, match=r"collect_losses: expected an nn\.Module, got str"):
        pl.collect_losses("x")
    with pytest.raises(TypeError, match=r"clear_losses: expected an nn\.Module, got int"):
        pl.clear_losses(3)


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_every_layer_takes_a_distribution_as_its_input(case: ModelCase):
    """In tfp.layers a layer after a distribution layer gets the distribution's tensor value
    (Keras converts it): ``DenseFlipout`` after ``MultivariateNormalTriL`` is the usual Bayesian
    head. Here every model of the catalog gives, for a distribution input, exactly what it gives
    for that distribution's tensor value, and the same gradient reaches the distribution's
    parameters as reaches the tensor."""
    torch.manual_seed(0)
    model = case.make_model()
    x = torch.randn(4, *case.input_shape)

    def run(inp, values=None):
        torch.manual_seed(1)
        out = model(inp)
        value = pl.convert_to_tensor(out) if case.distribution else out
        score = out.log_prob(values).sum() if case.distribution and values is not None else out.sum()
        return value, score + pl.collect_losses(model, clear=True)

    with torch.no_grad():
        values = run(x)[0] if case.distribution else None
    plain = x.clone().requires_grad_()
    want, want_score = run(plain, values)
    loc = x.clone().requires_grad_()
    got, got_score = run(pl.as_coercible(D.Normal(loc, 1.0), convert_to_tensor_fn="mean"), values)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_score, want_score, rtol=0, atol=0)
    got_score.backward()
    want_score.backward()
    assert (loc.grad is None) == (plain.grad is None)
    if plain.grad is not None:
        torch.testing.assert_close(loc.grad, plain.grad, rtol=0, atol=0)


# -- what a port of TFP's examples runs into ---------------------------------------------------


def test_an_initializer_that_returns_the_value_is_taken():
    """A Keras-style callable returns the value instead of filling in place: it used to leave
    the parameter as torch.empty left it."""
    layer = pl.VariableLayer(4, initializer=lambda t: torch.full_like(t, 0.5413))
    torch.testing.assert_close(layer.variable.detach(), torch.full((4,), 0.5413))
    make = pl.default_mean_field_normal_fn(
        loc_initializer=lambda t: torch.zeros_like(t), untransformed_scale_initializer=lambda t: -9.0
    )
    q = make((3,), None)
    assert torch.equal(q.loc.detach(), torch.zeros(3)) and torch.equal(
        q.untransformed_scale.detach(), torch.full((3,), -9.0)
    )
    exact = pl.VariableLayer(1, dtype=torch.float64, initializer=lambda t: 0.1)
    assert exact.variable.item() == 0.1  # a number goes in at the parameter's precision
    view = pl.VariableLayer((4, 2, 3), initializer=lambda t: nn.init.orthogonal_(t.view(4, -1)))
    rows = view.variable.detach().view(4, -1)  # filled in place, a view of it returned: kept
    torch.testing.assert_close(rows @ rows.T, torch.eye(4))
    nothing = pl.VariableLayer(3, initializer=lambda t: None)  # neither fills nor returns: zeros, not garbage
    assert torch.equal(nothing.variable.detach(), torch.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"initializer: a value of shape \(2,\) does not broadcast to shape \(3,\)",
    ):
        pl.VariableLayer(3, initializer=lambda t: torch.zeros(2))
    with pytest.raises(TypeError, match="loc_initializer: returned str"):
        pl.default_mean_field_normal_fn(loc_initializer=lambda t: "zeros")((3,), None)


def test_tfp_positional_arguments_are_refused_not_misread():
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    with pytest.raises(TypeError):
        pl.KLDivergenceAddLoss(prior, True)  # TFP's second argument is use_exact_kl, not weight
    with pytest.raises(TypeError):
        pl.KLDivergenceRegularizer(prior, 1.0)
    with pytest.raises(TypeError):
        pl.VariableLayer(3, torch.float32, torch.nn.functional.softplus)  # TFP's third is activation


def test_tfp_method_names_and_attributes_say_what_torch_calls_them():
    out = pl.IndependentNormal(2)(torch.zeros(4, 4))
    with pytest.raises(
        AttributeError, match=r"'quantile': TFP's Distribution.quantile is icdf\(p\) in torch"
    ):
        out.quantile(0.975)  # would have been the quantile of one random draw
    with pytest.raises(AttributeError, match=r"'prob': TFP's Distribution.prob is log_prob\(x\).exp\(\)"):
        out.prob(torch.zeros(4, 2))
    with pytest.raises(
        AttributeError, match="has no attribute 'logits': neither the Independent nor its tensor value has it"
    ):
        _ = out.logits
    assert out.flatten().shape == (8,)  # the tensor value's own methods still work


def test_a_convert_fn_asking_for_a_missing_attribute_is_named():
    layer = pl.IndependentBernoulli((3,), convert_to_tensor_fn=lambda d: d.rate)
    out = layer(torch.zeros(2, 3))
    with pytest.raises(
        AttributeError, match=r"has no attribute 'rate' \(its convert_to_tensor_fn asked for it\)"
    ):
        out + 1.0  # was a RecursionError


def test_independent_bernoulli_has_its_logits_and_probs_as_in_tfp():
    """TFP's VAE example: IndependentBernoulli(shape, tfd.Bernoulli.logits)."""
    params = torch.randn(2, 3)
    out = pl.IndependentBernoulli((3,), convert_to_tensor_fn=lambda d: d.logits)(params)
    assert torch.equal(out + 0.0, params)  # was a RecursionError
    torch.testing.assert_close(out.probs, torch.sigmoid(params))
    plain = pl.IndependentBernoulli((3,))(params)
    assert torch.equal(plain.logits, params) and set((plain + 0.0).unique().tolist()) <= {0.0, 1.0}


def test_an_int_sample_shape_is_taken_as_tfp_takes_it():
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    reg = pl.KLDivergenceRegularizer(prior, test_points_fn=lambda q: q.sample(10), test_points_reduce_axis=0)
    q = pl.IndependentNormal(2)(torch.zeros(4, 4))
    assert q.sample(10).shape == (10, 4, 2) and q.rsample(3).shape == (3, 4, 2)
    assert q.sample(np.int64(2)).shape == (2, 4, 2) and q.sample(torch.tensor(2)).shape == (2, 4, 2)
    assert reg(q).shape == ()


def test_keras_activation_names():
    x = torch.randn(4, 3)
    flipout = pl.DenseFlipout(3, 2, activation="relu")
    assert flipout.activation is torch.relu and (flipout(x) >= 0).all()
    assert pl.DenseVariational(3, 2, activation="tanh").activation is torch.tanh
    made = pl.AutoregressiveNetwork(2, 3, hidden_units=(4,), activation="elu")
    assert made.activation is torch.nn.functional.elu
    assert pl.AutoregressiveNetwork(2, 3, activation="linear").activation is None
    torch.testing.assert_close(pl.VariableLayer(2, activation="softplus")(), torch.full((2,), math.log(2.0)))
    with pytest.raises(ValueError, match=r"activation: expected a callable, None or one of \['elu'"):
        pl.AutoregressiveNetwork(2, 3, activation="leaky_relu")  # Keras' slope is not torch's
