"""The VAE container: an encoder whose output is q(z|x), a decoder whose output is p(x|z), a
prior p(z), and the objective that trains them."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributions as D
from torch import nn

from ...coercible import as_coercible, is_coercible
from ...regularizers import KLDivergenceRegularizer

__all__ = ["VAE", "vae_loss"]


class VAE(nn.Module):
    """``decoder(encoder(x))``, with the pieces evaluation and the objectives need.

    Args:
        encoder: ``(B, *X) -> q(z|x)``, a distribution (batch ``(B,)``, event ``(D,)``): a
            distribution layer's output, whose tensor value is the sample z the decoder gets,
            or a plain ``torch.distributions`` one (:meth:`encode` makes it such an output).
        decoder: ``(N, D) -> p(x|z)`` (batch ``(N,)``, event X).
        regularizer: the encoder's :class:`~problayers.KLDivergenceRegularizer`, for a model
            whose encoder adds its KL term itself (the seed, as TFP's example); its prior is the
            model's prior and its ``weight`` the KL weight in every objective (an objective's
            ``beta`` must be 1 or the same). Give either this or ``prior``.
        prior: an ``nn.Module`` whose ``forward()`` returns p(z) (batch ``()``, event ``(D,)``),
            for a model whose objective computes the KL (or the importance weights) itself.
        objective: ``(vae, x) -> (loss, metrics)`` (an ``nn.Module`` from
            :mod:`problayers.vae.objectives`, so that its state, e.g. a KL warm-up's step count,
            is saved with the model); default: the ELBO of TFP's example
            (:class:`~problayers.vae.objectives.ELBO`).

    ``forward(x)``: ``(B, *X)`` -> p(x|z) at the encoder's cached sample z, batch ``(B,)``.
    ``forward(x, loss=True)``: the objective's ``(loss, metrics)`` on the batch (so that a
    wrapper such as ``DistributedDataParallel`` sees the whole objective as one forward).
    ``forward(x, log_q_at=z)``: ``log q(z|x)``, ``z`` of shape ``(K, B, D)`` -> ``(K, B)``, the
    encoder and the networks its posterior's ``log_prob`` runs (a hierarchical posterior's
    conditional) in one call, so that ``torch.func.functional_call`` evaluates all of it at the
    weights it is given (DReG's stopped ``log q``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        regularizer: KLDivergenceRegularizer | None = None,
        *,
        prior: nn.Module | None = None,
        objective: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (regularizer is None) == (prior is None):
            raise ValueError("VAE: give exactly one of regularizer (the encoder adds its KL) and prior")
        self.encoder = encoder
        self.decoder = decoder
        self.regularizer = regularizer
        self.prior_module = prior
        from ..objectives import ELBO, Objective

        if objective is None:
            objective = ELBO()
        if regularizer is not None and isinstance(objective, Objective):
            given = regularizer.weight  # a number, or a 0-dim tensor (an nn.Parameter: trained)
            weight = float(given.detach()) if isinstance(given, torch.Tensor) else float(given)
            beta = objective.beta  # one KL weight: the regularizer's (float32's 0.1 is beta's)
            if beta != 1.0 and not math.isclose(beta, weight, rel_tol=1e-6):
                raise ValueError(
                    f"VAE: the objective's beta {objective.beta:g} differs from the encoder "
                    f"regularizer's weight {weight:g}; a model whose encoder adds its KL term "
                    "takes the KL weight from the regularizer (give the objective beta=1)"
                )
        self.objective = objective

    def forward(self, x: torch.Tensor, *, loss: bool = False, log_q_at: torch.Tensor | None = None) -> Any:
        if loss:
            return self.objective(self, x)
        if log_q_at is not None:
            return self.encoder(x).log_prob(log_q_at)  # (K, B)
        return self.decoder(self.encode(x))

    def encode(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x) for x ``(B, *X)``: batch ``(B,)``, event ``(D,)``, tensor-coercible (its value
        the sample z; a plain distribution from the encoder is wrapped: its value ``rsample()``)."""
        q = self.encoder(x)
        return q if is_coercible(q) or not isinstance(q, D.Distribution) else as_coercible(q)

    def decode(self, z: torch.Tensor) -> D.Distribution:
        """p(x|z) for z ``(N, D)``: batch ``(N,)``, event X."""
        return self.decoder(z)

    def prior(self) -> D.Distribution:
        """p(z) on the model's device and dtype: batch ``()``, event ``(D,)``."""
        if self.prior_module is not None:
            return self.prior_module()
        assert self.regularizer is not None  # one of the two (checked in __init__)
        return self.regularizer.resolve_prior(next(self.parameters()))


def vae_loss(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's training loss on a batch x ``(B, *X)``: ``model(x, loss=True)``, its
    objective's 0-dim loss and detached 0-dim metrics (for the ELBO: ``recon`` and ``kl``, the
    KL term as added). ``model`` may be wrapped (``DistributedDataParallel``, compiled)."""
    return model(x, loss=True)
