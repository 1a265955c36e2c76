"""TFP's distribution_layer_test.py, translated: the end-to-end VAEs, serialization, variable
creation and KLDivergenceAddLoss (issue 16).

See tests/tfp_cases.py for how TFP's Keras mechanics are translated.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from tfp_cases import (
    Lambda,
    adam_steps,
    logit_avg_expit,
    mvn_tril_params,
    state_dict_copy,
    uniform,
)

# -- distribution_layer_test.py: EndToEndTest -------------------------------------------------------

IMAGE = (1, 2, 2)  # TFP's NHWC [2, 2, 1], NCHW
ENCODED = 2


def binary_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *IMAGE, generator=g) > 0.75).float()  # (n, 1, 2, 2)


def bernoulli_logits(d: D.Distribution) -> torch.Tensor:
    return d.base_dist.logits  # TFP's convert_to_tensor_fn=Bernoulli.logits


def vae_step_and_check(vae: nn.Module, x: torch.Tensor, steps: int = 5, lr: float = 1e-2) -> None:
    """A few ELBO steps (finite, and the last below the first), then the output is
    Independent(Bernoulli)."""
    losses = adam_steps(
        vae, lambda: -vae(x).log_prob(x).mean() + pl.collect_losses(vae, clear=True), steps, lr
    )
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    x_test = binary_images(100, seed=1)
    yhat = vae(x_test)
    assert isinstance(yhat, D.Independent) and isinstance(yhat.base_dist, D.Bernoulli)
    assert yhat.batch_shape == (100,) and yhat.event_shape == IMAGE
    accuracy = (x_test == yhat.mode).float().mean(dim=(-3, -2, -1))  # TFP's metric, per example
    assert accuracy.shape == (100,)


def test_vae_sequential_trainable_prior_model_and_trainable_kl_weight():
    """distribution_layer_test.py EndToEndTest.test_keras_sequential_api"""
    torch.manual_seed(0)
    prior_model = nn.Sequential(
        pl.VariableLayer(ENCODED),
        pl.DistributionLambda(lambda t: D.Independent(D.Normal(t, 1.0), 1)),
    )
    beta = nn.Parameter(torch.tensor(0.9))  # "beta" as in beta-VAE, trainable
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4, pl.MultivariateNormalTriL.params_size(ENCODED)),
        pl.MultivariateNormalTriL(
            ENCODED, activity_regularizer=pl.KLDivergenceRegularizer(prior_model, weight=beta)
        ),
    )
    decoder = nn.Sequential(
        nn.Linear(ENCODED, pl.IndependentBernoulli.params_size(IMAGE)),
        pl.IndependentBernoulli(IMAGE, convert_to_tensor_fn=bernoulli_logits),
    )
    vae = nn.Sequential(encoder, decoder)
    # Two dense layers (2 + 2), the prior's variable, beta: as TFP's 4 + 1 + 1.
    params = list(vae.parameters())
    assert len(params) == 4 + 1 + 1
    assert any(p is beta for p in params) and any(p is prior_model[0].variable for p in params)
    x = binary_images(200, seed=0)
    loss = -vae(x).log_prob(x).mean() + pl.collect_losses(vae, clear=True)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)  # beta and prior too
    vae_step_and_check(vae, x)


class LearnedNormalPrior(nn.Module):
    """``Independent(Normal(loc, exp(log_scale)), 1)`` with both trainable (TFP's Variable loc
    and TransformedVariable scale)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(size))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self) -> D.Distribution:
        return D.Independent(D.Normal(self.loc, self.log_scale.exp()), 1)


def test_vae_layer_by_layer_with_kl_add_loss_and_fixed_weight():
    """distribution_layer_test.py EndToEndTest.test_keras_functional_api"""
    torch.manual_seed(0)
    beta = torch.tensor(0.9)  # not trainable: not a parameter
    encoder = [
        nn.Flatten(),
        nn.Linear(4, 10),  # 2 parameters
        nn.ReLU(),
        nn.Linear(10, pl.MultivariateNormalTriL.params_size(ENCODED)),  # 2
        pl.MultivariateNormalTriL(ENCODED),
        pl.KLDivergenceAddLoss(LearnedNormalPrior(ENCODED), weight=beta),  # 1 + 1
    ]
    decoder = [
        nn.Linear(ENCODED, 10),  # 2
        nn.ReLU(),
        nn.Linear(10, pl.IndependentBernoulli.params_size(IMAGE)),  # 2
        pl.IndependentBernoulli(IMAGE, convert_to_tensor_fn=bernoulli_logits),
    ]
    vae = nn.Sequential(*encoder, *decoder)
    assert len(list(vae.parameters())) == (2 + 2) + (2 + 2) + (1 + 1) + 0
    vae_step_and_check(vae, binary_images(200, seed=0))


def test_vae_of_subclassed_modules_collects_the_nested_kl():
    """distribution_layer_test.py EndToEndTest.test_keras_model_api"""

    class Chain(nn.Module):
        def __init__(self, *layers: nn.Module) -> None:
            super().__init__()
            self.sub_layers = nn.ModuleList(layers)

        def forward(self, x):
            return functools.reduce(lambda h, f: f(h), self.sub_layers, x)

    torch.manual_seed(0)
    prior = D.Independent(D.Normal(torch.zeros(ENCODED), 1.0), 1)
    encoder = Chain(
        nn.Flatten(),
        nn.Linear(4, 10),
        nn.ReLU(),
        nn.Linear(10, pl.MultivariateNormalTriL.params_size(ENCODED)),
        pl.MultivariateNormalTriL(ENCODED),
        pl.KLDivergenceAddLoss(prior, weight=0.9),
    )
    decoder = Chain(
        nn.Linear(ENCODED, 10),
        nn.ReLU(),
        nn.Linear(10, pl.IndependentBernoulli.params_size(IMAGE)),
        pl.IndependentBernoulli(IMAGE, convert_to_tensor_fn=bernoulli_logits),
    )
    vae = nn.Sequential(encoder, decoder)
    x = binary_images(200, seed=0)
    q = encoder(x)
    decoder(q)
    z = pl.convert_to_tensor(q)  # the sample the decoder consumed: the KL's test points
    expected = 0.9 * (q.log_prob(z) - prior.log_prob(z)).mean()
    torch.testing.assert_close(pl.collect_losses(vae), expected)
    vae_step_and_check(vae, x)


def test_vae_with_several_draws_per_example():
    """distribution_layer_test.py EndToEndTest.test_keras_sequential_api_multiple_draws"""
    torch.manual_seed(0)
    num_draws = 2

    class PriorWithLearnedLoc(nn.Module):  # TFP's MultivariateNormalDiag(loc=tf.Variable(...))
        def __init__(self) -> None:
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(ENCODED))

        def forward(self) -> D.Distribution:
            return D.MultivariateNormal(self.loc, scale_tril=torch.eye(ENCODED))

    kl = pl.KLDivergenceAddLoss(PriorWithLearnedLoc(), weight=0.9)
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4, 10),
        nn.ReLU(),
        nn.Linear(10, pl.MultivariateNormalTriL.params_size(ENCODED)),
        pl.MultivariateNormalTriL(ENCODED, convert_to_tensor_fn=lambda s: s.rsample((num_draws,))),
        kl,
    )
    decoder = nn.Sequential(
        nn.Linear(ENCODED, 10),
        nn.ReLU(),
        nn.Linear(10, pl.IndependentBernoulli.params_size(IMAGE)),
        Lambda(logit_avg_expit),  # the same as averaging the draws' Bernoullis
        pl.IndependentBernoulli(IMAGE, convert_to_tensor_fn=bernoulli_logits),
    )
    vae = nn.Sequential(encoder, decoder)
    assert len(list(encoder.parameters())) == (2 + 2) + 1
    assert len(list(decoder.parameters())) == 2 + 2
    assert len(list(vae.parameters())) == (2 + 2) + (2 + 2) + 1
    x = binary_images(50, seed=0)
    q = encoder(x)
    z = pl.convert_to_tensor(q)
    assert z.shape == (num_draws, 50, ENCODED)
    out = decoder(q)
    assert out.batch_shape == (50,) and out.event_shape == IMAGE
    prior = kl.regularizer.prior()
    torch.testing.assert_close(pl.collect_losses(vae), 0.9 * (q.log_prob(z) - prior.log_prob(z)).mean())
    vae_step_and_check(vae, x)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="deliberate difference: a parameter captured by a closure (make_distribution_fn, or a "
    "Distribution prior's tensor) is not tracked by nn.Module; assign it as a module attribute or "
    "use an nn.Module prior (see test_distribution_lambda_tracks_modules_assigned_to_it)",
)
def test_side_variable_is_auto_tracked():
    """distribution_layer_test.py EndToEndTest.test_side_variable_is_auto_tracked"""
    s = nn.Parameter(torch.tensor(0.5413))  # softplus(s) = 1
    prior = D.Normal(nn.Parameter(torch.tensor(0.0)), 1.0)
    model = nn.Sequential(
        nn.Linear(3, 1),
        pl.DistributionLambda(
            lambda t: D.Normal(t, nn.functional.softplus(s)),
            activity_regularizer=pl.KLDivergenceRegularizer(prior),
        ),
    )
    assert len(list(model.parameters())) == 4


# -- distribution_layer_test.py: DistributionLambdaSerializationTest ---------------------------------


def assert_same_after_round_trip(build, batch_size: int, in_features: int) -> None:
    """A model and its state_dict copy give the same mean and log_prob."""
    torch.manual_seed(0)
    model = build()
    copy = state_dict_copy(model, build)
    x = uniform((batch_size, in_features))
    mean = model(x).mean
    assert torch.equal(mean, copy(x).mean)
    y = torch.rand(mean.shape)
    assert torch.equal(model(x).log_prob(y), copy(x).log_prob(y))


def test_serialization_of_a_distribution_lambda():
    """distribution_layer_test.py DistributionLambdaSerializationTest.test_serialization"""

    def build():
        return nn.Sequential(
            nn.Linear(5, 2),
            pl.DistributionLambda(lambda t: D.Normal(loc=t[..., 0:1], scale=t[..., 1:2].exp())),
        )

    assert_same_after_round_trip(build, batch_size=1, in_features=5)


class _MixtureMaker:
    @staticmethod
    def make_distribution(t):
        return pl.MixtureSameFamily.new(t, 3, pl.IndependentNormal([2]))


def test_serialization_of_a_distribution_lambda_calling_a_static_method():
    """distribution_layer_test.py DistributionLambdaSerializationTest.test_serialization_static_method"""

    def build():
        return nn.Sequential(nn.Linear(5, 15), pl.DistributionLambda(_MixtureMaker.make_distribution))

    assert_same_after_round_trip(build, batch_size=3, in_features=5)


def test_serialization_of_a_closure_over_numpy_and_tensor_sizes():
    """distribution_layer_test.py DistributionLambdaSerializationTest.test_serialization_closure_over_lambdas_tensors_and_numpy_array"""  # noqa: E501
    num_components = np.array(3)
    one = torch.tensor(1)

    def make_independent_normal(event_shape):
        return pl.IndependentNormal(event_shape + one)  # a 0-dim integer tensor event shape

    def make_distribution(t):
        return pl.MixtureSameFamily.new(t, num_components, make_independent_normal(1))

    def build():
        return nn.Sequential(nn.Linear(5, 15), pl.DistributionLambda(make_distribution))

    assert_same_after_round_trip(build, batch_size=4, in_features=5)


# -- distribution_layer_test.py: DistributionLambdaVariableCreation -----------------------------------


def test_distribution_lambda_tracks_modules_assigned_to_it():
    """distribution_layer_test.py DistributionLambdaVariableCreation.test_variable_creation"""
    torch.manual_seed(0)
    # NCHW; TFP pads (0, 0), (1, 1) after the 1x3 conv and (1, 0), (0, 0) after the 2x1 conv.
    loc = nn.Sequential(nn.Conv2d(1, 1, (1, 3)), nn.ZeroPad2d((1, 1, 0, 0)))
    scale = nn.Sequential(nn.Conv2d(1, 1, (2, 1)), nn.ZeroPad2d((0, 0, 1, 0)))
    norm = pl.DistributionLambda(lambda x: D.Normal(loc=loc(x), scale=torch.exp(scale(x))))
    norm.loc_net = loc
    norm.scale_net = scale
    assert len(list(norm.parameters())) == 4  # the two convolutions' weights and biases
    x_train = torch.rand(1000, 1, 3, 3)
    assert norm(x_train).batch_shape == (1000, 1, 3, 3)
    before = [p.detach().clone() for p in norm.parameters()]
    losses = adam_steps(norm, lambda: -norm(x_train).log_prob(x_train).mean(), steps=50, lr=1e-2)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, norm.parameters(), strict=True))


# -- distribution_layer_test.py: KLDivergenceAddLossTest -----------------------------------------------

KL_LOC = [-1.0, 1.0]
KL_SCALE_TRIL = [[1.1, 0.0], [0.2, 1.3]]


def kl_test_setup():
    prior = D.MultivariateNormal(torch.zeros(2), scale_tril=torch.eye(2))  # MultivariateNormalDiag
    target = D.MultivariateNormal(torch.tensor(KL_LOC), scale_tril=torch.tensor(KL_SCALE_TRIL))
    x = mvn_tril_params(target)[None]  # (1, 5): the layer's input that means `target`
    return prior, target, x


def test_kl_add_loss_monte_carlo_estimate_matches_the_exact_kl():
    """distribution_layer_test.py KLDivergenceAddLossTest.test_approx_kl"""
    torch.manual_seed(42)
    prior, target, x = kl_test_setup()
    n = 20_000
    model = nn.Sequential(
        pl.MultivariateNormalTriL(2, convert_to_tensor_fn=lambda s: s.rsample((n,))),
        pl.KLDivergenceAddLoss(prior, test_points_reduce_axis=0),
    )
    model(x)
    y = model(x)  # a second call replaces the first call's term: one loss, not two
    torch.testing.assert_close(y.loc, torch.tensor([KL_LOC]), atol=0.0, rtol=1e-5)
    torch.testing.assert_close(y.scale_tril, torch.tensor([KL_SCALE_TRIL]), atol=0.0, rtol=1e-5)
    z = pl.convert_to_tensor(y)  # (n, 1, 2): this call's draws
    log_ratio = y.log_prob(z) - prior.log_prob(z)  # (n, 1)
    approx = pl.collect_losses(model)
    torch.testing.assert_close(approx, log_ratio.mean())
    exact = D.kl_divergence(target, prior)
    # Tolerance: 5 standard errors of the MC mean with n = 20000 draws (TFP: 0.15 with 1000).
    se = log_ratio.std() / math.sqrt(n)
    assert abs(approx - exact) < 5 * se, (approx.item(), exact.item(), se.item())


def test_kl_add_loss_exact_kl():
    """distribution_layer_test.py KLDivergenceAddLossTest.test_use_exact_kl"""
    torch.manual_seed(42)
    prior, target, x = kl_test_setup()
    model = nn.Sequential(
        # Few draws: the value must be the exact KL, not one estimated from them.
        pl.MultivariateNormalTriL(2, convert_to_tensor_fn=lambda s: s.rsample((3,))),
        pl.KLDivergenceAddLoss(prior, use_exact_kl=True),
    )
    model(x)
    y = model(x)
    torch.testing.assert_close(y.loc, torch.tensor([KL_LOC]), atol=0.0, rtol=1e-5)
    torch.testing.assert_close(y.scale_tril, torch.tensor([KL_SCALE_TRIL]), atol=0.0, rtol=1e-5)
    exact = D.kl_divergence(target, prior)
    assert abs(pl.collect_losses(model) - exact) < 1e-5  # one term after two calls


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="deliberate difference: problayers' KL regularizer records the batch mean of the KL "
    "(matching its batch-mean data term); TFP's records the batch total (reduce_sum)",
)
def test_kl_add_loss_is_the_batch_total():
    """distribution_layer_test.py KLDivergenceAddLossTest (TFP's reduction, at batch size > 1)"""
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    q = D.Independent(D.Normal(torch.ones(4, 2), 1.0), 1)
    assert pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q) == 4 * 1.0
