"""ELBO and IWAE bounds (problayers.vae.evaluation) on a linear-Gaussian latent model.

The model, in float64 throughout so that exact identities can be checked to ~1e-10::

    p(z) = N(0, I_D),  p(x|z) = N(W z + b, sigma^2 I)   (x has shape X = (1, 2, 2), P = 4 dims)
    =>  p(x) = N(b, W W^T + sigma^2 I)                   (exact log-likelihood, MultivariateNormal)
        p(z|x) = N(S W^T (x - b) / sigma^2, S),  S = (I + W^T W / sigma^2)^-1

The analytic ELBO of any q is ``log p(x) - KL(q(z|x) || p(z|x))`` (both terms exact, through
``torch.distributions``). The imperfect encoder is a *diagonal* Gaussian whose mean is the exact
posterior mean shifted by ``SHIFT`` posterior standard deviations and whose scales are the exact
marginal ones times ``INFLATE``; its importance weights have finite variance
(``2 Sq^-1 - S^-1`` is positive definite, checked below), so the IWAE estimates settle quickly.

Statistical tests are seeded (deterministic) and compare Monte Carlo means with their *computed*
standard errors: "within 4 standard errors" (a correct implementation fails such a check with
probability ~6e-5 per comparison for a fresh seed) and, as negative controls, "more than 10 standard
errors apart" where the quantities truly differ.
"""

from __future__ import annotations

import itertools
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.distributions as D

from problayers.vae.evaluation import elbo_terms, evaluate, format_table, iwae_log_likelihood

F64 = torch.float64
LATENT = 2
EVENT = (1, 2, 2)
DIMS = math.prod(EVENT)
SIGMA = 0.5
SHIFT = 1.5
INFLATE = 1.0
Z_SE = 4.0  # "agrees": within Z_SE standard errors


def make_model(seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(DIMS, LATENT, generator=g, dtype=F64)  # (P, D)
    b = 0.3 * torch.randn(DIMS, generator=g, dtype=F64)  # (P,)
    prior = D.Independent(D.Normal(torch.zeros(LATENT, dtype=F64), torch.ones(LATENT, dtype=F64)), 1)
    marginal = D.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(DIMS, dtype=F64))
    post_cov = torch.linalg.inv(torch.eye(LATENT, dtype=F64) + W.T @ W / SIGMA**2)  # (D, D)
    post_tril = torch.linalg.cholesky(post_cov)
    post_sd = post_cov.diagonal().sqrt()  # (D,)

    def decode(z):  # (N, D) -> batch (N,), event X
        assert z.dim() == 2, z.shape
        loc = (z @ W.T + b).reshape(z.shape[0], *EVENT)  # (N, *X)
        return D.Independent(D.Normal(loc, SIGMA), len(EVENT))

    def post_mean(x):  # (B, *X) -> (B, D)
        return (x.flatten(1) - b) @ W @ post_cov / SIGMA**2

    def posterior(x):  # the exact p(z|x): batch (B,), event (D,)
        return D.MultivariateNormal(post_mean(x), scale_tril=post_tril.expand(x.shape[0], LATENT, LATENT))

    def imperfect_params(x):  # loc, scale: (B, D)
        return post_mean(x) + SHIFT * post_sd, INFLATE * post_sd.expand(x.shape[0], LATENT)

    def encode(x):  # the deliberately imperfect q(z|x)
        return D.Independent(D.Normal(*imperfect_params(x)), 1)

    def log_px(x):  # exact log p(x): (B,)
        return marginal.log_prob(x.flatten(1))

    def elbo(x):  # exact ELBO of `encode`: (B,)
        return log_px(x) - D.kl_divergence(encode(x), posterior(x))

    def data(n, seed=1):  # n examples from p(x), (n, *X); leaves the global RNG untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return marginal.sample((n,)).reshape(n, *EVENT)

    return SimpleNamespace(**locals())


@pytest.fixture(scope="module")
def m():
    return make_model()


def mean_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over dim 0."""
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


def repeated_iwae(m, x, num_samples, reps, chunk_size=256, encode=None):
    """``reps`` independent IWAE estimates for each row of ``x``: shape (reps, B)."""
    xr = x.repeat(reps, *([1] * (x.dim() - 1)))  # (reps*B, *X)
    out = iwae_log_likelihood(encode or m.encode, m.decode, m.prior, xr, num_samples, chunk_size=chunk_size)
    return out.reshape(reps, x.shape[0])


# --------------------------------------------------------------------------- test doubles


class NoiseBank:
    """Standard-normal noise read from a fixed table, so sampling is reproducible whatever the chunking.

    ``mode="stream"``: successive draws consume the table in order (a cursor), so ``K`` samples drawn
    in chunks of 7 or in one chunk are the *same* ``K`` samples. ``mode="fixed"``: every draw of
    ``k`` samples returns the first ``k`` rows (noise depends only on the sample index).
    """

    def __init__(self, rows: int, batch: int, seed: int = 0, mode: str = "stream"):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(rows, batch, LATENT, generator=g, dtype=F64)  # (rows, B or 1, D)
        self.mode = mode
        self.cursor = 0

    def take(self, k: int) -> torch.Tensor:
        if self.mode == "fixed":
            return self.table[:k]
        out = self.table[self.cursor : self.cursor + k]
        assert out.shape[0] == k, "noise bank exhausted"
        self.cursor += k
        return out


class ReplayNormal(D.Independent):
    """``Independent(Normal(loc, scale), 1)`` sampling ``loc + scale * eps``, eps from a NoiseBank."""

    def __init__(self, loc, scale, bank: NoiseBank):
        super().__init__(D.Normal(loc, scale), 1)
        self.bank = bank

    def rsample(self, sample_shape=()):
        sample_shape = torch.Size(sample_shape)
        assert len(sample_shape) <= 1
        k = sample_shape[0] if sample_shape else 1
        eps = self.bank.take(k)  # (k, B or 1, D)
        z = self.base_dist.loc + self.base_dist.scale * eps  # (k, B, D)
        return z.reshape(sample_shape + z.shape[1:])

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.rsample(sample_shape)


def replay_encoder(m, bank):
    return lambda x: ReplayNormal(*m.imperfect_params(x), bank)


class CountingDecode:
    """Wraps ``decode``; records the number of latent rows of every call."""

    def __init__(self, decode):
        self.decode = decode
        self.rows: list[int] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, z):
        assert z.dim() == 2, f"decode got z of shape {tuple(z.shape)}"
        self.rows.append(z.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.decode(z)


def reference_iwae(m, x, z):
    """IWAE computed directly from given samples z (K, B, D) through torch.distributions: (B,)."""
    q = m.encode(x)
    log_w = torch.stack(
        [m.decode(zk).log_prob(x) + m.prior.log_prob(zk) - q.log_prob(zk) for zk in z]
    )  # (K, B)
    return torch.logsumexp(log_w, 0) - math.log(z.shape[0])


# --------------------------------------------------------------------------- the model itself


def test_model_sanity(m):
    """The closed forms of the test model agree with each other (guards the tests below)."""
    x = m.data(5)
    # Bayes: log p(x) = log p(x|z) + log p(z) - log p(z|x) for any z.
    z = torch.randn(5, LATENT, dtype=F64)
    lhs = m.decode(z).log_prob(x) + m.prior.log_prob(z) - m.posterior(x).log_prob(z)
    torch.testing.assert_close(lhs, m.log_px(x), rtol=0, atol=1e-9)
    # The imperfect q is genuinely worse than the posterior, and its weights have finite variance.
    assert (m.log_px(x) - m.elbo(x) > 1.0).all()
    sq_inv = torch.diag(1.0 / (INFLATE * m.post_sd) ** 2)
    assert (torch.linalg.eigvalsh(2 * sq_inv - torch.linalg.inv(m.post_cov)) > 0).all()


# --------------------------------------------------------------------------- IWAE: statistics


def test_iwae_k1_is_unbiased_for_the_elbo(m):
    torch.manual_seed(10)
    x = m.data(4)
    est = repeated_iwae(m, x, 1, reps=4000)  # (R, B)
    mean, se = mean_se(est)
    elbo, log_px = m.elbo(x), m.log_px(x)
    assert (se < 0.05).all(), se  # the check below is not vacuous
    assert ((mean - elbo).abs() < Z_SE * se).all(), (mean - elbo, se)
    # negative control: the K=1 mean is far from log p(x) in standard errors
    assert ((log_px - mean) > 10 * se).all()


#: K -> number of independent repetitions per data point in the IWAE ladder below.
LADDER = {1: 1000, 10: 1000, 100: 1000, 1000: 300, 10000: 40}


@pytest.fixture(scope="module")
def ladder(m):
    """IWAE means and standard errors at each K of LADDER for 2 data points (computed once)."""
    torch.manual_seed(11)
    x = m.data(2, seed=2)
    stats = {k: mean_se(repeated_iwae(m, x, k, reps, chunk_size=2000)) for k, reps in LADDER.items()}
    return SimpleNamespace(
        log_px=m.log_px(x), mean={k: v[0] for k, v in stats.items()}, se={k: v[1] for k, v in stats.items()}
    )


def test_iwae_bound_rises_with_k(ladder):
    ks = [1, 10, 100, 1000]
    for lo, hi in itertools.pairwise(ks):
        rise = ladder.mean[hi] - ladder.mean[lo]  # (B,)
        combined = (ladder.se[lo] ** 2 + ladder.se[hi] ** 2).sqrt()
        assert (rise > Z_SE * combined).all(), (lo, hi, rise, combined)
    # every mean is a lower bound of log p(x) (up to its standard error)
    for k in LADDER:
        assert (ladder.mean[k] < ladder.log_px + Z_SE * ladder.se[k]).all(), k


def test_iwae_converges_to_the_exact_log_likelihood(ladder):
    """The gap log p(x) - E[IWAE_K] goes from > 1 nat (K = 1) to ~0: at K = 10^4 it is within
    0.01 nats + 4 standard errors of zero (its bias is ~Var(w)/(2K) ~ 1e-3 nats here)."""
    gap = {k: ladder.log_px - ladder.mean[k] for k in LADDER}
    assert (gap[1] > 1.0).all()
    for lo, hi in ((1, 10), (10, 100), (100, 10000)):
        assert (gap[hi] < gap[lo] - Z_SE * (ladder.se[lo] ** 2 + ladder.se[hi] ** 2).sqrt()).all(), (lo, hi)
    assert (ladder.se[10000] < 0.015).all()  # the final check is tight: |gap| < ~0.07 nats
    assert (gap[10000].abs() < 0.01 + Z_SE * ladder.se[10000]).all(), (gap[10000], ladder.se[10000])


@pytest.mark.parametrize("num_samples, chunk_size", [(1, 256), (7, 3), (50, 256)])
def test_exact_posterior_gives_log_px_for_every_sample(m, num_samples, chunk_size):
    """With q = p(z|x) every importance weight equals p(x): each estimate is exactly log p(x)."""
    torch.manual_seed(13)
    x = m.data(6)
    est = repeated_iwae(m, x, num_samples, reps=50, chunk_size=chunk_size, encode=m.posterior)  # (R, B)
    torch.testing.assert_close(est, m.log_px(x).expand_as(est), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- IWAE: mechanics


@pytest.mark.parametrize("num_samples", [1, 7, 50, 257])
@pytest.mark.parametrize("chunk_size", [1, 7, 256])
def test_chunking_does_not_change_the_result(m, num_samples, chunk_size):
    """Design: a replayed encoder serves the *same* K samples in the same order whatever the chunking
    (a cursor over a fixed noise table), so the chunked result must equal the one-chunk result and a
    direct reference computation over those K samples to float precision; the number of samples
    drawn and decoded is counted to show K is exact."""
    x = m.data(3)
    bank_one, bank_chunked = NoiseBank(num_samples, 3), NoiseBank(num_samples, 3)
    decode = CountingDecode(m.decode)
    one = iwae_log_likelihood(
        replay_encoder(m, bank_one), m.decode, m.prior, x, num_samples, chunk_size=num_samples
    )
    chunked = iwae_log_likelihood(
        replay_encoder(m, bank_chunked), decode, m.prior, x, num_samples, chunk_size=chunk_size
    )
    assert chunked.shape == (3,)
    torch.testing.assert_close(chunked, one, rtol=0, atol=1e-10)
    z = m.encode(x).base_dist.loc + m.encode(x).base_dist.scale * bank_one.table  # (K, B, D)
    torch.testing.assert_close(chunked, reference_iwae(m, x, z), rtol=0, atol=1e-10)
    # K exact: all K samples drawn, decoded in ceil(K / chunk) calls of at most chunk * B rows
    assert bank_one.cursor == bank_chunked.cursor == num_samples
    calls = math.ceil(num_samples / chunk_size)
    last = num_samples - chunk_size * (calls - 1)
    assert decode.rows == [chunk_size * 3] * (calls - 1) + [last * 3]
    assert sum(decode.rows) == num_samples * 3


def test_iwae_is_differentiable(m):
    x = m.data(3)
    shift = torch.zeros(LATENT, dtype=F64, requires_grad=True)

    def encode(x):
        loc, scale = m.imperfect_params(x)
        return D.Independent(D.Normal(loc + shift, scale), 1)

    iwae_log_likelihood(encode, m.decode, m.prior, x, 20, chunk_size=6).sum().backward()
    assert shift.grad is not None and torch.isfinite(shift.grad).all() and shift.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": -3}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"num_samples": True}, "num_samples"),
        ({"num_samples": 4, "chunk_size": 0}, "chunk_size"),
        ({"num_samples": 4, "chunk_size": None}, "chunk_size"),
    ],
)
def test_iwae_rejects_bad_arguments(m, kwargs, name):
    with pytest.raises(ValueError, match=rf"{name}: expected an integer >= 1, got"):
        iwae_log_likelihood(m.encode, m.decode, m.prior, m.data(2), **kwargs)


def test_contract_violations_are_reported(m):
    x = m.data(3)

    def bad_decode(z):  # batch_shape (N, 1) instead of (N,)
        return D.Independent(D.Normal((z @ m.W.T + m.b).reshape(-1, 1, DIMS), SIGMA), 1)

    with pytest.raises(ValueError, match=r"decode\(z\).*batch_shape \(12,\)"):
        iwae_log_likelihood(m.encode, bad_decode, m.prior, x, 4)
    with pytest.raises(ValueError, match=r"encode\(x\).*batch_shape \(3,\)"):
        elbo_terms(lambda x: m.encode(x[:1]), m.decode, m.prior, x)
    with pytest.raises(ValueError, match="x: expected"):
        elbo_terms(m.encode, m.decode, m.prior, x.flatten())
    # Images of another shape than the decoder's event (MNIST's (B, 28, 28) for (1, 28, 28)) were
    # broadcast by log_prob and summed to a -ELBO B times too large; uint8 images failed in a
    # matrix product (API audit).
    enc = lambda t: m.encode(t.reshape(t.shape[0], *x.shape[1:]))  # noqa: E731
    event = re.escape(str(tuple(x.shape[1:])))
    for fn in (elbo_terms, lambda *a: iwae_log_likelihood(*a, 4)):
        with pytest.raises(ValueError, match=rf"event_shape {event}, got \({DIMS},\) after the batch"):
            fn(enc, m.decode, m.prior, x.reshape(3, DIMS))
    with pytest.raises(ValueError, match=r"^x: expected float data .*got torch.uint8"):
        elbo_terms(m.encode, m.decode, m.prior, x.to(torch.uint8))
    # The prior was not checked: a function (model.prior for model.prior()) failed in log_prob,
    # and one without Independent broadcast (with K = B = D, iwae returned (B, B)) (API audit).
    latent = m.prior.event_shape[0]
    plain = D.Normal(torch.zeros(latent), 1.0)  # batch (D,), event ()
    for fn in (elbo_terms, lambda *a: iwae_log_likelihood(*a, 4)):
        with pytest.raises(
            ValueError, match=r"^prior: expected a torch Distribution, got function \(a model"
        ):
            fn(m.encode, m.decode, lambda: m.prior, x)
        with pytest.raises(
            ValueError, match=rf"^prior: .* got batch_shape \({latent},\) and event_shape \(\)$"
        ):
            fn(m.encode, m.decode, plain, x)


def test_data_outside_the_decoders_support_is_refused():
    """Images in 0..255 as floats (the uint8 refusal answered with ``.float()``) gave a Bernoulli
    decoder a negative -ELBO (argument audit); ``evaluate`` checks each batch."""
    from problayers.vae.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_size=4, base_depth=4)).eval()
    x = torch.randint(0, 256, (6, 1, 28, 28)).float()
    with torch.no_grad():
        for fn in (elbo_terms, lambda *a: iwae_log_likelihood(*a, 2)):
            with pytest.raises(
                ValueError, match=r"^x: expected values in the support of the decoder's Independent"
            ):
                fn(model.encode, model.decode, model.prior(), x)
        binary = (x > 127).float()
        images = torch.cat([binary, x[:1]])  # one example outside, in the last batch
        with pytest.raises(
            ValueError,
            match=r"^images: .*got 1 of 1 examples outside it \(values in \[0, 255\]; binarized images "
            r"are 0 or 1: see problayers.vae.data.binarize_fixed\)$",
        ):
            evaluate(model.encode, model.decode, model.prior(), images, batch_size=2)
        assert evaluate(model.encode, model.decode, model.prior(), binary, batch_size=2)["neg_elbo"] > 0


def test_a_support_that_depends_on_the_parameters_is_checked_per_example():
    """A Binomial decoder's support holds its total_count, shaped as its batch: checked against the
    whole set (or the IWAE's k * B rows against B images) it failed to broadcast (diff review)."""

    def encode(x):
        return D.Independent(D.Normal(torch.zeros(x.shape[0], 2), 1.0), 1)

    def decode(z):
        return D.Independent(
            D.Binomial(
                torch.full((z.shape[0], 1, 2, 2), 255.0), logits=z[:, :1, None, None], validate_args=False
            ),
            3,
        )

    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    images = torch.randint(0, 256, (10, 1, 2, 2)).float()
    torch.manual_seed(0)
    out = evaluate(encode, decode, prior, images, batch_size=4, iwae_samples=3, chunk_size=2)
    assert math.isfinite(out["neg_elbo"]) and math.isfinite(out["iwae_nll"])
    with pytest.raises(
        ValueError,
        match=r"^images: .*Independent\(Binomial\) \(IntegerInterval\); got 1 of 3 examples outside it "
        r"\(values in \[\d+, \d+\]\)$",  # no hint about binarized images: this decoder takes counts
    ):
        evaluate(encode, decode, prior, torch.cat([images, images[:1] + 256]), batch_size=4)

    def categorical(z):  # 256 classes: out of range, log_prob's gather failed before the check
        logits = z[:, :1, None, None, None].expand(-1, 1, 2, 2, 256)
        return D.Independent(D.Categorical(logits=logits, validate_args=False), 3)

    bad = torch.cat([images, images[:1] + 256])
    for fn in (
        lambda: evaluate(encode, categorical, prior, bad, batch_size=4, iwae_samples=5, chunk_size=2),
        lambda: iwae_log_likelihood(encode, categorical, prior, bad[8:], 5, chunk_size=2),
    ):
        with pytest.raises(ValueError, match=r"Independent\(Categorical\) \(IntegerInterval\); got 1 of"):
            fn()


# --------------------------------------------------------------------------- elbo_terms


def test_elbo_terms_shapes_and_sum(m):
    x = m.data(5)
    terms = elbo_terms(m.encode, m.decode, m.prior, x)
    assert set(terms) == {"recon", "kl", "neg_elbo"}
    for value in terms.values():
        assert value.shape == (5,)
    torch.testing.assert_close(terms["neg_elbo"], terms["recon"] + terms["kl"], rtol=0, atol=0)
    torch.testing.assert_close(terms["kl"], D.kl_divergence(m.encode(x), m.prior))


def test_elbo_terms_uses_one_z_for_recon_and_mc_kl(m):
    """exact_kl=False, and exact_kl=True with a prior that has no KL formula, both use the MC KL at the
    z of the reconstruction term (the replayed encoder tells which z that was)."""
    x = m.data(4)
    mixture_prior = D.MixtureSameFamily(  # = N(0, I), but no registered KL formula
        D.Categorical(logits=torch.zeros(1, dtype=F64)),
        D.Independent(D.Normal(torch.zeros(1, LATENT, dtype=F64), torch.ones(1, LATENT, dtype=F64)), 1),
    )
    bank = NoiseBank(1, 4)
    q = m.encode(x)
    z = q.base_dist.loc + q.base_dist.scale * bank.table[0]  # (B, D)
    for prior, exact in ((m.prior, False), (mixture_prior, True)):
        bank.cursor = 0
        terms = elbo_terms(replay_encoder(m, bank), m.decode, prior, x, exact_kl=exact)
        torch.testing.assert_close(terms["recon"], -m.decode(z).log_prob(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(terms["kl"], q.log_prob(z) - prior.log_prob(z), rtol=0, atol=1e-10)


def test_elbo_terms_are_unbiased(m):
    """Mean over many draws: -recon - kl matches the analytic ELBO; MC KL matches the exact KL."""
    torch.manual_seed(14)
    x = m.data(4)
    reps = 4000
    xr = x.repeat(reps, 1, 1, 1)
    exact = elbo_terms(m.encode, m.decode, m.prior, xr, exact_kl=True)
    mc = elbo_terms(m.encode, m.decode, m.prior, xr, exact_kl=False)
    neg_elbo, se = mean_se(exact["neg_elbo"].reshape(reps, 4))
    assert (se < 0.05).all()
    assert ((neg_elbo + m.elbo(x)).abs() < Z_SE * se).all()
    kl_mc, se_kl = mean_se(mc["kl"].reshape(reps, 4))
    kl_exact = D.kl_divergence(m.encode(x), m.prior)
    assert (se_kl < 0.05).all()
    assert ((kl_mc - kl_exact).abs() < Z_SE * se_kl).all(), (kl_mc, kl_exact, se_kl)


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("exact_kl", [True, False], ids=["exact-kl", "mc-kl"])
def test_evaluate_means_equal_per_example_means(m, exact_kl):
    """With noise that depends only on the sample index ('fixed' bank) every per-example value is
    deterministic, so evaluate() over batches of 7 must equal the means of one big call (with the
    exact KL, and with the Monte Carlo KL at the reconstruction's z)."""
    images = m.data(45)
    encode = replay_encoder(m, NoiseBank(300, 1, mode="fixed"))
    decode = CountingDecode(m.decode)
    res = evaluate(
        encode, decode, m.prior, images, batch_size=7, iwae_samples=20, chunk_size=6, exact_kl=exact_kl
    )
    terms = elbo_terms(encode, m.decode, m.prior, images, exact_kl=exact_kl)
    other = elbo_terms(encode, m.decode, m.prior, images, exact_kl=not exact_kl)
    assert res["kl"] != pytest.approx(other["kl"].mean().item(), rel=1e-6)  # the two KLs differ
    log_px = iwae_log_likelihood(encode, m.decode, m.prior, images, 20, chunk_size=6)
    for key in ("neg_elbo", "recon", "kl"):
        assert res[key] == pytest.approx(terms[key].mean().item(), rel=1e-12)
    assert res["iwae_nll"] == pytest.approx(-log_px.mean().item(), rel=1e-12)
    assert res["num_examples"] == 45 and res["iwae_samples"] == 20
    assert all(type(v) is float for k, v in res.items() if k not in ("num_examples", "iwae_samples"))
    assert type(res["num_examples"]) is int and type(res["iwae_samples"]) is int
    # bits per dim: nats / (prod(X) ln 2)
    assert res["neg_elbo_bits_per_dim"] == pytest.approx(res["neg_elbo"] / (DIMS * math.log(2)), rel=1e-12)
    assert res["iwae_nll_bits_per_dim"] == pytest.approx(res["iwae_nll"] / (DIMS * math.log(2)), rel=1e-12)
    # 7 batches (6 of 7, one of 3); per batch 1 ELBO call + 4 IWAE chunks (6, 6, 6, 2); all under no_grad
    assert len(decode.rows) == 7 * 5 and sum(decode.rows) == 45 * (1 + 20)
    assert not any(decode.grad_enabled)


def test_evaluate_without_iwae_and_statistics(m):
    torch.manual_seed(15)
    images = m.data(400)
    res = evaluate(m.encode, m.decode, m.prior, images, batch_size=128)
    assert set(res) == {"neg_elbo", "recon", "kl", "neg_elbo_bits_per_dim", "num_examples"}
    assert res["num_examples"] == 400
    assert res["neg_elbo"] == pytest.approx(res["recon"] + res["kl"], rel=1e-12)
    # the data-set mean of -ELBO matches the analytic one within 4 standard errors; the standard
    # error is estimated from an independent draw of the per-example noise -ELBO_hat - (-ELBO)
    exact = -m.elbo(images).mean().item()
    noise = elbo_terms(m.encode, m.decode, m.prior, images)["neg_elbo"] + m.elbo(images)  # (N,)
    se = noise.std().item() / math.sqrt(400)
    assert abs(res["neg_elbo"] - exact) < Z_SE * se


def test_the_elbo_does_not_change_with_the_iwae_samples(m):
    # The IWAE draws are made on a fork of the random stream: at one seed the -ELBO of
    # `evaluate --iwae-samples K` is the same for every K (it changed with K before).
    images = m.data(40)
    elbos = []
    for k in (0, 1, 7):
        torch.manual_seed(3)
        elbos.append(evaluate(m.encode, m.decode, m.prior, images, batch_size=9, iwae_samples=k)["neg_elbo"])
    assert elbos[0] == elbos[1] == elbos[2]


def test_evaluate_does_not_sync_per_batch(m, monkeypatch):
    """Sums stay on the device: no .item() at all, one .tolist() at the end."""
    calls = {"item": 0, "tolist": 0}
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counting(name, fn):
        def wrapper(self, *a, **k):
            calls[name] += 1
            return fn(self, *a, **k)

        return wrapper

    monkeypatch.setattr(torch.Tensor, "item", counting("item", item))
    monkeypatch.setattr(torch.Tensor, "tolist", counting("tolist", tolist))
    evaluate(m.encode, m.decode, m.prior, m.data(30), batch_size=4, iwae_samples=3)
    assert calls == {"item": 0, "tolist": 1}


def test_evaluate_progress_bar(m, capsys):
    res = evaluate(m.encode, m.decode, m.prior, m.data(10), batch_size=4, progress=True)
    assert res["num_examples"] == 10
    assert "evaluate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size: expected an integer >= 1, got 0"),
        ({"batch_size": 2.0}, "batch_size: expected an integer >= 1, got 2.0"),
        ({"iwae_samples": -1}, "iwae_samples: expected an integer >= 0, got -1"),
        ({"chunk_size": 0}, "chunk_size: expected an integer >= 1, got 0"),
        ({"images": torch.zeros(4, dtype=F64)}, r"images: expected a tensor of shape \(B, \*X\)"),
        ({"images": torch.zeros(0, *EVENT, dtype=F64)}, "images: expected at least one example"),
        ({"images": [[0.0, 1.0]]}, "images: expected a torch.Tensor"),
    ],
)
def test_evaluate_rejects_bad_arguments(m, kwargs, match):
    kwargs = {"images": m.data(3), **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(m.encode, m.decode, m.prior, **kwargs)


# --------------------------------------------------------------------------- format_table


def test_format_table():
    res = {
        "neg_elbo": 95.1234,
        "recon": 70.5,
        "kl": 24.6234,
        "neg_elbo_bits_per_dim": 0.175,
        "iwae_nll": 90.25,
        "iwae_nll_bits_per_dim": 0.166,
        "iwae_samples": 5000,
        "num_examples": 10000,
    }
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "nats", "bits/dim"]
    body = lines[2:6]
    assert [line.split()[0] for line in body] == ["-ELBO", "reconstruction", "KL", "IWAE"]
    assert "IWAE NLL (K=5000)" in table and "95.1234" in table and "0.17500" in table
    assert len({len(line) for line in lines[:6]}) == 1  # aligned columns
    assert lines[-1] == "(10000 examples)"
    # a partial dict (no IWAE) still formats
    assert "IWAE" not in format_table({k: v for k, v in res.items() if not k.startswith("iwae")})


def test_iwae_gradient_is_the_reparameterized_bounds(m):
    # The same noise drawn by hand: d/d shift of sum_b [logsumexp_k log w_kb - log K], z through
    # the reparameterization and log q at the differentiated parameters.
    x, k = m.data(3), 20
    shift = torch.zeros(LATENT, dtype=F64, requires_grad=True)
    bank = NoiseBank(k, 3)

    def encode(x):
        loc, scale = m.imperfect_params(x)
        return ReplayNormal(loc + shift, scale, bank)

    iwae_log_likelihood(encode, m.decode, m.prior, x, k, chunk_size=6).sum().backward()
    by_hand = torch.zeros(LATENT, dtype=F64, requires_grad=True)
    loc, scale = m.imperfect_params(x)
    q = D.Independent(D.Normal(loc + by_hand, scale), 1)
    z = loc + by_hand + scale * bank.table  # (K, B, D)
    log_w = torch.stack([m.decode(z[i]).log_prob(x) for i in range(k)]) + m.prior.log_prob(z) - q.log_prob(z)
    (torch.logsumexp(log_w, 0) - math.log(k)).sum().backward()
    torch.testing.assert_close(shift.grad, by_hand.grad)


def test_monte_carlo_kl_is_unbiased_per_example():
    # q = N(0.5, 1), prior N(0, 1) in 2 dims: log q(z) - log p(z) = 0.5 sum(z) - 0.25 (sd 0.71),
    # negative for a third of the z; its mean over 40000 examples is KL = 0.25 within 4 standard
    # errors (~0.0035 each: a bias of 6% of the KL fails).
    n = 40000
    prior = D.Independent(D.Normal(torch.zeros(LATENT, dtype=F64), 1.0), 1)

    def encode(x):
        return D.Independent(D.Normal(torch.full((x.shape[0], LATENT), 0.5, dtype=F64), 1.0), 1)

    def decode(z):
        return D.Independent(D.Normal(torch.zeros(z.shape[0], *EVENT, dtype=F64), 1.0), len(EVENT))

    torch.manual_seed(0)
    kl = elbo_terms(encode, decode, prior, torch.zeros(n, *EVENT, dtype=F64), exact_kl=False)["kl"]
    assert (kl < 0).any()
    mean, se = mean_se(kl)
    exact = LATENT * 0.5**2 / 2
    assert Z_SE * float(se) < 0.06 * exact
    assert abs(float(mean) - exact) < Z_SE * float(se)
