"""What the translations of TFP's own layer tests share (the ``test_tfp_*_layers.py`` files and
``test_tfp_coercible_behaviour.py``; issue 16).

Each of those tests names in its docstring the TFP test it corresponds to: a file under
tensorflow_probability/python/layers/ of tensorflow/probability, and a test of it. Keras
mechanics become their torch counterparts: ``compile``/``fit`` a few Adam steps
(:func:`adam_steps`), an h5 file a ``state_dict`` round trip into a freshly built model
(:func:`state_dict_copy`), ``model.losses`` :func:`pl.collect_losses`, NHWC images NCHW,
``tf.convert_to_tensor`` :func:`pl.convert_to_tensor`. Graph mode and placeholders (TFP's
static/dynamic-shape variants) have no counterpart; their dtypes are kept (:data:`DTYPES`).
Monte Carlo comparisons are seeded; each states its tolerance in standard errors (SE).
Deliberate differences are skipped with the reason; see the skip markers.
"""

from __future__ import annotations

import io
import itertools
import math

import torch
import torch.distributions as D
from torch import nn

DIAG_SHIFT = 1e-5  # TFP's FillScaleTriL default, which MultivariateNormalTriL adds to the diagonal

# TFP runs each with float32 and float64 (its static-/dynamic-shape variants).
DTYPES = [torch.float32, torch.float64]

# -- helpers --------------------------------------------------------------------------------------


def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def tfp_fill_triangular_inverse(tril: torch.Tensor) -> torch.Tensor:
    """``(..., d, d)`` lower-triangular -> ``(..., d(d+1)/2)``, the inverse of TFP's
    ``fill_triangular`` (written from its definition, not from problayers): the last row
    reversed comes first, then the rows above it added to their 180-degree rotation."""
    d = tril.shape[-1]
    head = tril[..., -1, :].flip(-1)  # (..., d)
    above = tril[..., :-1, :]  # (..., d - 1, d)
    folded = (above + above.flip(-1).flip(-2)).flatten(-2)  # (..., (d - 1) d)
    return torch.cat([head, folded[..., : d * (d + 1) // 2 - d]], dim=-1)


def mvn_tril_params(dist: D.MultivariateNormal) -> torch.Tensor:
    """A ``MultivariateNormal``'s parameters as ``MultivariateNormalTriL`` takes them (TFP's
    ``concat([loc, FillScaleTriL().inverse(scale)])``)."""
    tril = dist.scale_tril
    diag = tril.diagonal(dim1=-2, dim2=-1)
    raw = tril - torch.diag_embed(diag) + torch.diag_embed(softplus_inverse(diag - DIAG_SHIFT))
    return torch.cat([dist.loc, tfp_fill_triangular_inverse(raw)], dim=-1)


def uniform(shape, low=-3.0, high=3.0, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype).uniform_(low, high)


class Lambda(nn.Module):
    """Keras' ``Lambda`` layer."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def nll_minibatches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """``loss()`` giving the mean NLL of the next (shuffled) batch each call: Keras' epochs."""
    batches = itertools.cycle(torch.randperm(len(x)).split(batch_size))

    def loss() -> torch.Tensor:
        i = next(batches)
        return -model(x[i]).log_prob(y[i]).mean()

    return loss


def adam_steps(model: nn.Module, loss_fn, steps: int, lr: float = 1e-3) -> list[float]:
    """``steps`` Adam steps on ``loss_fn()`` (Keras' ``fit``); the losses seen."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def state_dict_copy(model: nn.Module, build) -> nn.Module:
    """``build()`` loaded with ``model``'s state_dict through bytes (Keras' save/load_model)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    copy = build()
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    return copy


def logit_avg_expit(t: torch.Tensor) -> torch.Tensor:
    """``logit(mean(sigmoid(t), 0))``, stably: averages Bernoullis over a leading sample axis."""
    log_avg = torch.logsumexp(-nn.functional.softplus(-t), dim=0) - math.log(t.shape[0])
    return log_avg - torch.log1p(-torch.exp(log_avg))


def vec_pad(x: torch.Tensor) -> torch.Tensor:
    """Prepend a column of zeros (a reference logit) to the last axis."""
    return nn.functional.pad(x, (1, 0))
