"""Collecting the losses layers add during a forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl


def model(weight=1.0, deterministic=False):
    """Two KL-regularized layers; ``deterministic``: exact KL and mean values (no sampling)."""
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    reg = pl.KLDivergenceRegularizer(prior, weight=weight, use_exact_kl=True)
    return nn.Sequential(
        nn.Linear(4, pl.MultivariateNormalTriL.params_size(2)),
        pl.MultivariateNormalTriL(
            2, activity_regularizer=reg, convert_to_tensor_fn="mean" if deterministic else "rsample"
        ),
        nn.Linear(2, pl.IndependentNormal.params_size(2)),
        pl.IndependentNormal(
            2,
            activity_regularizer=pl.KLDivergenceRegularizer(prior, weight=weight, use_exact_kl=deterministic),
        ),
    )


def test_sums_every_submodule_and_means_over_batch():
    torch.manual_seed(0)
    m = model()
    x = torch.randn(6, 4)
    out = m(x)
    q1 = m[1](m[0](x))
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    z2 = out.tensor()
    expected_2 = (out.log_prob(z2) - prior.log_prob(z2)).mean()
    torch.testing.assert_close(pl.collect_losses(m), D.kl_divergence(q1, prior).mean() + expected_2)


def test_weight_scales_collected_loss_exactly():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    m1, m3 = model(1.0), model(3.0)
    m3.load_state_dict(m1.state_dict())
    torch.manual_seed(1)
    m1(x)
    torch.manual_seed(1)
    m3(x)
    torch.testing.assert_close(pl.collect_losses(m3), 3.0 * pl.collect_losses(m1), rtol=1e-6, atol=0)


def test_repeated_forwards_do_not_double_count():
    torch.manual_seed(0)
    m = model(deterministic=True)
    x = torch.randn(6, 4)
    m(x)
    first = pl.collect_losses(m)
    m(x)
    m(x)
    assert torch.equal(pl.collect_losses(m), first)  # replaced, not accumulated
    assert len(m[1].__dict__["_problayers_added_losses"].terms) == 1


def test_no_grad_and_clear():
    m = model()
    with torch.no_grad():
        m(torch.randn(3, 4))
        loss = pl.collect_losses(m, clear=True)
    assert not loss.requires_grad and loss > 0
    assert pl.collect_losses(m) == 0  # cleared: no graph or value kept
    m(torch.randn(3, 4))
    pl.clear_losses(m)
    assert pl.collect_losses(m) == 0


def test_no_losses_gives_zero_and_backward_works():
    assert pl.collect_losses(nn.Linear(2, 2)) == 0
    m = model()
    out = m(torch.randn(3, 4))
    (-out.log_prob(torch.zeros(3, 2)).mean() + pl.collect_losses(m, clear=True)).backward()
    assert m[0].weight.grad is not None


def test_no_losses_gives_a_zero_of_the_models_dtype():
    zero = pl.collect_losses(nn.Sequential(nn.Linear(2, 2), pl.IndependentNormal(1)).double())
    assert zero.dtype == torch.float64 and zero == 0
    zero = pl.collect_losses(nn.BatchNorm1d(2).double().requires_grad_(False))
    assert zero.dtype == torch.float64


def test_set_added_loss_rejects_non_scalars():
    with pytest.raises(ValueError, match="0-dim"):
        pl.set_added_loss(nn.Linear(1, 1), "x", torch.ones(3))


def test_nested_added_losses_skipped_restores_the_outer_block():
    from problayers.losses import added_losses_enabled, added_losses_skipped

    with added_losses_skipped():
        with added_losses_skipped():
            pass
        assert not added_losses_enabled()  # the outer block (an export) still skips them
    assert added_losses_enabled()


def test_collect_losses_zero_takes_a_buffer_only_models_dtype():
    model = nn.Module()
    model.register_buffer("b", torch.zeros(1, dtype=torch.float64))
    assert pl.collect_losses(model).dtype == torch.float64


def test_added_losses_skipped_is_this_threads_only():
    # One process-wide flag: a thread exporting or serving switched every other thread's KL
    # off, and two overlapping blocks could leave it off for good.
    import threading

    from problayers.losses import added_losses_enabled, added_losses_skipped

    inside, leave = threading.Event(), threading.Event()

    def other():
        with added_losses_skipped():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    try:
        assert added_losses_enabled()  # here, while the other thread is in its block
        layer = pl.IndependentNormal(2, activity_regularizer=pl.KLDivergenceRegularizer(pl.StandardNormal(2)))
        layer(torch.ones(3, 4))
        assert pl.collect_losses(layer).item() > 0
        with added_losses_skipped():  # overlapping blocks, exited in the other order
            leave.set()
            thread.join(10)
        assert added_losses_enabled()
    finally:
        leave.set()
        thread.join(10)
