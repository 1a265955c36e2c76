"""Pictures: grids and the loss curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from problayers.vae.models import ModelConfig, build_model
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
