"""problayers: probabilistic layers for PyTorch, and a VAE toolkit built on them.

``import problayers as pl``; a distribution layer's output is a ``torch.distributions``
distribution that also acts as a tensor (see :mod:`problayers.coercible`).
"""

from . import kl as _kl  # registers the KL pairs torch.distributions lacks
from .coercible import as_coercible, convert_to_tensor, is_coercible
from .layers import DistributionLambda, IndependentBernoulli, IndependentNormal, MultivariateNormalTriL
from .losses import clear_losses, collect_losses, set_added_loss
from .regularizers import KLDivergenceAddLoss, KLDivergenceRegularizer

del _kl

__version__ = "0.1.0"

__all__ = [
    "DistributionLambda",
    "IndependentBernoulli",
    "IndependentNormal",
    "KLDivergenceAddLoss",
    "KLDivergenceRegularizer",
    "MultivariateNormalTriL",
    "as_coercible",
    "clear_losses",
    "collect_losses",
    "convert_to_tensor",
    "is_coercible",
    "set_added_loss",
]
