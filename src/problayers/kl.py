"""KL divergences that ``torch.distributions`` lacks, registered with ``register_kl``.

Registered when ``problayers`` is imported (as ``torch.distributions`` registers its own):

* ``MultivariateNormal`` vs ``Independent(Normal, 1)`` and the reverse: the diagonal Gaussian
  is viewed as a ``MultivariateNormal`` with ``scale_tril = diag(scale)`` and torch's
  MVN-MVN formula is used. This is the seed VAE's exact KL (full-covariance posterior, standard
  normal prior).
"""

from __future__ import annotations

import torch
import torch.distributions as D
from torch.distributions.kl import register_kl

__all__ = ["diagonal_normal_as_mvn"]


def diagonal_normal_as_mvn(dist: D.Independent) -> D.MultivariateNormal:
    """View ``Independent(Normal(loc, scale), 1)`` (batch B, event (d,)) as the equal
    ``MultivariateNormal`` (batch B, event (d,)). Other ``Independent`` distributions raise
    ``NotImplementedError``."""
    base = dist.base_dist
    if not (isinstance(base, D.Normal) and dist.reinterpreted_batch_ndims == 1):
        raise NotImplementedError(
            f"no KL formula between MultivariateNormal and Independent({type(base).__name__}, "
            f"reinterpreted_batch_ndims={dist.reinterpreted_batch_ndims}); only Independent(Normal, 1)"
        )
    loc, scale = base.loc, base.scale  # (*B, d)
    return D.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale), validate_args=False)


@register_kl(D.MultivariateNormal, D.Independent)
def _kl_mvn_independent(p: D.MultivariateNormal, q: D.Independent) -> torch.Tensor:
    return D.kl_divergence(p, diagonal_normal_as_mvn(q))


@register_kl(D.Independent, D.MultivariateNormal)
def _kl_independent_mvn(p: D.Independent, q: D.MultivariateNormal) -> torch.Tensor:
    return D.kl_divergence(diagonal_normal_as_mvn(p), q)
