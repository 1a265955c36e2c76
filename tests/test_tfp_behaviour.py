"""The behavioural assertions of TFP's own layer tests, translated to problayers (issue 16).

Each test's docstring names the TFP test it corresponds to: a file under
tensorflow_probability/python/layers/ of tensorflow/probability, and a test of it. Keras
mechanics become their torch counterparts: ``compile``/``fit`` a few Adam steps, an h5 file a
``state_dict`` round trip into a freshly built model, ``model.losses`` :func:`pl.collect_losses`,
NHWC images NCHW, ``tf.convert_to_tensor`` :func:`pl.convert_to_tensor`. Graph mode and
placeholders (TFP's static/dynamic-shape variants) have no counterpart; their dtypes are kept.
Monte Carlo comparisons are seeded; each states its tolerance in standard errors (SE).

Deliberate differences are skipped with the reason; see the skip markers.
"""

from __future__ import annotations

import functools
import gc
import io
import itertools
import math
import operator

import numpy as np
import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl

DIAG_SHIFT = 1e-5  # TFP's FillScaleTriL default, which MultivariateNormalTriL adds to the diagonal


# -- helpers --------------------------------------------------------------------------------------


def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def tfp_fill_triangular_inverse(tril: torch.Tensor) -> torch.Tensor:
    """``(..., d, d)`` lower-triangular -> ``(..., d(d+1)/2)``, the inverse of TFP's
    ``fill_triangular`` (written from its definition, not from problayers): the last row
    reversed comes first, then the rows above it added to their 180-degree rotation."""
    d = tril.shape[-1]
    head = tril[..., -1, :].flip(-1)  # (..., d)
    above = tril[..., :-1, :]  # (..., d - 1, d)
    folded = (above + above.flip(-1).flip(-2)).flatten(-2)  # (..., (d - 1) d)
    return torch.cat([head, folded[..., : d * (d + 1) // 2 - d]], dim=-1)


def mvn_tril_params(dist: D.MultivariateNormal) -> torch.Tensor:
    """A ``MultivariateNormal``'s parameters as ``MultivariateNormalTriL`` takes them (TFP's
    ``concat([loc, FillScaleTriL().inverse(scale)])``)."""
    tril = dist.scale_tril
    diag = tril.diagonal(dim1=-2, dim2=-1)
    raw = tril - torch.diag_embed(diag) + torch.diag_embed(softplus_inverse(diag - DIAG_SHIFT))
    return torch.cat([dist.loc, tfp_fill_triangular_inverse(raw)], dim=-1)


def uniform(shape, low=-3.0, high=3.0, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype).uniform_(low, high)


class Lambda(nn.Module):
    """Keras' ``Lambda`` layer."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def nll_minibatches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """``loss()`` giving the mean NLL of the next (shuffled) batch each call: Keras' epochs."""
    batches = itertools.cycle(torch.randperm(len(x)).split(batch_size))

    def loss() -> torch.Tensor:
        i = next(batches)
        return -model(x[i]).log_prob(y[i]).mean()

    return loss


def adam_steps(model: nn.Module, loss_fn, steps: int, lr: float = 1e-3) -> list[float]:
    """``steps`` Adam steps on ``loss_fn()`` (Keras' ``fit``); the losses seen."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def state_dict_copy(model: nn.Module, build) -> nn.Module:
    """``build()`` loaded with ``model``'s state_dict through bytes (Keras' save/load_model)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    copy = build()
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    return copy


def logit_avg_expit(t: torch.Tensor) -> torch.Tensor:
    """``logit(mean(sigmoid(t), 0))``, stably: averages Bernoullis over a leading sample axis."""
    log_avg = torch.logsumexp(-nn.functional.softplus(-t), dim=0) - math.log(t.shape[0])
    return log_avg - torch.log1p(-torch.exp(log_avg))


def vec_pad(x: torch.Tensor) -> torch.Tensor:
    """Prepend a column of zeros (a reference logit) to the last axis."""
    return nn.functional.pad(x, (1, 0))


def test_fill_triangular_inverse_helper_matches_tfp_documented_example():
    """distribution_layer_test.py MultivariateNormalTriLTest (the helper its round trips use)."""
    # TFP's docs: fill_triangular([1, 2, 3, 4, 5, 6]) = [[4, 0, 0], [6, 5, 0], [3, 2, 1]].
    tril = torch.tensor([[4.0, 0, 0], [6, 5, 0], [3, 2, 1]])
    assert tfp_fill_triangular_inverse(tril).tolist() == [1, 2, 3, 4, 5, 6]


# -- distribution_layer_test.py: EndToEndTest -------------------------------------------------------

IMAGE = (1, 2, 2)  # TFP's NHWC [2, 2, 1], NCHW
ENCODED = 2


def binary_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *IMAGE, generator=g) > 0.75).float()  # (n, 1, 2, 2)


def bernoulli_logits(d: D.Distribution) -> torch.Tensor:
    return d.base_dist.logits  # TFP's convert_to_tensor_fn=Bernoulli.logits


def vae_step_and_check(vae: nn.Module, x: torch.Tensor, steps: int = 5, lr: float = 1e-2) -> None:
    """A few ELBO steps (finite losses), then the output is Independent(Bernoulli)."""
    losses = adam_steps(
        vae, lambda: -vae(x).log_prob(x).mean() + pl.collect_losses(vae, clear=True), steps, lr
    )
    assert all(math.isfinite(v) for v in losses)
    x_test = binary_images(100, seed=1)
    yhat = vae(x_test)
    assert isinstance(yhat, D.Independent) and isinstance(yhat.base_dist, D.Bernoulli)
    assert yhat.batch_shape == (100,) and yhat.event_shape == IMAGE
    accuracy = (x_test == yhat.mode).float().mean(dim=(-3, -2, -1))  # TFP's metric, per example
    assert accuracy.shape == (100,) and ((accuracy >= 0) & (accuracy <= 1)).all()


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


@pytest.mark.skip(
    reason="deliberate difference: a parameter captured by a closure (make_distribution_fn, or a "
    "Distribution prior's tensor) is not tracked by nn.Module; assign it as a module attribute or "
    "use an nn.Module prior (see test_distribution_lambda_tracks_modules_assigned_to_it)"
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


@pytest.mark.skip(
    reason="deliberate difference: problayers' KL regularizer records the batch mean of the KL "
    "(matching its batch-mean data term); TFP's records the batch total (reduce_sum)"
)
def test_kl_add_loss_is_the_batch_total():
    """distribution_layer_test.py KLDivergenceAddLossTest (TFP's reduction, at batch size > 1)"""
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    q = D.Independent(D.Normal(torch.ones(4, 2), 1.0), 1)
    assert pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q) == 4 * 1.0


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
# TFP runs each with float32 and float64 (its static-/dynamic-shape variants).
DTYPES = [torch.float32, torch.float64]


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


# -- internal/distribution_tensor_coercible_test.py ---------------------------------------------------


def mean_coercible(loc) -> D.Distribution:
    return pl.as_coercible(D.Normal(torch.as_tensor(loc), 1.0), "mean")


def test_plain_distribution_is_not_a_tensor():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testErrorsByDefault"""
    x = D.Normal(0.0, 1.0)
    assert not pl.is_coercible(x)
    with pytest.raises(TypeError):
        torch.add(x, 1.0)


def test_convert_to_tensor_gives_the_cached_value():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testConvertToTensor"""
    x = mean_coercible(1.5)
    y = pl.convert_to_tensor(x)
    assert y is x.tensor() and y is pl.convert_to_tensor(x)
    assert y.item() == 1.5


def test_convert_to_tensor_from_an_explicit_function():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testConvertFromExplicit"""  # noqa: E501
    x = pl.as_coercible(D.Normal(torch.tensor(1.25), 1.0), lambda d: 42.0)
    y = pl.convert_to_tensor(x)
    assert isinstance(y, torch.Tensor) and y is x.tensor()
    assert y.item() == 42.0


def test_coercible_parameter_of_another_distribution_is_drawn_once():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testReproducible"""
    torch.manual_seed(0)
    u = pl.as_coercible(D.Uniform(torch.tensor(-100.0), torch.tensor(100.0)), "sample")
    x = D.Normal(loc=u, scale=0.0001)  # tiny scale: samples are the (one) value of u
    u_value = pl.convert_to_tensor(u)
    assert abs(x.sample() - u_value) < 0.01
    assert abs(x.sample() - u_value) < 0.01


def test_numpy_array_on_the_left():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testArrayPriority"""
    x = mean_coercible(1.5)
    y = np.array(3.0, dtype=np.float32)
    assert float(y / x) == 2.0


BINARY_OPS = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.truediv,
    operator.pow,
    operator.mod,
    operator.gt,
    operator.ge,
    operator.lt,
    operator.le,
]


@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda op: op.__name__)
def test_binary_operators_act_on_the_value(op):
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorBinary"""
    loc = torch.tensor([-0.25, 0.5])
    x = mean_coercible(loc)
    assert torch.equal(op(1.0, x), op(1.0, loc))  # the reflected operator
    assert torch.equal(op(x, 2.0), op(loc, 2.0))


@pytest.mark.parametrize("op", [operator.abs, operator.neg], ids=lambda op: op.__name__)
def test_unary_operators_act_on_the_value(op):
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorUnary"""
    loc = torch.tensor([-0.25, 0.5])
    assert torch.equal(op(mean_coercible(loc)), op(loc))


def bool_coercible() -> D.Distribution:
    # TFP's FakeBoolDistribution: a distribution whose tensor value is [True, False].
    return pl.as_coercible(D.Bernoulli(probs=torch.tensor([1.0, 0.0])), lambda d: d.mean.bool())


@pytest.mark.parametrize("op", [operator.and_, operator.or_, operator.xor], ids=lambda op: op.__name__)
def test_binary_logical_operators_act_on_the_value(op):
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorBinaryLogical"""  # noqa: E501
    loc = torch.tensor([True, False])
    x = bool_coercible()
    assert torch.equal(op(True, x), op(True, loc))
    assert torch.equal(op(x, False), op(loc, False))


def test_unary_logical_operator_acts_on_the_value():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorUnaryLogical"""  # noqa: E501
    assert torch.equal(~bool_coercible(), ~torch.tensor([True, False]))


@pytest.mark.skip(
    reason="deliberate difference (docs/design.md): bool() is not redirected to the tensor value, "
    "so `not x` is an object's truth value (False) rather than an error"
)
def test_truth_value_is_an_error():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorBoolNonzero"""  # noqa: E501
    x = mean_coercible(torch.tensor([-0.25, 0.5]))
    with pytest.raises((TypeError, RuntimeError)):
        _ = not x


def test_indexing_acts_on_the_value():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorGetitem"""
    loc = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
    assert torch.equal(mean_coercible(loc)[:2, 1:], loc[:2, 1:])


def test_iteration_yields_the_values_elements():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testOperatorIter"""
    loc = torch.tensor([-0.25, 0.5])
    assert [v.item() for v in mean_coercible(loc)] == loc.tolist()


def test_operators_of_a_distribution_subclass_give_way_to_value_semantics():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testUserCustomOperators"""  # noqa: E501

    class SummableNormal(D.Normal):
        """A Normal whose `+` adds two independent random variables."""

        def __add__(self, other):
            if isinstance(other, D.Normal) and not pl.is_coercible(other) and not pl.is_coercible(self):
                return SummableNormal(self.loc + other.loc, (self.scale**2 + other.scale**2).sqrt())
            return NotImplemented

    x = SummableNormal(torch.tensor(0.0), torch.tensor(1.0))
    y = x + SummableNormal(torch.tensor(1.0), torch.tensor(1.0))
    assert isinstance(y, SummableNormal)
    x_coerced = pl.as_coercible(x, "variance")
    var_plus_2 = x_coerced + torch.tensor(2.0)  # the value's arithmetic: variance 1, plus 2
    y_coerced = pl.as_coercible(y, "variance")
    assert isinstance(y_coerced, SummableNormal)
    var = pl.convert_to_tensor(y_coerced)  # the summed variables' variance, 2
    total = x_coerced + y_coerced
    assert isinstance(total, torch.Tensor) and not isinstance(total, D.Distribution)
    torch.testing.assert_close(torch.stack([var_plus_2, var]), torch.tensor([3.0, 2.0]), atol=0, rtol=1e-3)


def test_coercibles_in_a_python_loop_keep_lexical_values():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testWhileLoop/testWhileLoopWithControlFlowV2 (eager)"""  # noqa: E501
    mean, stddev, num_iter = 0.5, 2.0, 4
    x = pl.as_coercible(D.Normal(torch.tensor(mean), 0.75), "mean")
    total = torch.tensor(mean)
    for _ in range(num_iter):
        y = pl.as_coercible(D.Normal(torch.tensor(0.0), stddev), "stddev")
        total = total + y + x
    torch.testing.assert_close(x + torch.tensor(3.0), torch.tensor(mean + 3.0))
    torch.testing.assert_close(total, torch.tensor(mean + num_iter * (mean + stddev)))


def test_distribution_attributes_pass_through():
    """internal/distribution_tensor_coercible_test.py DistributionTensorConversionTest.testPropagatedAttributes"""  # noqa: E501
    d = D.Normal(torch.tensor([0.0, -1.0]), 1.0)
    tc = pl.as_coercible(d)
    s = tc.sample()
    assert torch.equal(d.log_prob(s), tc.log_prob(s))
    assert torch.equal(d.loc, tc.loc)
    assert d.batch_shape == tc.batch_shape


def test_repeated_layer_calls_create_no_new_objects():
    """internal/distribution_tensor_coercible_test.py MemoryLeakTest.testTypeObjectLeakage"""
    layer = pl.DistributionLambda(lambda t: D.Categorical(logits=t))
    x = torch.tensor([-0.23, 1.23, 1.42])
    dist = layer(x)
    dist = layer(x)
    first_type = type(dist)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(100):
        dist = layer(x)
    gc.collect()
    after = len(gc.get_objects())
    assert type(dist) is first_type  # one coercible class per distribution class
    assert after - before < 1


# -- dense_variational_v2_test.py ---------------------------------------------------------------------


def test_dense_variational_learns_a_regression():
    """dense_variational_v2_test.py DenseVariationalLayerTest.test_end_to_end"""
    torch.manual_seed(43)
    n, x_range = 150, (-20.0, 60.0)
    x = uniform((n, 1), *x_range)
    g = (x - x_range[0]) / (x_range[1] - x_range[0])
    y = 0.125 * x * (1 + torch.sin(x)) + 5.0 + torch.randn(n, 1) * 3 * (0.25 + g**2)
    layer = pl.DenseVariational(1, 1, pl.posterior_mean_field, pl.prior_trainable, kl_weight=1 / n)
    model = nn.Sequential(layer, pl.DistributionLambda(lambda t: D.Normal(loc=t, scale=1.0)))

    def loss():
        return -model(x).log_prob(y).mean() + pl.collect_losses(model, clear=True)

    adam_steps(model, loss, steps=500, lr=0.05)
    assert len(model) == 2
    names = [name for name, _ in layer.named_parameters()]
    assert any(name.startswith("posterior.") for name in names)
    assert any(name.startswith("prior.") for name in names)
    assert all(name.startswith(("posterior.", "prior.")) for name in names)
    assert list(model[1].parameters()) == []
    assert layer(x).shape == (n, 1)
    x_tst = torch.linspace(*x_range, 50)[:, None]
    yhat = model(x_tst)
    assert isinstance(yhat, D.Distribution)
    # It learns the regression: the posterior mean's line is the least-squares line.
    design = torch.cat([x, torch.ones(n, 1)], dim=1)
    ols = torch.linalg.lstsq(design, y).solution.squeeze(-1)  # (slope, intercept)
    posterior = layer.posterior()
    # Tolerance: 2 posterior standard deviations (the data dominate the learnt prior).
    assert ((posterior.mean - ols).abs() < 2 * posterior.stddev).all(), (posterior.mean, ols)


# -- masked_autoregressive_test.py --------------------------------------------------------------------


def standard_normal_like(t: torch.Tensor) -> D.Distribution:
    """A standard normal over R^2 with the batch of ``t``'s leading axes (TFP's model input has
    width 0: only its batch shape matters)."""
    return D.Independent(D.Normal(torch.zeros(*t.shape[:-1], 2), 1.0), 1)


def banana(n: int) -> torch.Tensor:
    x2 = torch.randn(n) * 2.0
    x1 = torch.randn(n) + x2 * x2 / 4.0
    return torch.stack([x1, x2], dim=-1)  # (n, 2)


def test_autoregressive_transform_density_estimation():
    """masked_autoregressive_test.py AutoregressiveTransformTest.test_doc_string"""
    torch.manual_seed(0)
    n = 2000
    data = banana(n)
    model = nn.Sequential(
        pl.DistributionLambda(standard_normal_like),
        pl.AutoregressiveTransform(pl.AutoregressiveNetwork(params=2, event_shape=2, hidden_units=[10])),
    )
    losses = adam_steps(model, lambda: -model(torch.zeros(25, 0)).log_prob(data[:25]).mean(), steps=1)
    assert math.isfinite(losses[0])
    distribution = model(torch.zeros(0))
    assert distribution.sample((4,)).shape == (4, 2)
    assert distribution.log_prob(torch.zeros(5, 3, 2)).shape == (5, 3)


def test_autoregressive_transform_log_prob_is_the_change_of_variables():
    """masked_autoregressive_test.py AutoregressiveTransformTest.test_doc_string (its density)"""
    torch.manual_seed(0)
    made = pl.AutoregressiveNetwork(params=2, event_shape=2, hidden_units=[10])
    flow = pl.AutoregressiveTransform(made)(standard_normal_like(torch.zeros(0)))
    maf = pl.MaskedAutoregressiveTransform(made)
    base = standard_normal_like(torch.zeros(0))
    y = banana(6)
    for y_i in y:
        u = maf.inv(y_i)
        jac = torch.autograd.functional.jacobian(maf.inv, y_i)  # d u / d y, (2, 2)
        expected = base.log_prob(u) + torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(flow.log_prob(y_i), expected, atol=1e-5, rtol=1e-5)
    s = flow.sample((6,))  # the forward pass (d sequential network passes) inverts the inverse
    torch.testing.assert_close(maf(maf.inv(s)), s, atol=1e-5, rtol=1e-5)


def test_autoregressive_transform_density_integrates_to_one():
    """masked_autoregressive_test.py AutoregressiveTransformTest.test_doc_string (a normalized density)"""
    torch.manual_seed(0)
    made = pl.AutoregressiveNetwork(params=2, event_shape=2, hidden_units=[10])
    flow = pl.AutoregressiveTransform(made)(standard_normal_like(torch.zeros(0)))
    # Midpoint rule on [-L, L]^2; the tolerance covers the quadrature error and the tails.
    half, m = 12.0, 600
    h = 2 * half / m
    grid = torch.linspace(-half + h / 2, half - h / 2, m, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid).float()  # (m * m, 2)
    with torch.no_grad():
        mass = flow.log_prob(points).double().exp().sum() * h * h
    assert abs(mass.item() - 1.0) < 1e-2, mass.item()


# -- variable_input_test.py ---------------------------------------------------------------------------


def test_variable_layer_feeds_a_dense_layer_and_a_distribution():
    """variable_input_test.py VariableInputLayerTest.test_sequential_api"""
    torch.manual_seed(0)
    dtype = torch.float64
    model = nn.Sequential(
        pl.VariableLayer((2, 3, 4), dtype=dtype),
        nn.Linear(4, 5, bias=False, dtype=dtype),  # changes the event shape
        pl.DistributionLambda(
            lambda t: D.Independent(D.Normal(loc=t[0], scale=t[1], validate_args=False), 1)
        ),
    )
    model[0].requires_grad_(False)  # TFP's trainable=False
    dist = model(torch.zeros(()))
    assert len(list(model.parameters())) == 2
    variable, kernel = model.parameters()
    assert variable.dtype == dtype and variable.shape == (2, 3, 4) and not variable.requires_grad
    assert kernel.dtype == dtype and kernel.shape == (5, 4) and kernel.requires_grad  # TFP's (4, 5)
    assert isinstance(dist, D.Independent) and pl.is_coercible(dist)
    assert dist.dtype == dtype
    assert dist.batch_shape == (3,) and dist.event_shape == (5,)


def test_variable_layer_returns_its_variable_whatever_the_input():
    """variable_input_test.py VariableInputLayerTest.test_functional_api"""
    layer = pl.VariableLayer((2, 3, 4), dtype=torch.float64, initializer="normal")
    for inputs in [(torch.zeros(()),), (torch.zeros(8, 5),), (None,), ()]:
        assert layer(*inputs) is layer.variable
    assert layer(torch.zeros(8, 5)).shape == (2, 3, 4)
