"""The VAE container: an encoder whose output is q(z|x), a decoder whose output is p(x|z)."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import nn

from ...losses import collect_losses
from ...regularizers import KLDivergenceRegularizer

__all__ = ["VAE", "vae_loss"]


class VAE(nn.Module):
    """``decoder(encoder(x))``, with the pieces evaluation needs.

    Args:
        encoder: ``(B, *X) -> q(z|x)``, a distribution layer's output (batch ``(B,)``, event
            ``(D,)``) that carries a KL regularizer.
        decoder: ``(N, D) -> p(x|z)`` (batch ``(N,)``, event X).
        regularizer: the encoder's :class:`~problayers.KLDivergenceRegularizer` (its prior is
            the model's prior).

    ``forward(x)``: ``(B, *X)`` -> p(x|z) at the encoder's cached sample z, batch ``(B,)``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, regularizer: KLDivergenceRegularizer) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.regularizer = regularizer

    def forward(self, x: torch.Tensor) -> D.Distribution:
        return self.decoder(self.encoder(x))

    def encode(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x): batch ``(B,)``, event ``(D,)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> D.Distribution:
        """p(x|z) for z ``(N, D)``: batch ``(N,)``, event X."""
        return self.decoder(z)

    def prior(self) -> D.Distribution:
        """p(z) on the model's device and dtype: batch ``()``, event ``(D,)``."""
        return self.regularizer.resolve_prior(next(self.parameters()))


def vae_loss(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of TFP's example: ``-log p(x|z)`` (mean over the batch) plus the added KL.

    Input: a batch x ``(B, *X)``. Returns the 0-dim loss and detached 0-dim metrics
    ``recon`` and ``kl`` (the KL term as added, i.e. times the regularizer's weight).
    """
    rv_x = model(x)
    recon = -rv_x.log_prob(x).mean()
    kl = collect_losses(model, clear=True)
    return recon + kl, {"recon": recon.detach(), "kl": kl.detach()}
