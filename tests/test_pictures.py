"""Pictures: grids and the loss curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributions as D
from PIL import Image
from torch import nn

import problayers as pl
from problayers.vae.models import VAE, ModelConfig, build_model
from problayers.vae.objectives import ELBO, IWAE
from problayers.vae.pictures import image_grid, loss_curve, save_pictures


def test_image_grid_layout(tmp_path):
    rows = [torch.zeros(3, 1, 4, 5), torch.ones(3, 4, 5)]
    path = image_grid(rows, tmp_path / "g.png", scale=1, pad=1)
    with Image.open(path) as img:
        assert img.size == (3 * 6 + 1, 2 * 5 + 1)
        pixels = torch.from_numpy(np.asarray(img).copy())
    assert pixels[1, 1] == 0 and pixels[6, 1] == 255 and pixels[0, 0] == 128


def test_image_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        image_grid([], tmp_path / "g.png")
    with pytest.raises(ValueError, match="row 1 has 2"):
        image_grid([torch.zeros(3, 4, 4), torch.zeros(2, 4, 4)], tmp_path / "g.png")


def test_save_pictures(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_size=2, base_depth=4))
    records = [
        {"epoch": 1, "train_loss": 200.0, "test_neg_elbo": 190.0},
        {"epoch": 2, "train_loss": 150.0, "test_neg_elbo": 140.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths = save_pictures(model, torch.bernoulli(torch.full((6, 1, 28, 28), 0.2)), tmp_path, n=4)
    assert [p.name for p in paths] == ["prior_samples.png", "reconstructions.png", "loss_curve.png"]
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
        assert a.size == (2 * (4 * 30 + 2), 2 * (3 * 30 + 2))
        assert b.size == (2 * (4 * 30 + 2), 2 * (4 * 30 + 2))
    assert model.training  # restored
    model.eval()
    save_pictures(model, torch.bernoulli(torch.full((6, 1, 28, 28), 0.2)), tmp_path, n=4)
    assert not model.training  # an eval() model stays in eval (BatchNorm's running statistics)


def test_loss_curve_png(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 3.0}) + "\n")
    path = loss_curve(tmp_path / "m.jsonl", tmp_path / "c.png")
    with Image.open(path) as img:
        assert img.format == "PNG"


class _PlainEncoder(nn.Module):
    """An encoder returning a plain torch distribution (not a layer's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(28 * 28, 4)

    def forward(self, x):
        loc, scale = self.net(x.flatten(1)).chunk(2, -1)  # (B, 2) each
        return D.Independent(D.Normal(loc, nn.functional.softplus(scale) + 1e-3), 1)


def _user_vae(objective):
    """A user's VAE as VAE's docstring allows it: a plain torch distribution from the encoder,
    and a decoder whose distribution (torch's ContinuousBernoulli) has no ``mode``."""
    decoder = nn.Sequential(
        nn.Linear(2, 28 * 28),
        pl.DistributionLambda(
            lambda t: D.Independent(D.ContinuousBernoulli(logits=t.reshape(-1, 1, 28, 28)), 3)
        ),
    )
    return VAE(_PlainEncoder(), decoder, prior=pl.StandardNormal((2,)), objective=objective)


@pytest.mark.parametrize("objective", [ELBO(), IWAE(3)], ids=["elbo", "iwae"])
def test_a_users_vae_trains_and_is_pictured(tmp_path, objective):
    # Both crashed (extension audit): the ELBO and VAE.forward gave the plain q to the decoder
    # (TypeError in linear), and the pictures read the decoder's mode (NotImplementedError).
    torch.manual_seed(0)
    model = _user_vae(objective)
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    loss, _ = model(x, loss=True)
    loss.backward()
    assert loss.isfinite() and model.encoder.net.weight.grad.abs().sum() > 0
    save_pictures(model, x, tmp_path, n=4)
    with Image.open(tmp_path / "prior_samples.png") as img:
        assert img.size[1] == 2 * (2 * (28 + 2) + 2)  # rows sample and mean (no mode), scale 2
    with Image.open(tmp_path / "reconstructions.png") as img:
        assert img.size[1] == 2 * (3 * (28 + 2) + 2)  # the digits, mean and sample
