"""VariationalGaussianProcess: shapes, the KL term is torch's, the predictive's limits (q(u) = p(u);
inducing points at the inputs), gradients, errors, and a short fit of a sine."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from problayers.losses import added_losses_skipped


def _randomize(gp: pl.VariationalGaussianProcess, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gp.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_shapes():
    gp = pl.VariationalGaussianProcess(3, 6)
    out = gp(torch.randn(5, 3))
    assert isinstance(out, D.Independent) and pl.is_coercible(out)
    assert (
        out.batch_shape == (5,) and out.event_shape == (1,) and out.log_prob(torch.zeros(5, 1)).shape == (5,)
    )
    assert gp(torch.randn(2, 4, 3)).batch_shape == (2, 4)
    assert pl.convert_to_tensor(gp(torch.randn(7, 3))).shape == (7, 1)
    joint = pl.VariationalGaussianProcess(3, 6, joint=True, dtype=torch.float64)
    out = joint(torch.randn(5, 3, dtype=torch.float64))
    assert isinstance(out, D.MultivariateNormal) and out.batch_shape == () and out.event_shape == (5,)
    assert out.mean.dtype == torch.float64
    assert gp.prior().event_shape == gp.variational_distribution().event_shape == (6,)


def test_kl_term_is_torchs_kl_divergence():
    torch.manual_seed(0)
    gp = pl.VariationalGaussianProcess(2, 5, mean_fn="constant", kl_weight=0.25)
    _randomize(gp)
    gp(torch.randn(4, 2))
    expected = D.kl_divergence(gp.variational_distribution(), gp.prior())
    assert expected > 0
    torch.testing.assert_close(pl.collect_losses(gp), 0.25 * expected)


def test_q_equal_to_the_prior_predicts_the_prior():
    """q(u) = p(u): the predictive is the GP prior, N(mean_fn(x), k(x, x) + noise), at the
    inducing points (there the mean is the mean function's) and elsewhere; the KL is 0."""
    torch.manual_seed(0)
    gp = pl.VariationalGaussianProcess(2, 6, mean_fn="constant", dtype=torch.float64, jitter=1e-8)
    _randomize(gp)
    prior = gp.prior()
    with torch.no_grad():
        gp.mean_constant.fill_(0.7)
        gp.variational_loc.copy_(gp.mean(gp.inducing_points))
        tril = gp._prior_tril()
        raw = torch.tril(tril, -1) + torch.diag(torch.log(torch.expm1(tril.diagonal())))  # softplus^-1
        gp.untransformed_variational_scale.copy_(raw)
    z = gp.inducing_points.detach()
    x = torch.cat([z, torch.randn(3, 2, dtype=torch.float64)])
    out = gp(x)
    torch.testing.assert_close(out.mean, torch.full((9, 1), 0.7, dtype=torch.float64))
    noise = gp.observation_noise_variance.detach()
    var = (gp.amplitude.square() + noise).detach().expand(9, 1)
    torch.testing.assert_close(out.variance, var)
    torch.testing.assert_close(pl.collect_losses(gp), torch.zeros((), dtype=torch.float64), atol=1e-6, rtol=0)
    gp.joint = True
    cov = (gp.kernel(x, x) + (noise + gp.jitter) * torch.eye(9, dtype=torch.float64)).detach()
    torch.testing.assert_close(gp(x).covariance_matrix, cov)
    del prior


def test_predictive_is_tfps_formula_with_the_jitter_in_the_solves_only():
    """TFP's VariationalGaussianProcess: cov = K_xx - W^T (K_ZZ - S S^T) W with W = (K_ZZ +
    jitter I)^-1 K_Zx (its K_ZZ between the solves has no jitter); a large jitter shows it."""
    torch.manual_seed(0)
    gp = pl.VariationalGaussianProcess(2, 5, mean_fn="constant", jitter=1e-2, dtype=torch.float64)
    _randomize(gp)
    x = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        z, S = gp.inducing_points, gp.variational_scale_tril
        kzz = gp.kernel(z, z)
        W = torch.linalg.solve(kzz + 1e-2 * torch.eye(5, dtype=torch.float64), gp.kernel(z, x))
        cov = gp.kernel(x, x) - W.mT @ (kzz - S @ S.mT) @ W  # (7, 7)
        noise = gp.observation_noise_variance
        loc = gp.mean(x) + W.mT @ (gp.variational_loc - gp.mean(z))
        out = gp(x)
        torch.testing.assert_close(out.mean[:, 0], loc)
        torch.testing.assert_close(out.variance[:, 0], cov.diagonal() + noise)
        gp.joint = True
        eye = torch.eye(7, dtype=torch.float64)
        torch.testing.assert_close(gp(x).covariance_matrix, cov + (noise + 1e-2) * eye)


def test_inducing_points_at_the_inputs_predict_q():
    """Z = x: the latent predictive is q(u) itself: mean m, covariance S S^T (plus the noise)."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, dtype=torch.float64)
    gp = pl.VariationalGaussianProcess(2, 4, inducing_points=x, joint=True, jitter=0.0, dtype=torch.float64)
    _randomize(gp)
    with torch.no_grad():
        gp.inducing_points.copy_(x)
    out = gp(x)
    q = gp.variational_distribution()
    torch.testing.assert_close(out.mean, q.mean)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(
        out.covariance_matrix, q.covariance_matrix + gp.observation_noise_variance * eye
    )


def test_gradients_reach_every_parameter_and_callable_mean():
    torch.manual_seed(0)
    gp = pl.VariationalGaussianProcess(2, 4, mean_fn=nn.Sequential(nn.Linear(2, 1), nn.Flatten(0)))
    out = gp(torch.randn(6, 2))
    (-out.log_prob(torch.randn(6, 1)).mean() + pl.collect_losses(gp)).backward()
    names = [n for n, p in gp.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not names
    assert {n.split(".")[0] for n, _ in gp.named_parameters()} >= {"mean_fn", "inducing_points"}


def test_fit_a_sine():
    torch.manual_seed(0)
    x = torch.linspace(-3, 3, 20)[:, None]
    y = torch.sin(x)
    gp = pl.VariationalGaussianProcess(
        1, 8, inducing_points=torch.linspace(-3, 3, 8)[:, None], kl_weight=1 / 20
    )
    opt = torch.optim.Adam(gp.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        (-gp(x).log_prob(y).mean() + pl.collect_losses(gp, clear=True)).backward()
        opt.step()
    grid = torch.linspace(-2.8, 2.8, 57)[:, None]
    with torch.no_grad():
        mean = gp(grid).mean
        assert (mean - torch.sin(grid)).abs().max() < 0.1
        assert gp(torch.tensor([[9.0]])).stddev > 3 * gp(torch.tensor([[0.0]])).stddev  # far: the prior


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        ({"input_dim": 0}, ValueError, "input_dim"),
        ({"num_inducing_points": 2.0}, TypeError, "num_inducing_points"),
        ({"inducing_points": torch.zeros(3, 2)}, ValueError, "inducing_points"),
        ({"mean_fn": "linear"}, ValueError, "mean_fn"),
        ({"mean_fn": 3}, TypeError, "mean_fn"),
        ({"amplitude": 0.0}, ValueError, "amplitude"),
        ({"length_scale": -1}, ValueError, "length_scale"),
        ({"observation_noise_variance": 0}, ValueError, "observation_noise_variance"),
        ({"variational_scale": "1"}, ValueError, "variational_scale"),
        ({"jitter": -1e-6}, ValueError, "jitter"),
        ({"kl_weight": -1.0}, ValueError, "kl_weight"),
        ({"convert_to_tensor_fn": 3}, TypeError, "convert_to_tensor_fn"),
        ({"convert_to_tensor_fn": "samples"}, ValueError, "convert_to_tensor_fn"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, argument):
    args = {"input_dim": 2, "num_inducing_points": 4, **kwargs}
    with pytest.raises(error, match=argument):
        pl.VariationalGaussianProcess(**args)


@pytest.mark.parametrize("joint", [False, True])
def test_a_mean_fn_of_the_wrong_shape_is_named(joint):
    """``nn.Linear(d, 1)`` gives ``(N, 1)``, which would broadcast against the ``(M,)`` inducing
    values into ``(N, M)``: refused in one line, with the shape expected."""
    gp = pl.VariationalGaussianProcess(2, 4, mean_fn=nn.Linear(2, 1), joint=joint)
    with pytest.raises(ValueError, match=r"^mean_fn: expected a tensor of shape \(4,\), got \(4, 1\)$"):
        gp(torch.zeros(5, 2))


@pytest.mark.parametrize(
    "joint,x", [(False, torch.zeros(4, 3)), (True, torch.zeros(2, 4, 2)), (False, torch.zeros(()))]
)
def test_bad_input_shape_is_named(joint, x):
    gp = pl.VariationalGaussianProcess(2, 4, joint=joint)
    with pytest.raises(
        ValueError, match=rf"VariationalGaussianProcess: expected input of shape.*{tuple(x.shape)}"
    ):
        gp(x)


def test_kernel_is_the_exponentiated_quadratic():
    gp = pl.VariationalGaussianProcess(3, 4, amplitude=1.5, length_scale=0.7, dtype=torch.float64)
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    expected = 1.5**2 * torch.exp(-torch.cdist(x1, x2).square() / (2 * 0.7**2))
    torch.testing.assert_close(gp.kernel(x1, x2), expected)
    torch.testing.assert_close(gp.kernel(x1, x1).diagonal(), torch.full((5,), 1.5**2, dtype=torch.float64))


def test_kernel_has_its_hessian_where_an_input_is_an_inducing_point():
    """The expanded squared distance rounds below 0 at x = z in about a quarter of the cases;
    clamping it gave a zero Hessian there instead of -amplitude^2 / length_scale^2 (gradient
    audit). Inputs equal to inducing points are common: inducing points taken from the data."""
    torch.manual_seed(0)
    gp = pl.VariationalGaussianProcess(10, 50, dtype=torch.float64)
    z = gp.inducing_points.detach()
    want = -(gp.amplitude.detach() ** 2) / gp.length_scale.detach() ** 2
    for i in range(50):
        hessian = torch.autograd.functional.hessian(
            lambda x, i=i: gp.kernel(x[None], z[i : i + 1])[0, 0], z[i]
        )
        torch.testing.assert_close(hessian.diagonal(), want.expand(10), rtol=1e-6, atol=1e-9)


def _randomized_gp(dtype=torch.float32, seed=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    gp = pl.VariationalGaussianProcess(2, 6, mean_fn="constant", dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in gp.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return gp


def test_gp_initial_variational_distribution_is_standard_normal():
    """Doc: variational_scale (default 1) is S's initial diagonal and m starts at 0, so q(u)
    starts at N(0, variational_scale^2 I). Catches the mutation (no inverse softplus: S = softplus(1) I)
    and (m initialized to ones)."""
    gp = pl.VariationalGaussianProcess(2, 5, dtype=torch.float64)
    q = gp.variational_distribution()
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(q.mean, torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(q.covariance_matrix, eye)
    half = pl.VariationalGaussianProcess(2, 5, variational_scale=0.5, dtype=torch.float64)
    torch.testing.assert_close(half.variational_scale_tril, 0.5 * eye)


def test_gp_defaults_far_from_the_data_are_the_documented_prior_noise_and_jitter():
    """x far from every inducing point and from each other (k = exp(-5000) = 0 in float64): W =
    0, so by the module doc the marginal variance is amplitude^2 + noise = 1 + 1e-2 and the
    joint covariance is (1 + 1e-2 + jitter) I with jitter = 1e-6 (TFP's default). Catches the mutation
    (jitter default 1e-3), (noise default 1e-1), (amplitude default 2)."""
    torch.manual_seed(0)
    gp = pl.VariationalGaussianProcess(1, 4, dtype=torch.float64)
    x = torch.tensor([[100.0], [200.0], [300.0]], dtype=torch.float64)
    out = gp(x)
    torch.testing.assert_close(out.mean, torch.zeros(3, 1, dtype=torch.float64))
    torch.testing.assert_close(
        out.variance, torch.full((3, 1), 1.01, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )
    gp.joint = True
    cov = gp(x).covariance_matrix.detach()
    torch.testing.assert_close(cov, (1.01 + 1e-6) * torch.eye(3, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_gp_copies_the_initial_inducing_points():
    """The layer's inducing points are its own parameter: training them must not change the
    caller's tensor. Catches the mutation (.clone() dropped: the parameter aliases the caller's tensor)."""
    z = torch.linspace(-1, 1, 4)[:, None]
    before = z.clone()
    gp = pl.VariationalGaussianProcess(1, 4, inducing_points=z)
    with torch.no_grad():
        gp.inducing_points.add_(1.0)
    torch.testing.assert_close(z, before)


def test_gp_computes_in_the_parameters_dtype_whatever_the_inputs():
    """Doc/code comment: the Cholesky maths run in the parameters' dtype; float32 inputs to a
    float64 layer give the float64 predictive (that of the same inputs in float64). Catches the mutation
    (the input cast dropped: a dtype mismatch in the kernel's matmul)."""
    gp = _randomized_gp(torch.float64)
    x = torch.randn(5, 2)
    out = gp(x)
    assert out.mean.dtype == torch.float64
    torch.testing.assert_close(out.mean, gp(x.double()).mean)


def test_gp_under_bf16_autocast_is_its_fp32_predictive():
    """The layer disables autocast for its kernel/Cholesky maths (the predictive and the KL in the
    parameters' dtype); under CPU bf16 autocast it equals its fp32 output to fp32 rounding.
    Catches the mutation (autocast left on: the kernel matmuls run in bf16, ~1e-2 relative errors)."""
    gp = _randomized_gp(torch.float32)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    ref = gp(x)
    ref_kl = pl.collect_losses(gp, clear=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gp(x)
        got_kl = pl.collect_losses(gp, clear=True)
    torch.testing.assert_close(got.mean, ref.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.stddev, ref.stddev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_kl, ref_kl, rtol=1e-5, atol=1e-5)


def test_gp_records_no_kl_inside_added_losses_skipped():
    """losses.added_losses_skipped: layers neither compute nor record added losses. Catches the mutation
    (the added_losses_enabled() check removed in the GP's forward)."""
    gp = _randomized_gp()
    with added_losses_skipped():
        gp(torch.randn(3, 2))
    assert float(pl.collect_losses(gp)) == 0.0
