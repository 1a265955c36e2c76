"""Distribution layers, one module per family."""

# Conv2dReparameterization/Conv2dFlipout lived in layers.reparameterization in problayers 0.1:
# the old path still names them (for imports, and models pickled whole), without an import back.
from . import convolutional as _convolutional
from . import reparameterization as _reparameterization
from .base import DistributionLambda
from .categorical import CategoricalMixtureOfOneHotCategorical, OneHotCategorical
from .convolutional import (
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
)
from .defaults import default_loc_scale_fn, default_mean_field_normal_fn, default_multivariate_normal_fn
from .flows import AutoregressiveNetwork, AutoregressiveTransform, MaskedAutoregressiveTransform
from .gaussian_process import VariationalGaussianProcess
from .independent import (
    IndependentBernoulli,
    IndependentLogistic,
    IndependentNormal,
    IndependentPoisson,
    LogRatePoisson,
)
from .logistic import Logistic
from .mixture import MixtureLogistic, MixtureNormal, MixtureSameFamily
from .multivariate import MultivariateNormalTriL
from .reparameterization import (
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
from .weight_norm import WeightNorm

_reparameterization.Conv2dFlipout = _convolutional.Conv2dFlipout  # type: ignore[attr-defined]
_reparameterization.Conv2dReparameterization = _convolutional.Conv2dReparameterization  # type: ignore[attr-defined]
del _convolutional, _reparameterization

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
    "IndependentBernoulli",
    "IndependentLogistic",
    "IndependentNormal",
    "IndependentPoisson",
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
    "default_loc_scale_fn",
    "default_mean_field_normal_fn",
    "default_multivariate_normal_fn",
    "posterior_mean_field",
    "prior_standard_normal",
    "prior_trainable",
]
