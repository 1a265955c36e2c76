"""TFP's dense_variational_v2_test.py and masked_autoregressive_test.py, translated (issue 16).

See tests/tfp_cases.py for how TFP's Keras mechanics are translated.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from tfp_cases import (
    adam_steps,
    uniform,
)

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
