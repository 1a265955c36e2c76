"""One list of distribution-layer examples that drives the generic layer tests.

Each case says how to build the layer, how many inputs it takes per example, the event shape
of its output, and (where scipy has the distribution) a reference log-density. New layers are
covered by adding a case here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats
from torch import nn

import problayers as pl


@dataclass(frozen=True)
class LayerCase:
    name: str
    make_layer: Callable[[], nn.Module]
    params_size: int
    event_shape: tuple[int, ...]
    new: Callable  # (params) -> Distribution, the layer's pure static constructor
    has_rsample: bool = True
    #: (params as float64 numpy (N, params_size), values (N, *event)) -> log-density (N,)
    scipy_log_prob: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    #: draws valid values for log_prob given the distribution (default: its sample)
    extra: dict = field(default_factory=dict)


def normal_2(t):
    """A module-level make_distribution_fn (so models built with it pickle)."""
    return pl.IndependentNormal.new(t, 2)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _bernoulli_ref(params, x):
    p = 1.0 / (1.0 + np.exp(-params))
    return stats.bernoulli.logpmf(x.reshape(len(x), -1), p).sum(-1)


def _normal_ref(params, x, n=6):
    loc, scale = params[:, :n], _softplus(params[:, n:])
    return stats.norm.logpdf(x.reshape(len(x), -1), loc, scale).sum(-1)


#: TFP's ``fill_triangular`` for d = 3, from its docstring: [1, 2, 3, 4, 5, 6] -> [[4, 0, 0],
#: [6, 5, 0], [3, 2, 1]], as (row, column, index into the vector). Written out here so that the
#: reference does not use the code it checks.
_TFP_TRIL_3 = [(0, 0, 3), (1, 0, 5), (1, 1, 4), (2, 0, 2), (2, 1, 1), (2, 2, 0)]


def _mvn_ref(params, x, d=3):
    out = []
    for p, v in zip(params, x, strict=True):
        tril = np.zeros((d, d))
        for row, col, i in _TFP_TRIL_3:  # FillScaleTriL: softplus + 1e-5 on the diagonal
            tril[row, col] = _softplus(p[d + i]) + 1e-5 if row == col else p[d + i]
        out.append(stats.multivariate_normal.logpdf(v, p[:d], tril @ tril.T))
    return np.array(out)


def _logistic_ref(params, x, n=6):
    loc, scale = params[:, :n], _softplus(params[:, n:])
    return stats.logistic.logpdf(x.reshape(len(x), -1), loc, scale).sum(-1)


def _poisson_ref(params, x):
    return stats.poisson.logpmf(x.reshape(len(x), -1), np.exp(params)).sum(-1)


def _one_hot_ref(params, x):
    return stats.multinomial.logpmf(x, 1, special.softmax(params, axis=-1))


def _mixture_ref(component_ref, k, p):
    """log sum_k softmax(logits)_k p_k(x), each component's log-density from scipy."""

    def ref(params, x):
        log_w = special.log_softmax(params[:, :k], axis=-1)  # (N, K)
        comp = params[:, k:].reshape(len(params), k, p)  # (N, K, p)
        comp_lp = np.stack([component_ref(comp[:, j], x) for j in range(k)], axis=-1)  # (N, K)
        return special.logsumexp(log_w + comp_lp, axis=-1)

    return ref


CASES: list[LayerCase] = [
    LayerCase(
        "IndependentBernoulli",
        lambda: pl.IndependentBernoulli((2, 3)),
        pl.IndependentBernoulli.params_size((2, 3)),
        (2, 3),
        lambda p: pl.IndependentBernoulli.new(p, (2, 3)),
        has_rsample=False,
        scipy_log_prob=_bernoulli_ref,
    ),
    LayerCase(
        "IndependentNormal",
        lambda: pl.IndependentNormal((3, 2)),
        pl.IndependentNormal.params_size((3, 2)),
        (3, 2),
        lambda p: pl.IndependentNormal.new(p, (3, 2)),
        scipy_log_prob=_normal_ref,
    ),
    LayerCase(
        "MultivariateNormalTriL",
        lambda: pl.MultivariateNormalTriL(3),
        pl.MultivariateNormalTriL.params_size(3),
        (3,),
        lambda p: pl.MultivariateNormalTriL.new(p, 3),
        scipy_log_prob=_mvn_ref,
    ),
    LayerCase(
        "DistributionLambda(Normal)",
        lambda: pl.DistributionLambda(normal_2),
        4,
        (2,),
        lambda p: pl.IndependentNormal.new(p, 2),
        scipy_log_prob=lambda p, x: _normal_ref(p, x, n=2),
    ),
    LayerCase(
        "IndependentLogistic",
        lambda: pl.IndependentLogistic((3, 2)),
        pl.IndependentLogistic.params_size((3, 2)),
        (3, 2),
        lambda p: pl.IndependentLogistic.new(p, (3, 2)),
        scipy_log_prob=_logistic_ref,
    ),
    LayerCase(
        "IndependentPoisson",
        lambda: pl.IndependentPoisson((2, 3)),
        pl.IndependentPoisson.params_size((2, 3)),
        (2, 3),
        lambda p: pl.IndependentPoisson.new(p, (2, 3)),
        has_rsample=False,
        scipy_log_prob=_poisson_ref,
    ),
    LayerCase(
        "OneHotCategorical",
        lambda: pl.OneHotCategorical(4),
        pl.OneHotCategorical.params_size(4),
        (4,),
        lambda p: pl.OneHotCategorical.new(p, 4),
        has_rsample=False,
        scipy_log_prob=_one_hot_ref,
    ),
    LayerCase(
        "CategoricalMixtureOfOneHotCategorical",
        lambda: pl.CategoricalMixtureOfOneHotCategorical(4, 3),
        pl.CategoricalMixtureOfOneHotCategorical.params_size(4, 3),
        (4,),
        lambda p: pl.CategoricalMixtureOfOneHotCategorical.new(p, 4, 3),
        has_rsample=False,
        scipy_log_prob=_mixture_ref(_one_hot_ref, 3, 4),
    ),
    LayerCase(
        "MixtureSameFamily(IndependentNormal)",
        lambda: pl.MixtureSameFamily(3, pl.IndependentNormal(2)),
        pl.MixtureSameFamily.params_size(3, pl.IndependentNormal.params_size(2)),
        (2,),
        lambda p: pl.MixtureSameFamily.new(p, 3, pl.IndependentNormal(2)),
        has_rsample=False,
        scipy_log_prob=_mixture_ref(lambda p, x: _normal_ref(p, x, n=2), 3, 4),
    ),
    LayerCase(
        "MixtureNormal",
        lambda: pl.MixtureNormal(3, (2, 2)),
        pl.MixtureNormal.params_size(3, (2, 2)),
        (2, 2),
        lambda p: pl.MixtureNormal.new(p, 3, (2, 2)),
        has_rsample=False,
        scipy_log_prob=_mixture_ref(lambda p, x: _normal_ref(p, x, n=4), 3, 8),
    ),
    LayerCase(
        "MixtureLogistic",
        lambda: pl.MixtureLogistic(2, 3),
        pl.MixtureLogistic.params_size(2, 3),
        (3,),
        lambda p: pl.MixtureLogistic.new(p, 2, 3),
        has_rsample=False,
        scipy_log_prob=_mixture_ref(lambda p, x: _logistic_ref(p, x, n=3), 2, 6),
    ),
]


# ---------------------------------------------------------------------------------------------
# Models around every layer of the catalog, for the PyTorch-tool tests (compile, autocast,
# deepcopy, pickle): input -> output (a distribution or a tensor), and a scalar loss of it that
# reaches every parameter (added losses included).
@dataclass(frozen=True)
class ModelCase:
    name: str
    make_model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # per example
    #: the output is a distribution (loss: -log_prob at fixed values + its tensor value's sum)
    distribution: bool = True


def _head(case: LayerCase) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(nn.Linear(5, case.params_size), case.make_layer())


def _std_normal(d: int):
    import torch
    import torch.distributions as D

    # Without torch's argument checks, as a prior must be for a CUDA-graph step (each check
    # reads a value back on the host: tests/host_sync.py).
    # On the CPU (not the default device): a constant, also for a model built on the meta device.
    normal = D.Normal(torch.zeros(d, device="cpu"), torch.ones(d, device="cpu"), validate_args=False)
    return D.Independent(normal, 1, validate_args=False)


def _model_cases() -> list[ModelCase]:
    cases = [ModelCase(c.name, _head(c), (5,)) for c in CASES]
    mvn = pl.MultivariateNormalTriL
    cases += [
        ModelCase(
            "MultivariateNormalTriL+KLDivergenceRegularizer",
            lambda: nn.Sequential(
                nn.Linear(5, mvn.params_size(3)),
                mvn(3, activity_regularizer=pl.KLDivergenceRegularizer(_std_normal(3), weight=0.5)),
            ),
            (5,),
        ),
        ModelCase(
            "MultivariateNormalTriL+KLDivergenceRegularizer(exact)",
            lambda: nn.Sequential(
                nn.Linear(5, mvn.params_size(3)),
                mvn(3, activity_regularizer=pl.KLDivergenceRegularizer(_std_normal(3), use_exact_kl=True)),
            ),
            (5,),
        ),
        ModelCase(
            "IndependentNormal+KLDivergenceRegularizer(exact)",
            lambda: nn.Sequential(
                nn.Linear(5, pl.IndependentNormal.params_size(3)),
                pl.IndependentNormal(
                    3, activity_regularizer=pl.KLDivergenceRegularizer(_std_normal(3), use_exact_kl=True)
                ),
            ),
            (5,),
        ),
        ModelCase(
            "KLDivergenceAddLoss",
            lambda: nn.Sequential(
                nn.Linear(5, pl.IndependentNormal.params_size(3)),
                pl.IndependentNormal(3),
                pl.KLDivergenceAddLoss(_std_normal(3)),
            ),
            (5,),
        ),
        ModelCase(
            "AutoregressiveTransform",
            lambda: nn.Sequential(
                nn.Linear(5, pl.IndependentNormal.params_size(3)),
                pl.IndependentNormal(3),
                pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3, hidden_units=(8,))),
            ),
            (5,),
        ),
        ModelCase(
            "AutoregressiveTransform-inverse",  # the IAF of the zoo's posteriors
            lambda: nn.Sequential(
                nn.Linear(5, pl.IndependentNormal.params_size(3)),
                pl.IndependentNormal(3),
                pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3, hidden_units=(8,)), inverse=True),
            ),
            (5,),
        ),
        ModelCase(
            "VariableLayer",
            lambda: pl.VariableLayer(4, initializer="normal", make_distribution_fn=normal_2),
            (5,),
        ),
        ModelCase("DenseVariational", lambda: pl.DenseVariational(5, 3), (5,), distribution=False),
        ModelCase("DenseReparameterization", lambda: pl.DenseReparameterization(5, 3), (5,), False),
        ModelCase("DenseLocalReparameterization", lambda: pl.DenseLocalReparameterization(5, 3), (5,), False),
        ModelCase("DenseFlipout", lambda: pl.DenseFlipout(5, 3), (5,), distribution=False),
        ModelCase("Conv2dReparameterization", lambda: pl.Conv2dReparameterization(2, 3, 3), (2, 5, 5), False),
        ModelCase("Conv2dFlipout", lambda: pl.Conv2dFlipout(2, 3, 3, padding=1), (2, 5, 5), False),
        ModelCase(
            "AutoregressiveNetwork", lambda: pl.AutoregressiveNetwork(2, 5, hidden_units=(8,)), (5,), False
        ),
        ModelCase("WeightNorm(Linear)", lambda: pl.WeightNorm(nn.Linear(5, 3)), (5,), distribution=False),
        ModelCase("WeightNorm(Conv2d)", lambda: pl.WeightNorm(nn.Conv2d(2, 3, 3)), (2, 5, 5), False),
        ModelCase(
            "WeightNorm(ConvTranspose1d, no data init)",
            lambda: pl.WeightNorm(nn.ConvTranspose1d(2, 3, 3, stride=2, bias=False), data_init=False),
            (2, 4),
            False,
        ),
        ModelCase("Conv1dReparameterization", lambda: pl.Conv1dReparameterization(2, 3, 3), (2, 6), False),
        ModelCase("Conv1dFlipout", lambda: pl.Conv1dFlipout(2, 3, 3, padding=1), (2, 6), False),
        ModelCase(
            "Conv3dReparameterization", lambda: pl.Conv3dReparameterization(2, 3, 2), (2, 3, 3, 3), False
        ),
        ModelCase("Conv3dFlipout", lambda: pl.Conv3dFlipout(2, 3, 3, padding="same"), (2, 3, 3, 3), False),
        ModelCase(
            "Conv2dFlipout(reflect)",
            lambda: pl.Conv2dFlipout(2, 3, 3, padding=1, padding_mode="reflect"),
            (2, 4, 4),
            False,
        ),
        ModelCase(
            "ConvTranspose1dReparameterization",
            lambda: pl.ConvTranspose1dReparameterization(2, 3, 3, stride=2),
            (2, 4),
            False,
        ),
        ModelCase(
            "ConvTranspose2dReparameterization",
            lambda: pl.ConvTranspose2dReparameterization(2, 3, 3, stride=2, output_padding=1),
            (2, 3, 3),
            False,
        ),
        ModelCase(
            "ConvTranspose3dReparameterization",
            lambda: pl.ConvTranspose3dReparameterization(2, 3, 2),
            (2, 2, 2, 2),
            False,
        ),
        ModelCase(
            "ConvTranspose1dFlipout", lambda: pl.ConvTranspose1dFlipout(2, 3, 3, padding=1), (2, 4), False
        ),
        ModelCase(
            "ConvTranspose2dFlipout",
            lambda: pl.ConvTranspose2dFlipout(2, 4, 3, stride=2, groups=2),
            (2, 3, 3),
            False,
        ),
        ModelCase("ConvTranspose3dFlipout", lambda: pl.ConvTranspose3dFlipout(2, 3, 2), (2, 2, 2, 2), False),
        ModelCase(
            "to_bayesian(Linear, flipout, prior=0.5)",
            lambda: pl.to_bayesian(
                nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), estimator="flipout", prior=0.5
            ),
            (5,),
            False,
        ),
        ModelCase(
            "to_bayesian(Conv1d, ConvTranspose1d)",
            lambda: pl.to_bayesian(nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.ConvTranspose1d(3, 2, 3))),
            (2, 6),
            False,
        ),
        ModelCase(
            "Conv1dFlipout(default_mean_field_normal_fn)",
            lambda: pl.Conv1dFlipout(2, 3, 3, kernel_posterior_fn=pl.default_mean_field_normal_fn()),
            (2, 6),
            False,
        ),
        ModelCase(
            "DenseReparameterization(default_mean_field_normal_fn(is_singular))",
            lambda: pl.DenseReparameterization(
                5,
                3,
                kernel_posterior_fn=pl.default_mean_field_normal_fn(is_singular=True),
                kernel_prior_fn=pl.default_multivariate_normal_fn,
            ),
            (5,),
            False,
        ),
        ModelCase(
            "VariationalGaussianProcess",
            lambda: pl.VariationalGaussianProcess(5, 4, mean_fn="constant", kl_weight=0.1),
            (5,),
        ),
        ModelCase(
            "VariationalGaussianProcess(joint)",
            lambda: nn.Sequential(nn.Flatten(0, -2), pl.VariationalGaussianProcess(5, 4, joint=True)),
            (5,),
        ),
    ]
    return cases


MODEL_CASES: list[ModelCase] = _model_cases()
