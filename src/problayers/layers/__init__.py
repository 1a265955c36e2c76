"""Distribution layers, one module per family."""

from .base import DistributionLambda
from .independent import IndependentBernoulli, IndependentNormal
from .multivariate import MultivariateNormalTriL

__all__ = ["DistributionLambda", "IndependentBernoulli", "IndependentNormal", "MultivariateNormalTriL"]
