"""The objectives' schedules and their gradients: the KL warm-up (in the IWAE too), free bits
with a warm-up, and the Monte Carlo KL's reparameterized gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

import problayers as pl
from problayers.coercible import convert_to_tensor
from problayers.vae.models import VAE, ModelConfig, build_model
from problayers.vae.objectives import ELBO, IWAE
from test_zoo_maths import _toy_vae


def _warmup_factors(model, x, calls):
    factors = []
    for _ in range(calls):
        loss, m = model(x, loss=True)
        factors.append(float((loss.detach() - m["recon"]) / m["kl"]))
    return factors


@pytest.mark.parametrize("dreg", [False, True], ids=["iwae", "dreg"])
def test_iwae_kl_warmup_weights_the_prior_and_q_terms(dreg):
    # log w_k = log p(x|z_k) + c (log p(z_k) - log q(z_k|x)), c = min(1, step / 4): at step 0
    # the bound is the decoder's term alone, then c rises by 1/4 a training step.
    k = 5
    model = _toy_vae(IWAE(k, dreg=dreg, kl_warmup_steps=4))
    x = torch.randn(6, 3)
    for step in range(6):
        c = min(1.0, step / 4)
        torch.manual_seed(step)
        loss, _ = model(x, loss=True)
        torch.manual_seed(step)
        with torch.no_grad():
            q = model.encoder(x)
            z = q.rsample((k,))  # (K, B, 2)
            log_px = torch.stack([model.decoder(z[i]).log_prob(x) for i in range(k)])  # (K, B)
            log_w = log_px + c * (model.prior().log_prob(z) - q.log_prob(z))
            expected = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
        torch.testing.assert_close(loss.detach(), expected)
    assert int(model.objective.steps) == 6


def test_warmup_counts_only_steps_with_gradients():
    model = _toy_vae(ELBO(kl_warmup_steps=4))
    x = torch.randn(8, 3)
    with torch.no_grad():  # a training-mode pass without gradients (a metric) is not a step
        model(x, loss=True)
    assert int(model.objective.steps) == 0
    model(x, loss=True)
    assert int(model.objective.steps) == 1


def test_one_warmup_step_starts_at_zero():
    assert _warmup_factors(_toy_vae(ELBO(kl_warmup_steps=1)), torch.randn(8, 3), 3) == pytest.approx(
        [0, 1, 1], abs=1e-6
    )


def test_free_bits_floor_is_warmed_up_with_the_kl():
    # The term is warm-up * max(KL, floor): 0 at the first step, then a quarter of the floor.
    model = _toy_vae(ELBO(free_bits=100.0, kl_warmup_steps=4))
    x = torch.randn(8, 3)
    terms = []
    for _ in range(3):
        loss, m = model(x, loss=True)
        terms.append(float(loss.detach() - m["recon"]))
    assert terms == pytest.approx([0.0, 50.0, 100.0], abs=1e-4)  # floor: 100 nats x 2 latents


def test_a_floor_beyond_float32_makes_an_infinite_loss_not_an_error():
    """beta * free_bits * D above float32's range: the floor is float32's largest number (the
    trainer's non-finite check reports the sums), not torch's conversion error from the clamp."""
    model = _toy_vae(ELBO(beta=1e36, free_bits=1e4))
    loss, _ = model(torch.randn(8, 3), loss=True)
    assert float(loss.detach()) == pytest.approx(torch.finfo(torch.float32).max, rel=1e-6)


def test_seed_free_bits_floor_is_scaled_by_the_regularizers_weight():
    torch.manual_seed(0)
    model = build_model(ModelConfig(beta=0.5, free_bits=100.0))  # beta: the KL regularizer's weight
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    loss, m = model(x, loss=True)
    assert float(loss.detach() - m["recon"]) == pytest.approx(0.5 * 100.0 * 16, rel=1e-6)


def test_monte_carlo_kl_gradient_is_the_reparameterized_one():
    # ELBO(exact_kl=False): -log p(x|z) + log q(z|x) - log p(z) at z = loc + scale * eps, all
    # differentiated through z (the path term) and q's parameters (the score term).
    x = torch.randn(8, 3)
    model = _toy_vae(ELBO(exact_kl=False))
    torch.manual_seed(4)
    loss, _ = model(x, loss=True)
    got = torch.autograd.grad(loss, list(model.encoder.parameters()))
    torch.manual_seed(4)
    q = model.encoder(x)
    z = convert_to_tensor(q)  # the same draw: (B, 2)
    q_plain = q.distribution
    by_hand = (-model.decoder(z).log_prob(x) + q_plain.log_prob(z) - model.prior().log_prob(z)).mean()
    torch.testing.assert_close(by_hand, loss.detach())
    expected = torch.autograd.grad(by_hand, list(model.encoder.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_the_warmup_factor_takes_the_models_dtype_without_float32_rounding():
    # 1/3 of the way through a warm-up: a float64 model's factor is 1/3 in float64 (it was
    # float32's 0.33333334), a bf16 model's keeps its loss bf16 (it became float32).
    model = _toy_vae(ELBO(exact_kl=False, kl_warmup_steps=3)).double()
    model.objective.steps.fill_(1)
    assert model.objective.warmup(torch.zeros((), dtype=torch.float64)).item() == 1 / 3
    bf16 = _toy_vae(ELBO(exact_kl=False, kl_warmup_steps=3)).to(torch.bfloat16)
    loss, _ = bf16(torch.randn(4, 3, dtype=torch.bfloat16), loss=True)
    assert loss.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("name", "objective"),
    [("mlp", "elbo"), ("mlp", "iwae"), ("mlp", "dreg"), ("hvae", "elbo"), ("hvae", "iwae")],
)
def test_images_without_their_channel_axis_are_refused_not_broadcast(name, objective):
    # (B, 28, 28) against a decoder event (1, 28, 28) (the MLP encoders flatten any image):
    # torch's log_prob broadcasts every image against every example's distribution, a loss B
    # (or K B) times too large. The conv models fail in conv2d instead.
    extra = {"num_samples": 3} if objective != "elbo" else {}
    model = build_model(ModelConfig.for_model(name, latent_size=4, objective=objective, **extra))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    loss, _ = model(x, loss=True)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"x of shape \(4, 28, 28\): expected \(B, \*event_shape\)"):
        model(x[:, 0], loss=True)


@pytest.mark.parametrize("dreg", [False, True], ids=["iwae", "dreg"])
def test_iwae_takes_the_kl_weight_of_the_encoders_regularizer(dreg):
    # A model whose encoder adds its KL term is weighted by the regularizer's weight in every
    # objective (the ELBO's term is the regularizer's): the IWAE read only its own beta, so a
    # model built with weight 3 and an objective of beta 1 trained with weight 1 (extension audit).
    cfg = ModelConfig(latent_size=2, base_depth=4, beta=3.0, objective="iwae", num_samples=2)
    model = build_model(cfg)
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()
    losses = []
    for beta in (3.0, 1.0):
        model.objective = IWAE(2, dreg=dreg, beta=beta)
        torch.manual_seed(0)
        losses.append(model(x, loss=True)[0])
    model.regularizer.weight = 1.0
    torch.manual_seed(0)
    unweighted = model(x, loss=True)[0]
    assert torch.equal(losses[0], losses[1])
    assert not torch.allclose(losses[0], unweighted)


def test_an_objectives_beta_other_than_the_regularizers_weight_is_refused():
    model = build_model(ModelConfig(latent_size=2, base_depth=4, beta=1.0))
    refused = r"objective's beta 4 differs from the encoder regularizer's weight 1;"
    with pytest.raises(ValueError, match=refused):
        VAE(model.encoder, model.decoder, model.regularizer, objective=IWAE(2, beta=4.0))
    VAE(model.encoder, model.decoder, model.regularizer, objective=ELBO(beta=1.0))  # 1: the weight's


def test_a_tensor_weight_equal_to_beta_is_accepted_without_a_warning():
    # float32's 0.1 is not the float 0.1: the check refused "beta 0.1 ... weight 0.1", and a
    # trained weight (a Parameter) made torch warn about float() of a tensor with a graph (review).
    model = build_model(ModelConfig(latent_size=2, base_depth=4))
    for weight in (torch.tensor(0.1), torch.nn.Parameter(torch.tensor(0.1))):
        regularizer = pl.KLDivergenceRegularizer(model.regularizer.prior, weight=weight)
        VAE(model.encoder, model.decoder, regularizer, objective=ELBO(beta=0.1))


def test_the_elbos_exact_kl_compiles_in_one_graph_after_a_register_kl():
    # The ELBO took torch's kl_divergence without preparing its lookup: after a register_kl (which
    # empties torch's cache) the zoo's exact KL broke the graph, and fullgraph failed (review).
    torch.compiler.reset()
    model = build_model(ModelConfig.for_model("mlp", latent_size=2, hidden_size=8))
    assert model.objective.exact_kl
    D.kl._KL_MEMOIZE.clear()
    try:
        explanation = torch._dynamo.explain(lambda x: model(x, loss=True)[0])(
            torch.rand(3, 1, 28, 28).round()
        )
        assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    finally:
        torch.compiler.reset()


def test_the_elbos_exact_kl_draws_nothing_the_decoder_did_not():
    """With the exact KL, the ELBO draws from q only what the decoder asks for: a decoder of
    q's mean leaves torch's generator where it was (a Monte Carlo KL needs the sample)."""

    class MeanDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 3)

        def forward(self, q):
            return D.Independent(D.Normal(self.linear(q.mean), 1.0), 1)

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(3, 4), pl.IndependentNormal(2))
    x = torch.randn(8, 3)
    for exact, draws in ((True, False), (False, True)):
        model = VAE(encoder, MeanDecoder(), prior=pl.StandardNormal(2), objective=ELBO(exact_kl=exact))
        state = torch.get_rng_state()
        model(x, loss=True)
        assert torch.equal(torch.get_rng_state(), state) is not draws
