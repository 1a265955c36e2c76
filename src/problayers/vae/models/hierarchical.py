"""A VAE with two levels of latents (``problayers train --model hvae``), in the toolkit's one
interface: the posterior, the prior and the decoder each see the concatenated ``z = (z2, z1)``.

Generative model (top-down)::

    z2 ~ p(z2)                 (the zoo's prior: N(0, I), a mixture, or the VampPrior over q(z2|u))
    z1 ~ p(z1 | z2)            IndependentNormal of an MLP of z2
    x  ~ p(x | z1, z2)         IndependentBernoulli of an MLP of (z1, z2)

Posterior (the same order, as in Tomczak & Welling's HVAE and the ladder VAE's top-down
inference)::

    z2 ~ q(z2 | x)             IndependentNormal of an MLP of x
    z1 ~ q(z1 | x, z2)         IndependentNormal of an MLP of (h(x), z2)

Both chains are :class:`Chain` distributions (batch ``(B,)``, event ``(2 * latent_size,)``), so
the ELBO, IWAE and evaluation code is the same as for one level; the KL is its Monte Carlo
estimate (no formula for a chain).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.distributions as D
from torch import nn

from ...layers import DistributionLambda, IndependentBernoulli, IndependentNormal
from .mlp import IMAGE_SHAPE, PIXELS, mlp
from .priors import PRIORS
from .registry import ModelConfig, make_objective, register_model
from .vae import VAE

__all__ = ["Chain", "hierarchical_vae"]


_Shape = torch.Size | list[int] | tuple[int, ...]


class Chain(D.Distribution):
    """``z = cat(a, b)`` with ``a ~ first`` and ``b ~ conditional(a)``.

    Args:
        first: batch ``B``, event ``(Da,)``.
        conditional: ``a (*S, *B, Da) -> Distribution`` with batch ``(*S, *B)`` and event
            ``(Db,)``.
        size_b: ``Db``.

    ``batch_shape`` B, ``event_shape`` ``(Da + Db,)``; ``log_prob(z) = first.log_prob(a) +
    conditional(a).log_prob(b)``; ``rsample`` is reparameterized when both parts are.
    """

    arg_constraints: ClassVar[dict] = {}
    support = D.constraints.independent(D.constraints.real, 1)

    def __init__(
        self, first: D.Distribution, conditional: Callable[[torch.Tensor], D.Distribution], size_b: int
    ) -> None:
        self.first, self.conditional = first, conditional
        self.size_a, self.size_b = first.event_shape[0], size_b
        self.has_rsample = first.has_rsample
        super().__init__(first.batch_shape, torch.Size([self.size_a + size_b]), validate_args=False)

    def rsample(self, sample_shape: _Shape = ()) -> torch.Tensor:
        a = self.first.rsample(sample_shape)  # (*S, *B, Da)
        return torch.cat([a, self.conditional(a).rsample()], -1)  # (*S, *B, Da + Db)

    def sample(self, sample_shape: _Shape = ()) -> torch.Tensor:
        with torch.no_grad():
            a = self.first.sample(sample_shape)
            return torch.cat([a, self.conditional(a).sample()], -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        a, b = value.split([self.size_a, self.size_b], -1)  # (*S, *B, Da), (*S, *B, Db)
        return self.first.log_prob(a) + self.conditional(a).log_prob(b)  # (*S, *B)


def _identity(dist: D.Distribution) -> D.Distribution:
    return dist


def _joined(features: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``cat(features broadcast to a's leading dims, a)``: ``(B, H), (*S, B, Da) -> (*S, B, H + Da)``."""
    return torch.cat([features.expand(*a.shape[:-1], features.shape[-1]), a], -1)


class _Conditional:
    """``a -> net(a).distribution``, or ``net(cat(features, a))``'s where ``features`` is given:
    a :class:`Chain`'s conditional as an object, so that the chain pickles (a lambda does not)."""

    def __init__(self, net: nn.Module, features: torch.Tensor | None = None) -> None:
        self.net, self.features = net, features

    def __deepcopy__(self, memo: dict) -> _Conditional:
        # A deep copy of the chain is detached (design.md): the features without their graph,
        # the network copied (the copied model's own where the model is copied in the same call)
        features = None if self.features is None else self.features.detach().clone()
        return _Conditional(copy.deepcopy(self.net, memo), features)

    def __call__(self, a: torch.Tensor) -> D.Distribution:
        inputs = a if self.features is None else _joined(self.features, a)  # (*S, B, [H +] Da)
        return self.net(inputs).distribution


class TwoLevelPosterior(nn.Module):
    """``x (B, 1, 28, 28) -> q(z2, z1 | x)``, a :class:`Chain` (batch ``(B,)``, event ``(2D,)``)."""

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), *mlp([PIXELS, hidden, hidden]))  # (B, h)
        self.top = nn.Sequential(nn.Linear(hidden, 2 * latent), IndependentNormal(latent))
        self.bottom = nn.Sequential(
            *mlp([hidden + latent, hidden]), nn.Linear(hidden, 2 * latent), IndependentNormal(latent)
        )
        self.latent = latent
        self.out = DistributionLambda(_identity)  # makes the chain tensor-coercible

    def top_posterior(self, x: torch.Tensor) -> D.Distribution:
        """q(z2 | x): batch ``(B,)``, event ``(D,)`` (what a VampPrior mixes)."""
        return self.top(self.features(x))

    def forward(self, x: torch.Tensor) -> D.Distribution:
        h = self.features(x)  # (B, h)
        q2 = self.top(h)
        chain = Chain(q2.distribution, _Conditional(self.bottom, h), self.latent)
        return self.out(chain)


class TwoLevelPrior(nn.Module):
    """``() -> p(z2, z1) = p(z2) p(z1 | z2)``, a :class:`Chain` (batch ``()``, event ``(2D,)``)."""

    def __init__(self, top: nn.Module, latent: int, hidden: int) -> None:
        super().__init__()
        self.top = top  # the zoo prior over z2
        self.bottom = nn.Sequential(
            *mlp([latent, hidden, hidden]), nn.Linear(hidden, 2 * latent), IndependentNormal(latent)
        )
        self.latent = latent

    def forward(self) -> D.Distribution:
        return Chain(self.top(), _Conditional(self.bottom), self.latent)


class _TopPosterior(nn.Module):
    """``u -> q(z2 | u)`` of a :class:`TwoLevelPosterior`, for the VampPrior (not registered
    there: the posterior's parameters are the model's)."""

    _posterior: TwoLevelPosterior

    def __init__(self, posterior: TwoLevelPosterior) -> None:
        super().__init__()
        object.__setattr__(self, "_posterior", posterior)

    def forward(self, u: torch.Tensor) -> D.Distribution:
        return self._posterior.top_posterior(u)


@register_model("hvae", fields={"hidden_size", "prior", "prior_components"}, latent_size=40, exact_kl=True)
def hierarchical_vae(cfg: ModelConfig) -> VAE:
    """Two levels of ``cfg.latent_size`` latents each (see the module docstring), MLPs of
    ``cfg.hidden_size`` units; ``cfg.prior`` is the prior over the top level."""
    d, h = cfg.latent_size, cfg.hidden_size
    encoder = TwoLevelPosterior(d, h)
    top = PRIORS[cfg.prior](d, cfg.prior_components, _TopPosterior(encoder), IMAGE_SHAPE)
    decoder = nn.Sequential(
        *mlp([2 * d, h, h, PIXELS], activate_last=False),  # (N, 784) logits of p(x | z1, z2)
        IndependentBernoulli(IMAGE_SHAPE),  # batch (N,), event (1, 28, 28)
    )
    return VAE(encoder, decoder, prior=TwoLevelPrior(top, d, h), objective=make_objective(cfg))
