"""Priors p(z) of the model zoo, as ``nn.Module``s whose ``forward()`` returns the distribution
(batch ``()``, event ``(D,)``), so that a learnable prior's parameters are the model's.

``PRIORS`` maps ``ModelConfig.prior`` to a builder ``(latent_size, components, encoder,
input_shape) -> nn.Module``:

* ``"normal"``: N(0, I), nothing to learn;
* ``"mog"``: a learnable mixture of ``components`` diagonal Gaussians;
* ``"vamp"``: the VampPrior (Tomczak & Welling 2018), the mixture of the encoder's own
  posteriors at ``components`` learned pseudo-inputs, ``p(z) = (1/C) sum_c q(z | u_c)``.

torch has no KL formula against a mixture, so an objective's KL to ``"mog"`` or ``"vamp"`` is
its Monte Carlo estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from ...coercible import TensorCoercible
from ...layers.variational import StandardNormal
from ...losses import added_losses_skipped
from ...numerics import at_least_zero, logsumexp
from ...precision import in_fp32

__all__ = ["PRIORS", "DiagonalGaussianMixture", "MixtureOfGaussians", "StandardNormal", "VampPrior"]


class DiagonalGaussianMixture(D.MixtureSameFamily):
    """A mixture of ``C`` diagonal Gaussians (batch ``()``, event ``(D,)``): a
    ``MixtureSameFamily`` of ``Independent(Normal(loc (C, D), scale (C, D)), 1)`` whose
    ``log_prob`` gets the squared distances of ``N`` points to the ``C`` means from matrix
    products, ``(z^2) P^T - 2 z (mu P)^T + sum(mu^2 P)`` with ``P = 1 / scale^2``, instead of
    broadcasting to ``(N, C, D)``: the broadcast is ~1 s a training step on two CPU cores with
    a VampPrior's 500 components, the products a few ms, and the memory is ``(N, C)``. The
    products are taken in float64, where their terms' cancellation near a narrow component's
    mean stays far below a nat; the result has the dtype ``MixtureSameFamily`` would give.

    Sampling, the mean and the variance are ``MixtureSameFamily``'s; ``log_prob`` equals its
    ``log_prob`` up to float rounding (tests/test_zoo_maths.py).
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> None:
        comp = D.Independent(D.Normal(loc, scale, validate_args=False), 1, validate_args=False)
        super().__init__(D.Categorical(logits=logits, validate_args=False), comp, validate_args=False)
        self._loc, self._scale = loc, scale  # (C, D) each

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # At least fp32 under autocast, whatever the encoder or decoder gave: in bf16 the terms
        # (~|z|^2 / scale^2, ~1e4 for a VampPrior's narrow posteriors) cancel to errors of nats;
        # a run of `--prior vamp --objective iwae` in bf16 went to NaN so.
        return in_fp32(self._log_prob, value)

    def _log_prob(self, value: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(value.dtype, self._loc.dtype)  # as MixtureSameFamily's
        # The expanded terms are ~|z|^2 / scale^2 and cancel where z is near a mean, as a
        # posterior sample is: in fp32 that costs 0.5 nats at scale 0.01 and tens at 1e-3 (40
        # latents, |z| ~ 2). In fp64 the products stay exact to ~1e-8 nats there; this term costs
        # twice the time, a VampPrior IWAE training step ~10% (docs/zoo.md). MPS has no fp64.
        wide = dtype if value.device.type == "mps" else torch.float64
        loc, scale = self._loc.to(wide), self._scale.to(wide)  # (C, D)
        d = loc.shape[-1]
        rows = value.reshape(-1, d).to(wide)  # (N, D)
        precision = scale.pow(-2)  # (C, D)
        sq = rows.pow(2) @ precision.T - 2 * rows @ (loc * precision).T  # (N, C)
        sq = at_least_zero(sq + (loc.pow(2) * precision).sum(-1))  # (N, C): sum_d ((z - mu) / s)^2
        log_comp = -0.5 * sq - scale.log().sum(-1)  # (N, C)
        log_comp = log_comp.to(dtype) - 0.5 * d * math.log(2 * math.pi)
        log_mix = torch.log_softmax(self.mixture_distribution.logits.to(dtype), -1)  # (C,)
        out = logsumexp(log_comp + log_mix, -1)  # (N,)
        return out.reshape(value.shape[:-1])


class MixtureOfGaussians(nn.Module):
    """A learnable mixture of ``components`` diagonal Gaussians over ``(latent_size,)``: logits,
    means (initialized N(0, I)) and softplus scales (initialized 1)."""

    def __init__(self, latent_size: int, components: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))  # (C,)
        self.loc = nn.Parameter(torch.randn(components, latent_size))  # (C, D)
        self.raw_scale = nn.Parameter(torch.full((components, latent_size), 0.5413))  # softplus -> 1

    def forward(self) -> D.Distribution:
        return DiagonalGaussianMixture(self.logits, self.loc, F.softplus(self.raw_scale) + 1e-5)


class VampPrior(nn.Module):
    """``(1/C) sum_c q(z | u_c)`` over the ``C`` pseudo-inputs ``u_c`` (parameters of shape
    ``(C, *input_shape)``, kept in [0, 1] by a hard clamp as in the paper, initialized around
    0.05), with ``q`` the model's encoder (which must return a ``Distribution`` with batch
    ``(C,)`` and event ``(D,)``).

    The encoder is referenced, not registered: its parameters are the model's once, and the
    prior's own are the pseudo-inputs. Its added losses are skipped while it encodes them.
    """

    _encoder: Callable[[torch.Tensor], D.Distribution]

    def __init__(self, encoder: nn.Module, components: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules()):
            # The pseudo-inputs are a batch of their own: BatchNorm would normalize them with
            # their statistics (another q than the data's) and mix them into its running ones.
            raise ValueError(
                "prior='vamp': the encoder has BatchNorm, which would normalize the pseudo-inputs "
                "as a batch of their own; use another prior, or an encoder without BatchNorm"
            )
        object.__setattr__(self, "_encoder", encoder)  # not a submodule (see above)
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(components, *input_shape))

    def forward(self) -> D.Distribution:
        u = torch.clamp(self.pseudo_inputs, 0.0, 1.0)  # (C, *X)
        with added_losses_skipped():
            q = self._encoder(u)  # batch (C,), event (D,)
        if isinstance(q, TensorCoercible):
            q = q.distribution
        base = getattr(q, "base_dist", None)
        if not isinstance(q, D.Independent) or not isinstance(base, D.Normal) or len(q.event_shape) != 1:
            raise TypeError(f"VampPrior: the encoder must return a diagonal Gaussian, got {type(q).__name__}")
        logits = torch.zeros(u.shape[0], device=u.device, dtype=u.dtype)  # (C,): uniform weights
        return DiagonalGaussianMixture(logits, base.loc, base.scale)


def _normal(latent: int, components: int, encoder: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    return StandardNormal(latent)


def _mog(latent: int, components: int, encoder: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    return MixtureOfGaussians(latent, components)


def _vamp(latent: int, components: int, encoder: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    return VampPrior(encoder, components, shape)


#: name -> ``(latent_size, components, encoder, input_shape) -> prior module``.
PRIORS: dict[str, Callable[[int, int, nn.Module, tuple[int, ...]], nn.Module]] = {
    "normal": _normal,
    "mog": _mog,
    "vamp": _vamp,
}
