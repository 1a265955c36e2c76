"""``MultivariateNormalTriL``: a full-covariance Gaussian from a dense layer's output."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D
import torch.nn.functional as F

from ..coercible import ConvertFn
from .base import DistributionLambda, check_params, normalize_event_shape

__all__ = ["MultivariateNormalTriL", "fill_scale_tril"]

#: Added to the softplus diagonal so the scale stays positive definite (as TFP's FillScaleTriL).
DIAG_SHIFT = 1e-5


def fill_scale_tril(raw: torch.Tensor, d: int, diag_shift: float = DIAG_SHIFT) -> torch.Tensor:
    """``(*B, d(d+1)/2)`` -> lower-triangular ``(*B, d, d)`` with ``softplus(.) + diag_shift`` on
    the diagonal. Entries fill the lower triangle row by row (``torch.tril_indices`` order)."""
    rows, cols = torch.tril_indices(d, d, device=raw.device)
    tril = raw.new_zeros((*raw.shape[:-1], d, d))
    tril[..., rows, cols] = raw  # (*B, d, d)
    diag = tril.diagonal(dim1=-2, dim2=-1)  # (*B, d)
    return tril - torch.diag_embed(diag) + torch.diag_embed(F.softplus(diag) + diag_shift)


class MultivariateNormalTriL(DistributionLambda):
    """Full-covariance Gaussian of dimension ``event_size``.

    Args:
        event_size: d, the dimension (an int or a 1-tuple).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"rsample"`` (gradients flow
            through the sample).
        validate_args: passed to the distribution (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).

    Input: ``(*B, params_size(d))`` = ``(*B, d + d * (d + 1) / 2)``: the mean, then the lower
    triangle of the scale, row by row (softplus diagonal plus 1e-5, so it is positive
    definite). Output: a tensor-coercible ``MultivariateNormal`` with ``batch_shape`` B and
    ``event_shape`` ``(d,)``.

    Example::

        >>> pl.MultivariateNormalTriL.params_size(3)
        9
        >>> out = pl.MultivariateNormalTriL(3)(torch.zeros(4, 9))
        >>> out.batch_shape, out.event_shape, out.scale_tril.shape
        (torch.Size([4]), torch.Size([3]), torch.Size([4, 3, 3]))
    """

    def __init__(
        self,
        event_size: int,
        convert_to_tensor_fn: ConvertFn = "rsample",
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        (self.event_size,) = normalize_event_shape(event_size, "event_size")
        self.validate_args = validate_args

    @staticmethod
    def params_size(event_size: int) -> int:
        """Number of inputs per example: ``d + d(d+1)/2``."""
        (d,) = normalize_event_shape(event_size, "event_size")
        return d + d * (d + 1) // 2

    @staticmethod
    def new(params, event_size: int, validate_args: bool = False) -> D.MultivariateNormal:
        """``(*B, params_size(d))`` -> ``MultivariateNormal``, batch B, event ``(d,)``."""
        (d,) = normalize_event_shape(event_size, "event_size")
        params = check_params("MultivariateNormalTriL", params, MultivariateNormalTriL.params_size(d))
        loc, raw = params[..., :d], params[..., d:]  # (*B, d), (*B, d(d+1)/2)
        return D.MultivariateNormal(loc, scale_tril=fill_scale_tril(raw, d), validate_args=validate_args)

    def make_distribution(self, params) -> D.MultivariateNormal:
        return self.new(params, self.event_size, self.validate_args)

    def extra_repr(self) -> str:
        return f"event_size={self.event_size}, {super().extra_repr()}"
