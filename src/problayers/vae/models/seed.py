"""The seed model: the conv VAE of TFP's ``tfp.layers`` example, written with problayers."""

from __future__ import annotations

import torch
import torch.distributions as D
from torch import nn

from ...layers import IndependentBernoulli, MultivariateNormalTriL
from ...regularizers import KLDivergenceRegularizer
from .registry import ModelConfig, make_objective, register_model
from .vae import VAE

__all__ = ["seed_vae"]

#: TensorFlow's leaky_relu slope, as in the TFP example.
LEAKY_SLOPE = 0.2


class Shift(nn.Module):
    """``x + offset`` (the example feeds ``x - 0.5`` to the encoder). Shape unchanged."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def _act() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


@register_model("seed", fields={"base_depth", "tril_order"})
def seed_vae(cfg: ModelConfig) -> VAE:
    """Encoder (1, 28, 28) -> MultivariateNormalTriL(latent) with a KL regularizer to N(0, I);
    decoder latent -> IndependentBernoulli((1, 28, 28)). ``cfg.base_depth`` is the width (32)."""
    d, w = cfg.latent_size, cfg.base_depth
    # No argument validation: it would read a bool back from the device in every KL term.
    prior = D.Independent(D.Normal(torch.zeros(d), 1.0, validate_args=False), 1, validate_args=False)
    kl = KLDivergenceRegularizer(prior, weight=cfg.beta, use_exact_kl=cfg.exact_kl)
    # fmt: off
    encoder = nn.Sequential(
        Shift(-0.5),
        nn.Conv2d(1, w, 5, 1, padding=2), _act(),            # (B, w, 28, 28)
        nn.Conv2d(w, w, 5, 2, padding=2), _act(),            # (B, w, 14, 14)
        nn.Conv2d(w, 2 * w, 5, 1, padding=2), _act(),        # (B, 2w, 14, 14)
        nn.Conv2d(2 * w, 2 * w, 5, 2, padding=2), _act(),    # (B, 2w, 7, 7)
        nn.Conv2d(2 * w, 4 * d, 7), _act(),                  # (B, 4d, 1, 1)
        nn.Flatten(),
        nn.Linear(4 * d, MultivariateNormalTriL.params_size(d)),
        # batch (B,), event (d,)
        MultivariateNormalTriL(d, activity_regularizer=kl, tril_order=cfg.tril_order),
    )
    decoder = nn.Sequential(
        nn.Unflatten(1, (d, 1, 1)),
        nn.ConvTranspose2d(d, 2 * w, 7), _act(),                                      # (N, 2w, 7, 7)
        nn.ConvTranspose2d(2 * w, 2 * w, 5, 1, padding=2), _act(),
        nn.ConvTranspose2d(2 * w, 2 * w, 5, 2, padding=2, output_padding=1), _act(),  # (N, 2w, 14, 14)
        nn.ConvTranspose2d(2 * w, w, 5, 1, padding=2), _act(),
        nn.ConvTranspose2d(w, w, 5, 2, padding=2, output_padding=1), _act(),          # (N, w, 28, 28)
        nn.ConvTranspose2d(w, w, 5, 1, padding=2), _act(),
        nn.Conv2d(w, 1, 5, 1, padding=2),                                             # (N, 1, 28, 28)
        nn.Flatten(),
        IndependentBernoulli((1, 28, 28)),  # batch (N,), event (1, 28, 28)
    )
    # fmt: on
    return VAE(encoder, decoder, kl, objective=make_objective(cfg))
