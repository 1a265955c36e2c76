"""The seed VAE written by hand in plain PyTorch + ``torch.distributions`` (no problayers):
the no-library floor of ``bench_train.py``.

Same architecture as ``problayers.vae.models.seed`` (TFP's example): encoder convs -> dense ->
MultivariateNormal(loc, scale_tril) with softplus(.) + 1e-5 on the diagonal; decoder transposed
convs -> Bernoulli logits. Same loss: ``-Independent(Bernoulli(logits), 3).log_prob(x).mean()``
plus the Monte Carlo KL ``mean(log q(z) - log N(z; 0, I))`` at the ``z = q.rsample()`` that is
decoded. Argument validation is off (``validate_args=False``), as in problayers' layers: it
costs a host sync per check on a GPU.
"""

from __future__ import annotations

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

__all__ = ["HandwrittenVAE", "binarize", "train_step"]

LEAKY = 0.2


class HandwrittenVAE(nn.Module):
    def __init__(self, latent: int = 16, base_depth: int = 32) -> None:
        super().__init__()
        d, w = latent, base_depth
        self.latent = d

        def act() -> nn.Module:
            return nn.LeakyReLU(LEAKY)

        self.encoder = nn.Sequential(
            nn.Conv2d(1, w, 5, 1, padding=2), act(),
            nn.Conv2d(w, w, 5, 2, padding=2), act(),
            nn.Conv2d(w, 2 * w, 5, 1, padding=2), act(),
            nn.Conv2d(2 * w, 2 * w, 5, 2, padding=2), act(),
            nn.Conv2d(2 * w, 4 * d, 7), act(),
            nn.Flatten(),
            nn.Linear(4 * d, d + d * (d + 1) // 2),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(d, 2 * w, 7), act(),
            nn.ConvTranspose2d(2 * w, 2 * w, 5, 1, padding=2), act(),
            nn.ConvTranspose2d(2 * w, 2 * w, 5, 2, padding=2, output_padding=1), act(),
            nn.ConvTranspose2d(2 * w, w, 5, 1, padding=2), act(),
            nn.ConvTranspose2d(w, w, 5, 2, padding=2, output_padding=1), act(),
            nn.ConvTranspose2d(w, w, 5, 1, padding=2), act(),
            nn.Conv2d(w, 1, 5, 1, padding=2),
        )  # fmt: skip
        rows, cols = torch.tril_indices(d, d)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def posterior(self, x: torch.Tensor) -> D.MultivariateNormal:
        params = self.encoder(x - 0.5)  # (B, d + d(d+1)/2)
        d = self.latent
        loc, raw = params[:, :d], params[:, d:]
        tril = params.new_zeros(params.shape[0], d, d)
        tril[:, self.rows, self.cols] = raw
        diag = tril.diagonal(dim1=-2, dim2=-1)
        tril = tril - torch.diag_embed(diag) + torch.diag_embed(F.softplus(diag) + 1e-5)
        return D.MultivariateNormal(loc, scale_tril=tril, validate_args=False)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` (B, 1, 28, 28) of {0, 1} -> (loss, recon, kl), 0-dim each."""
        q = self.posterior(x)
        z = q.rsample()  # (B, d)
        prior = D.Independent(
            D.Normal(torch.zeros_like(z[0]), 1.0, validate_args=False), 1, validate_args=False
        )
        kl = (q.log_prob(z) - prior.log_prob(z)).mean()
        logits = self.decoder(z[:, :, None, None])  # (B, 1, 28, 28)
        px = D.Independent(D.Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)
        recon = -px.log_prob(x).mean()
        return recon + kl, recon, kl


def binarize(images_u8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28): pixel ~ Bernoulli(value / 255)."""
    x = images_u8[:, None].float() / 255
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (u < x).float()


def train_step(model: HandwrittenVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = model.loss(x)
    loss.backward()
    optimizer.step()
    return loss.detach()
