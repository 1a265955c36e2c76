"""problayers: probabilistic layers for PyTorch, and a VAE toolkit built on them.

``import problayers as pl``; a distribution layer's output is a ``torch.distributions``
distribution that also acts as a tensor (see :mod:`problayers.coercible`).
"""

import typing as _typing
from typing import Any as _Any

from . import kl as _kl  # registers the KL pairs torch.distributions lacks
from .bayesian import to_bayesian
from .coercible import as_coercible, convert_to_tensor, is_coercible
from .exporting import DistributionParams, export
from .layers import (
    AutoregressiveNetwork,
    AutoregressiveTransform,
    CategoricalMixtureOfOneHotCategorical,
    Conv1dFlipout,
    Conv1dReparameterization,
    Conv2dFlipout,
    Conv2dReparameterization,
    Conv3dFlipout,
    Conv3dReparameterization,
    ConvTranspose1dFlipout,
    ConvTranspose1dReparameterization,
    ConvTranspose2dFlipout,
    ConvTranspose2dReparameterization,
    ConvTranspose3dFlipout,
    ConvTranspose3dReparameterization,
    DenseFlipout,
    DenseLocalReparameterization,
    DenseReparameterization,
    DenseVariational,
    DistributionLambda,
    IndependentBernoulli,
    IndependentLogistic,
    IndependentNormal,
    IndependentPoisson,
    Logistic,
    LogRatePoisson,
    MaskedAutoregressiveTransform,
    MeanFieldNormal,
    MixtureLogistic,
    MixtureNormal,
    MixtureSameFamily,
    MultivariateNormalTriL,
    OneHotCategorical,
    StandardNormal,
    VariableLayer,
    VariationalGaussianProcess,
    WeightNorm,
    default_loc_scale_fn,
    default_mean_field_normal_fn,
    default_multivariate_normal_fn,
    posterior_mean_field,
    prior_standard_normal,
    prior_trainable,
)
from .losses import clear_losses, collect_losses, set_added_loss
from .regularizers import KLDivergenceAddLoss, KLDivergenceRegularizer

del _kl

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveNetwork",
    "AutoregressiveTransform",
    "CategoricalMixtureOfOneHotCategorical",
    "Conv1dFlipout",
    "Conv1dReparameterization",
    "Conv2dFlipout",
    "Conv2dReparameterization",
    "Conv3dFlipout",
    "Conv3dReparameterization",
    "ConvTranspose1dFlipout",
    "ConvTranspose1dReparameterization",
    "ConvTranspose2dFlipout",
    "ConvTranspose2dReparameterization",
    "ConvTranspose3dFlipout",
    "ConvTranspose3dReparameterization",
    "DenseFlipout",
    "DenseLocalReparameterization",
    "DenseReparameterization",
    "DenseVariational",
    "DistributionLambda",
    "DistributionParams",
    "IndependentBernoulli",
    "IndependentLogistic",
    "IndependentNormal",
    "IndependentPoisson",
    "KLDivergenceAddLoss",
    "KLDivergenceRegularizer",
    "LogRatePoisson",
    "Logistic",
    "MaskedAutoregressiveTransform",
    "MeanFieldNormal",
    "MixtureLogistic",
    "MixtureNormal",
    "MixtureSameFamily",
    "MultivariateNormalTriL",
    "OneHotCategorical",
    "StandardNormal",
    "VariableLayer",
    "VariationalGaussianProcess",
    "WeightNorm",
    "as_coercible",
    "clear_losses",
    "collect_losses",
    "convert_to_tensor",
    "default_loc_scale_fn",
    "default_mean_field_normal_fn",
    "default_multivariate_normal_fn",
    "export",
    "fit",
    "is_coercible",
    "posterior_mean_field",
    "prior_standard_normal",
    "prior_trainable",
    "set_added_loss",
    "to_bayesian",
]


if _typing.TYPE_CHECKING:  # a type checker sees pl.fit's signature, and no other name than these
    from .train.trainer import fit
else:

    def __getattr__(name: str) -> _Any:
        # ``pl.fit`` is the application's trainer (problayers.train): imported on first use, so
        # that ``import problayers`` loads the library only.
        if name == "fit":
            from .train.trainer import fit

            return fit
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
