"""A wider residual conv VAE for the GPU (``problayers train --model resnet``), with the zoo's
priors, posteriors and objectives.

Encoder ``(B, 1, 28, 28)``: a 3x3 stem to ``w`` channels, then per resolution (28, 14, 7) two
residual blocks, a strided 3x3 convolution between them (``w -> 2w -> 4w``), then ``Flatten ->
Linear`` into the posterior head (``IndependentNormal``, optionally IAFs). Decoder ``(N, D)``:
``Linear -> (4w, 7, 7)``, the mirror image with transposed convolutions, a 3x3 convolution to
the Bernoulli logits. A block is ``x + Conv(SiLU(BN(Conv(SiLU(BN(x))))))`` (pre-activation,
He et al. 2016). ``w = cfg.base_depth`` (default 64).
"""

from __future__ import annotations

import torch
from torch import nn

from ...layers import IndependentBernoulli
from .mlp import IMAGE_SHAPE, posterior_head
from .priors import PRIORS
from .registry import ModelConfig, make_objective, register_model
from .vae import VAE

__all__ = ["ResidualBlock", "resnet_vae"]


class ResidualBlock(nn.Module):
    """``x + f(x)`` with ``f`` two 3x3 convolutions, each after BatchNorm and SiLU. Shape kept:
    ``(B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_model(
    "resnet",
    fields={"base_depth", "prior", "prior_components", "posterior", "flow_steps", "hidden_size"},
    iaf_fields={"hidden_size"},
    latent_size=32,
    base_depth=64,
    exact_kl=True,
)
def resnet_vae(cfg: ModelConfig) -> VAE:
    """The residual conv VAE (see the module docstring); ``cfg.hidden_size`` is the width of the
    IAF's MADE when ``cfg.posterior == "iaf"``."""
    d, w = cfg.latent_size, cfg.base_depth
    # fmt: off
    encoder = nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1),                              # (B, w, 28, 28)
        ResidualBlock(w), ResidualBlock(w),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),                # (B, 2w, 14, 14)
        ResidualBlock(2 * w), ResidualBlock(2 * w),
        nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),            # (B, 4w, 7, 7)
        ResidualBlock(4 * w), ResidualBlock(4 * w),
        nn.BatchNorm2d(4 * w), nn.SiLU(), nn.Flatten(),             # (B, 4w * 49)
        *posterior_head(cfg, 4 * w * 49, d),                        # batch (B,), event (d,)
    )
    decoder = nn.Sequential(
        nn.Linear(d, 4 * w * 49), nn.Unflatten(1, (4 * w, 7, 7)),  # (N, 4w, 7, 7)
        ResidualBlock(4 * w), ResidualBlock(4 * w),
        nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1),   # (N, 2w, 14, 14)
        ResidualBlock(2 * w), ResidualBlock(2 * w),
        nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),       # (N, w, 28, 28)
        ResidualBlock(w), ResidualBlock(w),
        nn.BatchNorm2d(w), nn.SiLU(),
        nn.Conv2d(w, 1, 3, padding=1), nn.Flatten(),                # (N, 784) logits
        IndependentBernoulli(IMAGE_SHAPE),                          # batch (N,), event (1, 28, 28)
    )
    # fmt: on
    prior = PRIORS[cfg.prior](d, cfg.prior_components, encoder, IMAGE_SHAPE)
    return VAE(encoder, decoder, prior=prior, objective=make_objective(cfg))
