"""The KL pairs problayers registers with torch.distributions."""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributions as D

import problayers as pl


@pytest.mark.parametrize(("q_batch", "p_batch"), [((4,), ()), ((), (4,)), ((2, 1), (3,))])
def test_mvn_vs_diagonal_normal_matches_mvn_formula(q_batch, p_batch):
    torch.manual_seed(0)
    q = pl.MultivariateNormalTriL.new(torch.randn(*q_batch, pl.MultivariateNormalTriL.params_size(5)), 5)
    loc, scale = torch.randn(*p_batch, 5), torch.rand(*p_batch, 5) + 0.5
    p_diag = D.Independent(D.Normal(loc, scale), 1)
    p_mvn = D.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
    torch.testing.assert_close(D.kl_divergence(q, p_diag), D.kl_divergence(q, p_mvn))
    torch.testing.assert_close(D.kl_divergence(p_diag, q), D.kl_divergence(p_mvn, q))


def test_mvn_vs_diagonal_normal_against_monte_carlo():
    # Seed 1, 200,000 draws: the MC mean's standard error is ~0.005 nats; tolerance 0.03.
    torch.manual_seed(1)
    q = pl.MultivariateNormalTriL.new(torch.randn(pl.MultivariateNormalTriL.params_size(3)), 3)
    p = D.Independent(D.Normal(torch.zeros(3), 1.0), 1)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean()
    assert abs(mc - D.kl_divergence(q, p)) < 0.03


def test_other_independent_is_not_implemented():
    q = D.MultivariateNormal(torch.zeros(3), torch.eye(3))
    with pytest.raises(NotImplementedError):
        D.kl_divergence(q, D.Independent(D.Laplace(torch.zeros(3), 1.0), 1))


class _Custom(D.Normal):
    """A class of the test's own, so that the pair registered below touches nothing else."""


def test_exact_kl_names_the_option_only_where_torch_has_no_formula():
    q, p = D.Normal(torch.zeros(2), 1.0), D.Cauchy(torch.zeros(2), 1.0)
    with pytest.raises(
        NotImplementedError, match=r"^use_exact_kl=True: .* no KL formula for Normal \|\| Cauchy"
    ):
        pl.kl.exact_kl(q, p, "use_exact_kl")

    @D.kl.register_kl(_Custom, D.Cauchy)
    def _fails_inside(q, p):
        raise NotImplementedError("no kernel for this dtype")

    # problayers' Independent || MultivariateNormal formula is for a diagonal Normal only
    logistic = D.Independent(pl.Logistic(torch.zeros(2), torch.ones(2)), 1)
    mvn = D.MultivariateNormal(torch.zeros(2), scale_tril=torch.eye(2))
    for a, b, pair in (
        (logistic, mvn, "Independent(Logistic) || MultivariateNormal"),
        (mvn, logistic, "MultivariateNormal || Independent(Logistic)"),
    ):
        with pytest.raises(
            NotImplementedError, match=rf"^kl_use_exact=True: .* no KL formula for {re.escape(pair)};"
        ):
            pl.kl.exact_kl(a, b, "kl_use_exact")

    try:  # a formula that exists and fails gives its own error, not "no formula"
        with pytest.raises(NotImplementedError, match=r"^no kernel for this dtype$"):
            pl.kl.exact_kl(_Custom(torch.zeros(2), 1.0), p, "use_exact_kl")
    finally:
        del D.kl._KL_REGISTRY[_Custom, D.Cauchy]
        D.kl._KL_MEMOIZE.clear()


@pytest.mark.parametrize("reverse", [False, True])
def test_mvn_vs_independent_over_two_dims_is_refused(reverse):
    # The registered MVN <-> Independent(Normal) formulas hold for one reinterpreted dim only; an
    # Independent over (2, 3) against an MVN over 3 must be refused, not summed into a number.
    mvn = D.MultivariateNormal(torch.zeros(2, 3), scale_tril=torch.eye(3))
    ind = D.Independent(D.Normal(torch.zeros(2, 3), 1.0), 2)
    with pytest.raises(NotImplementedError):
        D.kl_divergence(*((ind, mvn) if reverse else (mvn, ind)))
