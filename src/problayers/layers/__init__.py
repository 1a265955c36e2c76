"""Distribution layers, one module per family."""

from .base import DistributionLambda
from .categorical import CategoricalMixtureOfOneHotCategorical, OneHotCategorical
from .flows import AutoregressiveNetwork, AutoregressiveTransform, MaskedAutoregressiveTransform
from .independent import (
    IndependentBernoulli,
    IndependentLogistic,
    IndependentNormal,
    IndependentPoisson,
    Logistic,
)
from .mixture import MixtureLogistic, MixtureNormal, MixtureSameFamily
from .multivariate import MultivariateNormalTriL
from .reparameterization import (
    Conv2dFlipout,
    Conv2dReparameterization,
    DenseFlipout,
    DenseLocalReparameterization,
    DenseReparameterization,
)
from .variable import VariableLayer
from .variational import (
    DenseVariational,
    MeanFieldNormal,
    StandardNormal,
    posterior_mean_field,
    prior_standard_normal,
    prior_trainable,
)

__all__ = [
    "AutoregressiveNetwork",
    "AutoregressiveTransform",
    "CategoricalMixtureOfOneHotCategorical",
    "Conv2dFlipout",
    "Conv2dReparameterization",
    "DenseFlipout",
    "DenseLocalReparameterization",
    "DenseReparameterization",
    "DenseVariational",
    "DistributionLambda",
    "IndependentBernoulli",
    "IndependentLogistic",
    "IndependentNormal",
    "IndependentPoisson",
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
    "posterior_mean_field",
    "prior_standard_normal",
    "prior_trainable",
]
