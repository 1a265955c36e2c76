"""KL regularization: Monte Carlo vs exact KL, weight, priors of every kind, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributions as D
from torch import nn
from torch.nn import functional as F

import problayers as pl


def std_normal(d=3):
    return D.Independent(D.Normal(torch.zeros(d), 1.0), 1)


def posterior(batch=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(batch, pl.MultivariateNormalTriL.params_size(d), generator=g)
    return pl.as_coercible(pl.MultivariateNormalTriL.new(params, d))


def test_mc_kl_agrees_with_exact_kl():
    # 40,000 test points per example (seed 0). The tolerance is 4 standard errors of the MC
    # mean (estimated from a second draw of the same size; the exact KL has no error); the
    # standard error itself must be small (< 0.01 nats) for the check to mean something.
    torch.manual_seed(0)
    q, prior = posterior(), std_normal()
    k = 40_000
    reg = pl.KLDivergenceRegularizer(
        prior, test_points_fn=lambda d: d.sample((k,)), test_points_reduce_axis=0
    )
    mc = reg(q)
    z = q.sample((k,))
    per_point = (q.log_prob(z) - prior.log_prob(z)).mean(-1)  # (K,), mean over the batch
    stderr = per_point.std() / k**0.5
    exact = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q)
    torch.testing.assert_close(exact, D.kl_divergence(q, prior).mean())
    assert stderr < 0.01
    assert (mc - exact).abs() < 4 * stderr


def test_default_mc_kl_uses_the_cached_value():
    q, prior = posterior(), std_normal()
    z = q.tensor()
    expected = (q.log_prob(z) - prior.log_prob(z)).mean()
    torch.testing.assert_close(pl.KLDivergenceRegularizer(prior)(q), expected)


@pytest.mark.parametrize("weight", [0.0, 0.25, 3.0, torch.tensor(2.5)])
def test_weight_scales_exactly(weight):
    q, prior = posterior(), std_normal()
    base = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q)
    scaled = pl.KLDivergenceRegularizer(prior, weight=weight, use_exact_kl=True)(q)
    assert torch.equal(scaled, weight * base)


def test_prior_as_callable_and_module():
    q = posterior()
    exact = D.kl_divergence(q, std_normal()).mean()
    for prior in (std_normal, lambda: std_normal()):
        torch.testing.assert_close(pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q), exact)

    class Trainable(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(3))

        def forward(self):
            return D.Independent(D.Normal(self.loc, 1.0), 1)

    reg = pl.KLDivergenceRegularizer(Trainable(), use_exact_kl=True)
    assert [n for n, _ in reg.named_parameters()] == ["prior.loc"]
    reg(q).backward()
    assert reg.prior.loc.grad.abs().sum() > 0


def test_a_module_prior_is_one_submodule_under_its_name():
    # Registered under a second and third (bookkeeping) name, it was saved three times, stayed
    # trained after being replaced, and torch.func's swap of its tensors left one batched.
    class Trainable(nn.Module):
        def __init__(self, loc):
            super().__init__()
            self.loc = nn.Parameter(torch.full((3,), loc))

        def forward(self):
            return D.Independent(D.Normal(self.loc, 1.0), 1)

    reg = pl.KLDivergenceRegularizer(Trainable(0.0))
    assert [n for n, _ in reg.named_modules(remove_duplicate=False)] == ["", "prior"]
    assert list(reg.state_dict()) == ["prior.loc"]
    # a state dict saved before (the same tensors under the two more names) still loads
    old = {f"{name}.loc": torch.full((3,), 2.0) for name in ("prior", "_given_prior", "_placed_prior")}
    reg.load_state_dict(old)
    assert reg.prior.loc.tolist() == [2.0, 2.0, 2.0]
    reg.prior = Trainable(5.0)
    assert [p.tolist() for p in reg.parameters()] == [[5.0, 5.0, 5.0]]

    def make():
        return nn.Sequential(
            nn.Linear(5, 6),
            pl.IndependentNormal(3, activity_regularizer=pl.KLDivergenceRegularizer(pl.StandardNormal(3))),
        )

    torch.manual_seed(0)
    members = [make() for _ in range(3)]
    base, x = members[0], torch.randn(4, 5)
    params, buffers = torch.func.stack_module_state(members)

    def kl(p, b):
        torch.func.functional_call(base, (p, b), (x,))
        return pl.collect_losses(base, clear=True)

    assert torch.func.vmap(kl, randomness="same")(params, buffers).shape == (3,)
    prior = base[1].activity_regularizer.prior
    assert not any(torch._C._functorch.is_batchedtensor(t) for t in prior.buffers())
    base(x)  # an eager forward after the ensemble's
    assert torch.isfinite(pl.collect_losses(base, clear=True))


def test_a_module_prior_assigned_later_is_called_as_its_forward_takes():
    # Whether the prior takes the posterior was decided once, for the prior given at
    # construction: a prior assigned after with the other signature was called the wrong way.
    class Fixed(nn.Module):
        def forward(self):
            return std_normal()

    class FromPosterior(nn.Module):
        def forward(self, q):
            return D.Independent(D.Normal(q.mean.detach(), 1.0), 1)

    q = posterior()
    reg = pl.KLDivergenceRegularizer(Fixed(), use_exact_kl=True)
    torch.testing.assert_close(reg(q), D.kl_divergence(q, std_normal()).mean())
    reg.prior = FromPosterior()
    expected = D.kl_divergence(q, D.Independent(D.Normal(q.mean, 1.0), 1)).mean()
    torch.testing.assert_close(reg(q), expected)
    reg.prior = Fixed()
    torch.testing.assert_close(reg(q), D.kl_divergence(q, std_normal()).mean())


def test_prior_follows_dtype():
    q = pl.as_coercible(D.Independent(D.Normal(torch.zeros(2, 3, dtype=torch.float64), 1.0), 1))
    reg = pl.KLDivergenceRegularizer(std_normal())
    assert reg(q).dtype == torch.float64
    assert reg.resolve_prior(torch.zeros(1, dtype=torch.float64)).mean.dtype == torch.float64


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="prior"):
        pl.KLDivergenceRegularizer(3)
    with pytest.raises(TypeError, match="weight"):
        pl.KLDivergenceRegularizer(std_normal(), weight="big")
    with pytest.raises(TypeError, match="test_points_fn"):
        pl.KLDivergenceRegularizer(std_normal(), test_points_fn=1)
    with pytest.raises(TypeError, match="not a Distribution"):
        pl.KLDivergenceRegularizer(lambda: 3)(posterior())
    with pytest.raises(TypeError, match="expected a Distribution"):
        pl.KLDivergenceRegularizer(std_normal())(torch.zeros(3))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"weight: expected a finite number >= 0, got {bad}"):
            pl.KLDivergenceRegularizer(std_normal(), weight=bad)
    assert pl.KLDivergenceRegularizer(std_normal(), weight=np.float32(0.5)).weight == 0.5  # numpy numbers
    with pytest.raises(TypeError, match=r"test_points_reduce_axis.*'0'"):
        pl.KLDivergenceRegularizer(std_normal(), test_points_reduce_axis="0")
    with pytest.raises(ValueError, match=r"test_points_reduce_axis: \(5,\) is out of range.*\(4,\)"):
        pl.KLDivergenceRegularizer(std_normal(), test_points_reduce_axis=5)(posterior())
    with pytest.raises(TypeError, match="test_points_fn: expected it to return a tensor, got str"):
        pl.KLDivergenceRegularizer(std_normal(), test_points_fn=lambda q: "z")(posterior())


def test_integer_samples_leave_the_prior_floating():
    """A Categorical's test points are int64: the prior stays in the posterior's float dtype and
    the Monte Carlo KL is the mean log-ratio at those very points."""
    logits = torch.randn(4, 3)
    for prior in (
        D.Categorical(logits=torch.tensor([0.1, 0.2, 0.7]).log()),
        D.Categorical(torch.tensor([0.1, 0.2, 0.7])),
    ):
        reg = pl.KLDivergenceRegularizer(
            prior, test_points_fn=lambda q: q.sample((50,)), test_points_reduce_axis=0
        )
        torch.manual_seed(0)
        kl = reg(D.Categorical(logits=logits))
        torch.manual_seed(0)
        q = D.Categorical(logits=logits)
        z = q.sample((50,))  # (50, 4) int64
        torch.testing.assert_close(kl, (q.log_prob(z) - prior.log_prob(z)).mean())
        assert prior.logits.dtype == torch.float32


def test_a_plain_distribution_is_sampled_for_the_default_test_points():
    q = D.Independent(D.Normal(torch.ones(4, 3), 1.0), 1)  # not tensor-coercible: no cached value
    torch.manual_seed(0)
    kl = pl.KLDivergenceRegularizer(std_normal())(q)
    torch.manual_seed(0)
    z = q.rsample()
    torch.testing.assert_close(kl, (q.log_prob(z) - std_normal().log_prob(z)).mean())


class _NoMean(D.TransformedDistribution):
    """A flow-like posterior: no ``mean``, a KL only once the user registers one."""


@D.kl.register_kl(_NoMean, D.Independent)
def _kl_no_mean(p, q):
    return p.base_dist.base_dist.loc.square().sum(-1) / 2  # a stand-in: KL(N(m, 1) || N(0, 1))


def test_exact_kl_uses_a_registered_formula_for_a_posterior_without_a_mean():
    base = D.Independent(D.Normal(torch.ones(4, 3), 1.0), 1)
    q = _NoMean(base, [D.transforms.AffineTransform(0.0, 1.0, event_dim=1)])
    with pytest.raises(NotImplementedError):
        q.mean  # noqa: B018
    kl = pl.KLDivergenceRegularizer(std_normal(), use_exact_kl=True)(q)
    torch.testing.assert_close(kl, torch.tensor(1.5))


def test_a_transformed_prior_moves_with_its_transforms():
    """A Logistic prior is a TransformedDistribution: its AffineTransform's loc and scale move
    with the model (``.double()``, ``.to(device)``) as its base distribution's tensors do."""
    prior = D.Independent(pl.Logistic(torch.zeros(2), torch.ones(2), validate_args=False), 1)
    reg = pl.KLDivergenceRegularizer(prior)
    model = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2, activity_regularizer=reg)).double()
    affine = reg.prior.base_dist.transforms[-1]
    assert reg.prior.base_dist.base_dist.low.dtype == affine.loc.dtype == affine.scale.dtype == torch.float64
    model(torch.zeros(5, 3, dtype=torch.float64))
    assert pl.collect_losses(model).dtype == torch.float64
    model.to("meta")
    model(torch.zeros(5, 3, dtype=torch.float64, device="meta"))
    assert reg.prior.base_dist.transforms[-1].loc.device.type == "meta"
    assert prior.base_dist.transforms[-1].loc.dtype == torch.float32  # the user's prior is untouched


def test_exact_kl_without_formula_names_both_types():
    q = pl.as_coercible(D.Independent(D.Laplace(torch.zeros(2, 3), 1.0), 1))
    prior = D.Independent(D.Gumbel(torch.zeros(3), 1.0), 1)
    with pytest.raises(NotImplementedError, match=r"Independent.*Independent|Laplace.*Gumbel"):
        pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q)
    q = pl.as_coercible(D.Laplace(torch.zeros(2), 1.0))
    with pytest.raises(NotImplementedError, match=r"Laplace \|\| Gumbel"):
        pl.KLDivergenceRegularizer(D.Gumbel(torch.zeros(2), 1.0), use_exact_kl=True)(q)


def test_kl_add_loss_layer_passes_through_and_records():
    q, prior = posterior(), std_normal()
    layer = pl.KLDivergenceAddLoss(prior, weight=0.5, use_exact_kl=True)
    assert layer(q) is q
    torch.testing.assert_close(pl.collect_losses(layer), 0.5 * D.kl_divergence(q, prior).mean())


def test_regularizer_and_next_layer_see_the_same_sample():
    torch.manual_seed(3)
    seen = {}

    def spy(d):
        seen["kl_point"] = pl.convert_to_tensor(d)
        return pl.convert_to_tensor(d)

    reg = pl.KLDivergenceRegularizer(std_normal(), test_points_fn=spy)
    layer = pl.MultivariateNormalTriL(3, activity_regularizer=reg)
    nxt = nn.Linear(3, 1)
    captured = {}

    def hook(module, args, output):
        captured["input"] = args[0]

    nxt.register_forward_hook(hook)
    out = nxt(layer(torch.randn(5, 9)))
    assert out.shape == (5, 1)
    assert pl.convert_to_tensor(captured["input"]) is seen["kl_point"]


def test_prior_made_on_meta_says_so_when_the_model_gets_values():
    with torch.device("meta"):
        reg = pl.KLDivergenceRegularizer(D.Independent(D.Normal(torch.zeros(2), 1.0, validate_args=False), 1))
    with pytest.raises(
        RuntimeError, match=r"^KLDivergenceRegularizer: the prior was made on the meta device"
    ):
        reg.to_empty(device="cpu")
    with torch.device("meta"):
        reg = pl.KLDivergenceRegularizer(pl.StandardNormal(2))  # a module that makes the prior
    reg.to_empty(device="cpu")
    assert reg.resolve_prior(None).mean.tolist() == [0.0, 0.0]
    # used as it is, on a CPU output: the same line (it was torch's "Cannot copy out of meta tensor")
    with torch.device("meta"):
        prior = D.Independent(D.Normal(torch.zeros(2), 1.0, validate_args=False), 1)
    layer = pl.IndependentNormal(2, activity_regularizer=pl.KLDivergenceRegularizer(prior))
    with pytest.raises(
        RuntimeError, match=r"^KLDivergenceRegularizer: the prior was made on the meta device"
    ):
        layer(torch.randn(3, 4))


def test_prior_is_placed_from_the_prior_as_given_not_rounded():
    # .half() then .float() must give back the prior's own values, not their fp16 rounding.
    reg = pl.KLDivergenceRegularizer(D.Independent(D.Normal(torch.full((2,), 0.1), 1.0), 1))
    reg.half()
    reg.float()
    assert torch.equal(reg.prior.mean, torch.full((2,), 0.1))


def test_prior_replaced_by_the_user_is_the_one_moved():
    reg = pl.KLDivergenceRegularizer(D.Normal(torch.zeros(()), 1.0))
    reg.prior = D.Normal(torch.tensor(5.0), 1.0)
    reg.double()
    assert reg.prior.loc.item() == 5.0 and reg.prior.loc.dtype == torch.float64


def test_distribution_to_keeps_integer_tensors_integer():
    from problayers.distcopy import distribution_to

    dist = D.Normal(torch.zeros(3), 1.0)
    dist.index = torch.arange(3)  # e.g. a categorical's support kept on the object
    moved = distribution_to(dist, torch.device("cpu"), torch.float64)
    assert moved.loc.dtype == torch.float64 and moved.index.dtype == torch.int64


def test_exact_kl_of_an_fp64_posterior_is_fp64():
    # The prior goes to the posterior's dtype: KL(N(0, I) || N(1, I)) in 3 dims = |mu|^2 / 2 = 1.5.
    eye = torch.eye(3, dtype=torch.float64)
    q = pl.as_coercible(D.MultivariateNormal(torch.zeros(4, 3, dtype=torch.float64), scale_tril=eye))
    prior = D.MultivariateNormal(torch.ones(3), scale_tril=torch.eye(3))
    kl = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q)
    assert kl.dtype == torch.float64
    torch.testing.assert_close(kl, torch.tensor(1.5, dtype=torch.float64))


def test_test_points_reduce_axis_equal_to_the_rank_is_refused():
    q = pl.as_coercible(D.Independent(D.Normal(torch.zeros(4, 3), 1.0), 1))
    reg = pl.KLDivergenceRegularizer(std_normal(), test_points_reduce_axis=1)  # log q - log p: (4,)
    with pytest.raises(ValueError, match="out of range"):
        reg(q)


def test_a_member_kl_is_summed_over_the_batch_axes_after_the_first():
    """A ``Normal`` over ``(N, D)`` without ``Independent`` (common in TFP code): the recorded
    term is the mean over the N rows of the sum over the D latents, as TFP's sum over every
    axis divided by Keras' batch size (N) gives; averaging all N x D terms would divide the
    KL by D. Exact: ``KL(N(m, 1) || N(0, 1)) = m^2 / 2``; measured against TFP 0.25 by
    ``benchmarks/check_tfp_kl_reductions.py``."""
    loc = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prior = D.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    expected = (loc.square() / 2).sum(1).mean()  # mean over the 4 rows of the sum over the 3
    q = D.Normal(loc, 1.0)
    torch.testing.assert_close(pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q), expected)
    layer = pl.DistributionLambda(
        lambda t: D.Normal(t, 1.0), activity_regularizer=pl.KLDivergenceRegularizer(prior, weight=2.0)
    )
    value = layer(loc).tensor()  # the Monte Carlo estimate at the layer's own sample
    per_element = D.Normal(loc, 1.0).log_prob(value) - prior.log_prob(value)  # (4, 3)
    torch.testing.assert_close(pl.collect_losses(layer), 2.0 * per_element.sum(1).mean())
    # a batch axis named in test_points_reduce_axis is averaged, not summed; None: every axis
    for axes, want in (
        ((-1,), per_element.mean()),
        (None, per_element.mean()),
        ((), per_element.sum(1).mean()),
    ):
        reg = pl.KLDivergenceRegularizer(prior, test_points_fn=lambda d: value, test_points_reduce_axis=axes)
        torch.testing.assert_close(reg(q), want)


def test_a_priors_extra_batch_axes_are_summed_the_rows_are_qs():
    """A prior of batch shape ``(2, 4)`` against a posterior of batch ``(4,)``: the KL broadcasts
    to ``(2, 4)``; TFP sums it and Keras divides by the output's 4 rows (measured against TFP
    0.25 by ``benchmarks/check_tfp_kl_reductions.py``). Taking the broadcast's first axis for
    the rows gave twice that, and averaged a prior's 3 against q's one row."""
    g = torch.Generator().manual_seed(0)
    prior = D.Independent(D.Normal(torch.randn(2, 4, 3, generator=g), 1.0), 1)
    q = D.Independent(D.Normal(torch.randn(4, 3, generator=g), 1.0), 1)
    expected = D.kl_divergence(q, prior).sum() / 4
    torch.testing.assert_close(pl.KLDivergenceRegularizer(prior, use_exact_kl=True)(q), expected)
    z = q.sample()  # (4, 3)
    reg = pl.KLDivergenceRegularizer(prior, test_points_fn=lambda d: z)
    torch.testing.assert_close(reg(q), (q.log_prob(z) - prior.log_prob(z)).sum() / 4)
    # q's one row against a prior's 3 (TFP: the sum over 3, divided by 1 row); a posterior of
    # batch () has no rows: every batch axis (the prior's) is summed
    wide = D.Independent(D.Normal(torch.randn(3, 2, generator=g), 1.0), 1)
    one_row = D.Independent(D.Normal(torch.randn(1, 2, generator=g), 1.0), 1)  # batch (1,)
    for q in (one_row, D.Independent(D.Normal(torch.randn(2, generator=g), 1.0), 1)):  # (1,), ()
        expected = D.kl_divergence(q, wide).sum()
        torch.testing.assert_close(pl.KLDivergenceRegularizer(wide, use_exact_kl=True)(q), expected)


def test_sample_axes_of_the_test_points_are_averaged():
    """Draws of the test points (a leading sample axis) are averaged whether or not
    ``test_points_reduce_axis`` names them; the batch axes after the first are still summed."""
    loc = torch.randn(2, 3, dtype=torch.float64)
    q, prior = D.Normal(loc, 1.0), D.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    z = q.sample((5,))  # (5, 2, 3)
    per = q.log_prob(z) - prior.log_prob(z)  # (5, 2, 3)
    for axes in ((), 0):
        reg = pl.KLDivergenceRegularizer(prior, test_points_fn=lambda d: z, test_points_reduce_axis=axes)
        torch.testing.assert_close(reg(q), per.sum(-1).mean())


def _trained_prior_kls(dtype, via_double, linear_dtype=None):
    loc = torch.zeros(2, requires_grad=True)  # float32, trained by the user's optimizer
    prior = D.Independent(D.Normal(loc, 1.0), 1)
    reg = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=linear_dtype), pl.IndependentNormal(2, activity_regularizer=reg)
    )
    with torch.no_grad():  # q = N(3, softplus(0)) for every row
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([3.0, 3.0, 0.0, 0.0]))
    if via_double:
        model.double()
    opt = torch.optim.SGD([loc], lr=0.5)
    with torch.no_grad():  # a look before training: no copy without a graph may outlive it
        model(torch.zeros(8, 3, dtype=dtype))
    pl.clear_losses(model)
    kls = []
    for _ in range(3):
        model(torch.zeros(8, 3, dtype=dtype))
        kl = pl.collect_losses(model, clear=True)
        opt.zero_grad()
        kl.backward()
        opt.step()
        kls.append(kl.item())
    return kls


def test_a_prior_the_user_trains_is_trained_whatever_the_model_dtype():
    # The float64 copies used to be made once: the KL stayed at its first value while the
    # user's loc ran away (its gradient, through the stale copy, never shrank).
    reference = _trained_prior_kls(torch.float32, False)
    assert reference[-1] < reference[0] / 10
    np.testing.assert_allclose(_trained_prior_kls(torch.float64, True), reference, rtol=1e-6)
    np.testing.assert_allclose(_trained_prior_kls(torch.float64, False, torch.float64), reference, rtol=1e-6)


@pytest.mark.parametrize("where", ["output float64", "model.double()"])
def test_a_prior_changed_in_place_is_seen_in_every_dtype(where):
    scale = torch.ones(2)
    prior = D.Independent(D.Normal(torch.zeros(2), scale), 1)
    layer = pl.IndependentNormal(2, activity_regularizer=pl.KLDivergenceRegularizer(prior, use_exact_kl=True))
    if where == "model.double()":
        layer.double()
    x = torch.zeros(1, 4, dtype=torch.float64)
    kls = []
    for s in (1.0, 0.5, 0.25):
        scale.fill_(s)  # annealed by the user between epochs
        layer(x)
        kls.append(pl.collect_losses(layer, clear=True).item())
    q = D.Independent(
        D.Normal(torch.zeros(2, dtype=torch.float64), F.softplus(torch.zeros(2, dtype=torch.float64))), 1
    )
    expected = [
        D.kl_divergence(q, D.Independent(D.Normal(0.0, torch.full((2,), s).double()), 1)).item()
        for s in (1.0, 0.5, 0.25)
    ]
    np.testing.assert_allclose(kls, expected, rtol=1e-12)


def test_a_prior_assigned_after_a_call_is_the_one_used():
    reg = pl.KLDivergenceRegularizer(std_normal(2), use_exact_kl=True)
    layer = pl.IndependentNormal(2, activity_regularizer=reg)
    x = torch.zeros(1, 4, dtype=torch.float64)
    layer(x)
    first = pl.collect_losses(layer, clear=True).item()
    reg.prior = D.Independent(D.Normal(torch.ones(2), 1.0), 1)  # a new prior, float32 again
    layer(x)
    assert pl.collect_losses(layer, clear=True).item() == pytest.approx(first + 1.0, rel=1e-9)  # + |1|^2 / 2


def test_a_tensor_weight_is_the_users_own_wherever_the_model_moves():
    # TFP's KL annealing with a tf.Variable weight: the user's tensor, changed in place, scales
    # the next term, after .double() too (a buffer would have been replaced by a copy there);
    # weight=None is TFP's default.
    beta = torch.tensor(0.5)
    reg = pl.KLDivergenceRegularizer(std_normal(2), weight=beta, use_exact_kl=True)
    model = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2, activity_regularizer=reg)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    model(x)
    half = pl.collect_losses(model, clear=True)
    beta.fill_(1.0)  # annealed
    model(x)
    torch.testing.assert_close(pl.collect_losses(model, clear=True), half * 2)
    assert list(model.state_dict()) == ["0.weight", "0.bias"]  # as in Keras: not a model weight
    assert pl.KLDivergenceRegularizer(std_normal(2), weight=None).weight == 1.0


def test_a_prior_copied_inside_a_compiled_first_call_traces_in_one_graph():
    # A float64 prior in a float32 model, the first call compiled: the copy is made while
    # tracing, where the version counters cannot be read (fullgraph failed on them).
    prior = D.Independent(D.Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1)
    reg = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)
    model = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2, activity_regularizer=reg))
    x = torch.randn(5, 3)

    def loss(x):
        return model(x).log_prob(torch.zeros(5, 2)).mean() + pl.collect_losses(model, clear=True)

    compiled = torch.compile(loss, backend="eager", fullgraph=True)(x)
    reg._moved.clear()
    torch.testing.assert_close(compiled, loss(x))


def test_a_prior_copy_made_under_inference_mode_serves_later_training():
    # A validation forward under inference_mode made the kept float64 copy of inference
    # tensors: every later training step failed ("Inference tensors cannot be saved").
    scale = torch.ones(2)
    prior = D.Independent(D.Normal(torch.zeros(2), scale), 1)
    reg = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)
    model = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2, activity_regularizer=reg)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    scale.fill_(0.5)  # annealed: the next call copies the prior again
    with torch.inference_mode():
        model(x)
    pl.clear_losses(model)
    model(x)
    pl.collect_losses(model, clear=True).backward()
    assert model[0].weight.grad is not None
