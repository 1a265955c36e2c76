"""The MLP VAE of the likelihood literature (784-300-300-40), with the zoo's priors, posteriors
and objectives: ``problayers train --model mlp [--prior vamp] [--posterior iaf] [--objective iwae]``.

Encoder ``(B, 1, 28, 28) -> Flatten -> [Linear(h), GELU] x 2 -> IndependentNormal(D)`` (then, with
posterior ``"iaf"``, ``flow_steps`` inverse autoregressive flows, each a MADE with one hidden
layer of ``h`` units, their orders alternating); decoder ``(N, D) -> [Linear(h), GELU] x 2 ->
Linear(784) -> IndependentBernoulli((1, 28, 28))``.
"""

from __future__ import annotations

import itertools

from torch import nn

from ...layers import AutoregressiveNetwork, AutoregressiveTransform, IndependentBernoulli, IndependentNormal
from .priors import PRIORS
from .registry import ModelConfig, make_objective, register_model
from .vae import VAE

__all__ = ["IMAGE_SHAPE", "mlp", "mlp_vae", "posterior_head"]

IMAGE_SHAPE = (1, 28, 28)
PIXELS = 784


def mlp(sizes: list[int], activate_last: bool = True) -> list[nn.Module]:
    """``Linear(sizes[0] -> sizes[1]), GELU, ...`` (the last GELU only with ``activate_last``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if activate_last or i < len(sizes) - 2:
            layers.append(nn.GELU())
    return layers


def posterior_head(cfg: ModelConfig, features: int, latent: int) -> list[nn.Module]:
    """``features -> q(z|.)`` over ``(latent,)``: a Gaussian (``IndependentNormal``), pushed
    through ``cfg.flow_steps`` IAFs when ``cfg.posterior == "iaf"``. Output: batch ``(*B,)``,
    event ``(latent,)``."""
    layers: list[nn.Module] = [
        nn.Linear(features, IndependentNormal.params_size(latent)),
        IndependentNormal(latent),
    ]
    if cfg.posterior == "iaf":
        for step in range(cfg.flow_steps):
            order = "left-to-right" if step % 2 == 0 else "right-to-left"
            made = AutoregressiveNetwork(2, latent, hidden_units=(cfg.hidden_size,), input_order=order)
            layers.append(AutoregressiveTransform(made, inverse=True))
    return layers


@register_model(
    "mlp",
    fields={"hidden_size", "prior", "prior_components", "posterior", "flow_steps"},
    latent_size=40,
    exact_kl=True,
)
def mlp_vae(cfg: ModelConfig) -> VAE:
    """The MLP VAE (see the module docstring): ``cfg.latent_size`` latents (40), ``cfg.hidden_size``
    units (300), ``cfg.prior``, ``cfg.posterior``, ``cfg.objective``."""
    d, h = cfg.latent_size, cfg.hidden_size
    encoder = nn.Sequential(
        nn.Flatten(),  # (B, 784)
        *mlp([PIXELS, h, h]),  # (B, h)
        *posterior_head(cfg, h, d),  # batch (B,), event (d,)
    )
    decoder = nn.Sequential(
        *mlp([d, h, h, PIXELS], activate_last=False),  # (N, 784) logits
        IndependentBernoulli(IMAGE_SHAPE),  # batch (N,), event (1, 28, 28)
    )
    prior = PRIORS[cfg.prior](d, cfg.prior_components, encoder, IMAGE_SHAPE)
    return VAE(encoder, decoder, prior=prior, objective=make_objective(cfg))
