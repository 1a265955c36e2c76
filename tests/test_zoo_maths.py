"""The maths of the model zoo: DReG is unbiased for the IWAE gradient, the VampPrior is the mixture
of the encoder's posteriors, the IAF's log-det is autograd's, the fast Gaussian mixture is torch's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from problayers.vae.models import VAE, ModelConfig, build_model
from problayers.vae.models.hierarchical import Chain
from problayers.vae.models.priors import (
    DiagonalGaussianMixture,
    MixtureOfGaussians,
    StandardNormal,
    VampPrior,
)
from problayers.vae.objectives import ELBO, IWAE


def _toy_vae(objective: nn.Module, seed: int = 0) -> VAE:
    """x (B, 3) -> q(z|x) over R^2 -> p(x|z) Normal over R^3; prior N(0, I)."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2))
    decoder = nn.Sequential(nn.Linear(2, 6), pl.IndependentNormal(3))
    return VAE(encoder, decoder, prior=StandardNormal(2), objective=objective)


def _group_gradients(
    model: VAE, x: torch.Tensor, groups: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's gradient of the loss (a batch mean) over ``groups`` independent batches:
    their mean and its standard error, each ``(P,)``."""
    torch.manual_seed(seed)
    grads = []
    for _ in range(groups):
        model.zero_grad()
        loss, _ = model(x, loss=True)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
    g = torch.stack(grads).double()  # (G, P)
    return g.mean(0), g.std(0) / math.sqrt(groups)


@pytest.mark.parametrize("beta", [1.0, 0.5], ids=["beta=1", "beta=0.5"])
def test_dreg_gradient_is_unbiased_for_the_iwae_gradient(beta):
    # Both estimate d IWAE_K / d phi: over 30 x 4000 replicates of one x they agree within
    # 4.5 standard errors, coordinate by coordinate (seeded; one failure in ~10^4 by chance).
    # With beta != 1 (or during a KL warm-up) DReG's weights are (1 - beta) w + beta w^2.
    x = torch.tensor([[0.5, -1.0, 2.0]]).expand(4000, 3)
    k = 8
    plain = _toy_vae(IWAE(k, beta=beta))
    dreg = _toy_vae(IWAE(k, dreg=True, beta=beta))
    dreg.load_state_dict(plain.state_dict())
    mean_p, se_p = _group_gradients(plain, x, 30, seed=1)
    mean_d, se_d = _group_gradients(dreg, x, 30, seed=2)
    z = (mean_d - mean_p) / torch.sqrt(se_p**2 + se_d**2)
    assert z.abs().max() < 4.5, z
    # ... and the point of DReG: a smaller variance for the encoder (here several-fold; at
    # beta < 1 the plain estimator's score term is smaller too, and the two are close).
    if beta == 1.0:
        assert (se_d < se_p).float().mean() >= 0.75, (se_d, se_p)


def test_dreg_loss_value_and_decoder_gradient_are_the_iwae_ones():
    x = torch.randn(16, 3)
    plain = _toy_vae(IWAE(5))
    dreg = _toy_vae(IWAE(5, dreg=True))
    dreg.load_state_dict(plain.state_dict())
    out = []
    for model in (plain, dreg):
        torch.manual_seed(3)
        loss, metrics = model(x, loss=True)
        loss.backward()
        out.append((loss.detach(), metrics["iwae"], [p.grad.clone() for p in model.decoder.parameters()]))
    (lp, mp, gp), (ld, md, gd) = out
    torch.testing.assert_close(ld, lp)
    torch.testing.assert_close(md, mp)
    for a, b in zip(gp, gd, strict=True):
        torch.testing.assert_close(b, a)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo():
    x = torch.randn(8, 3)
    iwae = _toy_vae(IWAE(1))
    elbo = _toy_vae(ELBO(exact_kl=False))
    elbo.load_state_dict(iwae.state_dict())
    torch.manual_seed(4)
    a, _ = iwae(x, loss=True)
    torch.manual_seed(4)
    b, _ = elbo(x, loss=True)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dreg", [False, True], ids=["iwae", "dreg"])
def test_iwae_loss_is_the_bound_computed_example_by_example(dreg):
    # Distinct examples (pairing a sample with another example's x changes the value) and K = 5
    # (the -log K term): the loss is mean_b -(logsumexp_k log w_kb - log K), computed here with
    # one decoder call per sample, at the objective's own draw (same seed).
    k = 5
    model = _toy_vae(IWAE(k, dreg=dreg))
    x = torch.randn(6, 3)
    torch.manual_seed(7)
    loss, metrics = model(x, loss=True)
    torch.manual_seed(7)
    with torch.no_grad():
        q = model.encoder(x)
        z = q.rsample((k,))  # (K, B, 2)
        log_w = torch.stack([model.decoder(z[i]).log_prob(x) for i in range(k)])  # (K, B)
        log_w = log_w + model.prior().log_prob(z) - q.log_prob(z)
        expected = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(metrics["iwae"], expected)


def test_iwae_bound_rises_with_k_toward_the_elbo_and_above():
    x = torch.randn(64, 3)
    values = []
    for k in (1, 10, 100):
        model = _toy_vae(IWAE(k))
        torch.manual_seed(5)
        with torch.no_grad():
            values.append(float(model(x, loss=True)[0]))
    assert values[0] > values[1] > values[2]  # -IWAE_K falls as K grows


def test_kl_warmup_scales_the_kl_and_counts_training_steps():
    model = _toy_vae(ELBO(exact_kl=True, kl_warmup_steps=4))
    x = torch.randn(8, 3)
    factors = []
    for _ in range(6):
        loss, m = model(x, loss=True)
        factors.append(float((loss.detach() - m["recon"]) / m["kl"]))
    assert factors == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1], abs=1e-5)
    assert int(model.state_dict()["objective.steps"]) == 6  # saved with the weights
    model.eval()
    model(x, loss=True)
    assert int(model.objective.steps) == 6  # evaluation does not advance it


def test_free_bits_floor_stops_the_kl_gradient():
    """Below the floor the term is the constant ``free_bits * D``: the encoder's gradient is
    the reconstruction's alone (the same draw)."""
    model = _toy_vae(ELBO(exact_kl=True, free_bits=100.0))  # far above the KL
    x = torch.randn(8, 3)
    torch.manual_seed(0)
    loss, m = model(x, loss=True)
    assert float(loss.detach() - m["recon"]) == pytest.approx(200.0)  # 100 nats x 2 latents
    assert float(m["kl"]) < 200.0
    weights = list(model.encoder.parameters())
    got = torch.autograd.grad(loss, weights)
    torch.manual_seed(0)
    recon = -model.decoder(model.encoder(x)).log_prob(x).mean()
    for g, want in zip(got, torch.autograd.grad(recon, weights), strict=True):
        torch.testing.assert_close(g, want)


def test_free_bits_floor_is_scaled_by_beta():
    # The floor is on the weighted KL: beta * free_bits per latent dimension.
    model = _toy_vae(ELBO(exact_kl=True, free_bits=100.0, beta=0.5))
    loss, m = model(torch.randn(8, 3), loss=True)
    assert float(loss.detach() - m["recon"]) == pytest.approx(100.0)  # 0.5 x 100 nats x 2 latents


def test_vampprior_is_the_mixture_of_the_encoder_posteriors():
    torch.manual_seed(6)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), pl.IndependentNormal(4))
    prior = VampPrior(encoder, 5, (2, 3))
    with torch.no_grad():  # pseudo-inputs that training pushed outside [0, 1]: used clamped
        prior.pseudo_inputs.normal_(0.5, 1.0)
    assert prior.pseudo_inputs.min() < 0 and prior.pseudo_inputs.max() > 1
    p = prior()
    assert p.batch_shape == () and p.event_shape == (4,)
    z = 2 * torch.randn(7, 3, 4)
    u = prior.pseudo_inputs.clamp(0, 1)
    direct = torch.stack([encoder(u[c : c + 1]).log_prob(z.unsqueeze(-2)).squeeze(-1) for c in range(5)])
    expected = torch.logsumexp(direct, 0) - math.log(5)  # (7, 3)
    torch.testing.assert_close(p.log_prob(z), expected, rtol=1e-5, atol=1e-4)
    assert "encoder" not in dict(prior.named_children())  # the encoder's weights are the model's
    assert [n for n, _ in prior.named_parameters()] == ["pseudo_inputs"]


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_diagonal_gaussian_mixture_equals_torch_mixture(scale):
    torch.manual_seed(7)
    loc, sd, logits = torch.randn(30, 5), scale * (torch.rand(30, 5) + 0.5), torch.randn(30)
    fast = DiagonalGaussianMixture(logits, loc, sd)
    ref = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(loc, sd), 1))
    z = torch.cat([ref.sample((40,)), 3 * torch.randn(40, 5)]).double().float()  # near and far
    torch.testing.assert_close(
        fast.log_prob(z.reshape(2, 40, 5)), ref.log_prob(z).reshape(2, 40), rtol=1e-4, atol=1e-3
    )
    assert fast.sample((3,)).shape == (3, 5)


def test_diagonal_gaussian_mixture_log_prob_is_fp32_under_bf16_autocast():
    # Narrow components, as a trained VampPrior's: in bf16 the matrix products' terms (~1e4)
    # cancel to errors of nats (a `--prior vamp --objective iwae` run in bf16 went to NaN).
    torch.manual_seed(8)
    loc, sd, logits = torch.randn(50, 40), 0.05 + 0.2 * torch.rand(50, 40), torch.zeros(50)
    mix = DiagonalGaussianMixture(logits, loc, sd)
    z = (loc[:8] + 3 * sd[:8] * torch.randn(8, 40)).requires_grad_()
    ref = mix.log_prob(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mix.log_prob(z)
        got_bf16 = mix.log_prob(z.bfloat16())  # a bf16 sample, as a bf16 encoder draws
    assert got.dtype == got_bf16.dtype == torch.float32
    torch.testing.assert_close(got_bf16, mix.log_prob(z.bfloat16().float()))
    torch.testing.assert_close(got, ref)
    (grad,) = torch.autograd.grad(got.sum(), z)
    torch.testing.assert_close(grad, torch.autograd.grad(ref.sum(), z)[0])


@pytest.mark.parametrize("scale", [1e-3, 1e-2])
def test_diagonal_gaussian_mixture_is_exact_near_narrow_components(scale):
    # The matrix products' terms are ~|z|^2 / scale^2 (~1e8 here) and cancel where z is near a
    # mean: in fp32 they were 56 nats off at scale 1e-3 and 0.46 at 1e-2 (40 latents, means ~2).
    torch.manual_seed(9)
    loc, logits = 2 * torch.randn(50, 40), torch.randn(50)
    sd = scale * (0.5 + torch.rand(50, 40))
    z = (loc[:16] + sd[:16] * torch.randn(16, 40)).requires_grad_()  # posterior-like samples
    got = DiagonalGaussianMixture(logits, loc, sd).log_prob(z)
    comp = D.Independent(D.Normal(loc.double(), sd.double()), 1)
    ref = D.MixtureSameFamily(D.Categorical(logits=logits.double()), comp)
    z64 = z.detach().double().requires_grad_()
    expected = ref.log_prob(z64)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-3)
    (grad,) = torch.autograd.grad(got.sum(), z)
    (grad64,) = torch.autograd.grad(expected.sum(), z64)
    torch.testing.assert_close(grad, grad64.float(), rtol=1e-4, atol=1e-3 / scale)


def test_diagonal_gaussian_mixture_promotes_dtypes_as_torch_mixture():
    torch.manual_seed(10)
    loc, sd, logits = torch.randn(4, 3), torch.rand(4, 3) + 0.5, torch.randn(4)
    z = torch.randn(6, 3, dtype=torch.float64)
    got = DiagonalGaussianMixture(logits, loc, sd).log_prob(z)
    ref = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(loc, sd), 1))
    assert got.dtype == ref.log_prob(z).dtype == torch.float64
    torch.testing.assert_close(got, ref.log_prob(z))


def test_mixture_of_gaussians_prior_starts_as_unit_gaussians_with_equal_weights():
    p = MixtureOfGaussians(3, 4)()
    assert p.batch_shape == () and p.event_shape == (3,)
    torch.testing.assert_close(p.component_distribution.stddev.detach(), torch.ones(4, 3))
    torch.testing.assert_close(p.mixture_distribution.probs.detach(), torch.full((4,), 0.25))


def test_mixture_of_gaussians_prior_learns():
    prior = MixtureOfGaussians(2, 3)
    z = torch.randn(64, 2) + 4.0
    opt = torch.optim.Adam(prior.parameters(), lr=0.1)
    with torch.no_grad():
        before = float(-prior().log_prob(z).mean())
    for _ in range(50):
        opt.zero_grad()
        (-prior().log_prob(z).mean()).backward()
        opt.step()
    with torch.no_grad():
        assert float(-prior().log_prob(z).mean()) < before - 1.0


def test_iaf_log_det_is_autograd_and_its_density_needs_no_cache():
    torch.manual_seed(8)
    made = pl.AutoregressiveNetwork(2, 3, hidden_units=(16,))
    with torch.no_grad():  # a far-from-identity flow
        for p in made.parameters():
            p.mul_(3.0)
    flow = pl.AutoregressiveTransform(made, inverse=True)
    base = D.Independent(D.Normal(torch.zeros(3), 1.0), 1)
    q = flow(base)
    (transform,) = q.transforms
    u = torch.randn(3)
    y = transform(u)
    jac = torch.autograd.functional.jacobian(transform, u)  # (3, 3)
    torch.testing.assert_close(
        transform.log_abs_det_jacobian(u, y), torch.linalg.slogdet(jac)[1], rtol=1e-5, atol=1e-5
    )
    z = q.rsample((5,))  # cached: log q from the drawn base point
    cached = q.log_prob(z)
    fresh = flow(base).log_prob(z.clone())  # no cache: inverts the IAF (d network passes)
    torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)


def test_chain_log_prob_is_the_sum_of_its_parts():
    torch.manual_seed(9)
    first = D.Independent(D.Normal(torch.zeros(4, 2), 1.0), 1)
    net = nn.Linear(2, 3)

    def cond(a: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Normal(net(a), 0.5), 1)

    chain = Chain(first, cond, 3)
    assert chain.batch_shape == (4,) and chain.event_shape == (5,)
    z = chain.rsample((6,))
    assert z.shape == (6, 4, 5) and z.requires_grad
    a, b = z[..., :2], z[..., 2:]
    torch.testing.assert_close(chain.log_prob(z), first.log_prob(a) + cond(a).log_prob(b))


def test_mixture_of_gaussians_weights_and_vampprior_pseudo_inputs_get_gradients():
    torch.manual_seed(10)
    mog = MixtureOfGaussians(2, 3)
    with torch.no_grad():
        mog.loc.mul_(3.0)  # distinct components: the weights matter
    (-mog().log_prob(torch.randn(16, 2) + 2.0).mean()).backward()
    assert mog.logits.grad is not None and mog.logits.grad.abs().sum() > 0
    cfg = ModelConfig.for_model("hvae", latent_size=3, hidden_size=8, prior="vamp", prior_components=4)
    model = build_model(cfg)
    loss, _ = model(torch.bernoulli(torch.full((5, 1, 28, 28), 0.3)), loss=True)
    loss.backward()
    pseudo = model.prior_module.top.pseudo_inputs
    assert pseudo.grad is not None and pseudo.grad.abs().sum() > 0


def _chain(seed: int = 9):
    torch.manual_seed(seed)
    first = D.Independent(D.Normal(torch.zeros(4, 2), 1.0), 1)
    net = nn.Linear(2, 3)

    def cond(a: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Normal(net(a), 0.5), 1)

    return Chain(first, cond, 3), first, cond, net


def test_chain_log_prob_is_differentiable_through_the_first_part():
    chain, first, cond, _ = _chain()
    z = torch.randn(6, 4, 5, requires_grad=True)
    (got,) = torch.autograd.grad(chain.log_prob(z).sum(), z)
    z2 = z.detach().clone().requires_grad_(True)
    a, b = z2[..., :2], z2[..., 2:]
    (expected,) = torch.autograd.grad((first.log_prob(a) + cond(a).log_prob(b)).sum(), z2)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", ["sample", "rsample"])
def test_chain_samples_the_second_part_from_its_conditional(method):
    # b | a ~ N(net(a), 0.5^2) and a ~ N(0, 1): residuals b - net(a) have sd 0.5, a has sd 1
    # (4000 x 4 x 3 draws, seeded; the sd's standard error is ~0.003).
    chain, _, _, net = _chain()
    with torch.no_grad():
        z = getattr(chain, method)((4000,))
        a, b = z[..., :2], z[..., 2:]
        assert float((b - net(a)).std()) == pytest.approx(0.5, abs=0.02)
        assert float(a.std()) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(
    ("name", "options"),
    [("mlp", {}), ("mlp", {"posterior": "iaf"}), ("hvae", {}), ("resnet", {"base_depth": 4})],
    ids=["mlp", "mlp-iaf", "hvae", "resnet"],
)
def test_dregs_stopped_log_q_reaches_no_encoder_parameter(name, options):
    # hvae's posterior runs its conditional network inside log_prob: it must run at the
    # detached weights too (it ran at the real ones, a biased encoder gradient), and the
    # value is the encoder's log q.
    from problayers.vae.objectives import _stopped_log_prob

    torch.manual_seed(0)
    size = {} if name == "resnet" else {"hidden_size": 16}
    cfg = ModelConfig.for_model(name, latent_size=4, objective="dreg", num_samples=2, **size, **options)
    vae = build_model(cfg)
    x = torch.bernoulli(torch.rand(3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    z = vae.encoder(x).rsample((2,)).detach().requires_grad_()  # (K, B, D)
    log_q = _stopped_log_prob(vae, x, z)
    torch.testing.assert_close(log_q, vae.encoder(x).log_prob(z))
    log_q.sum().backward()
    assert all(p.grad is None for p in vae.encoder.parameters())
    assert z.grad is not None and z.grad.abs().sum() > 0  # the path through z is kept


def test_dreg_moves_batchnorms_running_statistics_once_per_step():
    # The stopped log q and the weights' pass run on copies of the buffers: the statistics
    # are those of one training forward of the encoder and one of the decoder, as with iwae.
    stats = {}
    for objective in ("iwae", "dreg"):
        torch.manual_seed(0)
        cfg = ModelConfig.for_model("resnet", base_depth=4, latent_size=4, objective=objective, num_samples=2)
        vae = build_model(cfg)
        x = torch.bernoulli(torch.rand(3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(1)
        vae(x, loss=True)[0].backward()
        stats[objective] = {n: b.clone() for n, b in vae.named_buffers() if "running" in n or "tracked" in n}
    assert stats["dreg"] and stats["dreg"].keys() == stats["iwae"].keys()
    for n, b in stats["iwae"].items():
        torch.testing.assert_close(stats["dreg"][n], b, msg=n)


def test_dreg_leaves_a_weight_normed_decoder_initialized():
    # The weights' pass (no gradients) is the decoder's first call: a WeightNorm initializes
    # there, and its flag must be the module's, not a discarded copy's (only BatchNorm's
    # running statistics are copied).
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2))
    decoder = nn.Sequential(pl.WeightNorm(nn.Linear(2, 6), data_init=True), pl.IndependentNormal(3))
    vae = VAE(encoder, decoder, prior=StandardNormal(2), objective=IWAE(3, dreg=True))
    vae(torch.randn(8, 3), loss=True)[0].backward()
    assert bool(decoder[0].initialized)


def test_dreg_trains_a_decoder_with_a_lazy_norm_layer():
    # The weights' pass is the decoder's first call: a lazy BatchNorm has no statistics to
    # copy yet (it raised at the first step).
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2))
    decoder = nn.Sequential(nn.Linear(2, 6), nn.LazyBatchNorm1d(), pl.IndependentNormal(3))
    vae = VAE(encoder, decoder, prior=StandardNormal(2), objective=IWAE(3, dreg=True))
    loss, _ = vae(torch.randn(8, 3), loss=True)
    loss.backward()
    assert torch.isfinite(loss) and int(decoder[1].num_batches_tracked) == 1


def test_mixture_density_has_torchs_hessian_at_its_component_means():
    """At z equal to a component mean the expanded squared distance rounds below 0 in about a
    quarter of the cases; clamping it gave a zero Hessian there (gradient audit)."""
    torch.manual_seed(0)
    logits = torch.randn(20, dtype=torch.float64)
    loc = torch.randn(20, 8, dtype=torch.float64) * 3
    scale = torch.rand(20, 8, dtype=torch.float64) * 0.5 + 0.05
    ours = DiagonalGaussianMixture(logits, loc, scale)
    ref = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(loc, scale), 1))
    for z in loc:
        got = torch.autograd.functional.hessian(ours.log_prob, z.clone())
        want = torch.autograd.functional.hessian(ref.log_prob, z.clone())
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
