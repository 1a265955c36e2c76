"""``MultivariateNormalTriL``: a full-covariance Gaussian from a dense layer's output."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D
import torch.nn.functional as F

from ..convert import ConvertFn
from ._args import boolean
from .base import DistributionLambda, SizeOrOneTuple, check_params, normalize_event_size, params_size_of

__all__ = ["TRIL_ORDERS", "MultivariateNormalTriL", "fill_scale_tril", "fill_triangular"]

#: Added to the softplus diagonal so the scale stays positive definite (as TFP's FillScaleTriL).
DIAG_SHIFT = 1e-5
#: How a vector fills the lower triangle: ``"tfp"`` (TFP's ``fill_triangular``, the default) or
#: ``"rows"`` (row by row, ``torch.tril_indices`` order: problayers 0.1, kept so that models
#: trained with it load and compute what they did).
TRIL_ORDERS = ("tfp", "rows")


def fill_triangular(x: torch.Tensor, d: int, order: str = "tfp") -> torch.Tensor:
    """``(*B, d(d+1)/2)`` -> lower-triangular ``(*B, d, d)``.

    ``order="tfp"`` is TFP's ``fill_triangular``: the last ``d`` entries, reversed, fill the
    last row; e.g. for d=3 ``[1, 2, 3, 4, 5, 6]`` -> ``[[4, 0, 0], [6, 5, 0], [3, 2, 1]]``, so a
    parameter vector means what it means in TFP. ``order="rows"`` fills row by row.
    """
    if order == "rows":
        rows, cols = torch.tril_indices(d, d, device=x.device)
        tril = x.new_zeros((*x.shape[:-1], d, d))
        tril[..., rows, cols] = x
        return tril  # (*B, d, d)
    if order != "tfp":
        raise ValueError(f"tril_order: expected one of {list(TRIL_ORDERS)}, got {order!r}")
    # The tail then the whole vector reversed is d*d entries whose lower triangle, read as a
    # d x d matrix, is TFP's layout.
    square = torch.cat([x[..., d:], x.flip(-1)], dim=-1)  # (*B, d*d)
    return square.reshape(*x.shape[:-1], d, d).tril()  # (*B, d, d)


def fill_scale_tril(
    raw: torch.Tensor, d: int, diag_shift: float = DIAG_SHIFT, order: str = "tfp"
) -> torch.Tensor:
    """``(*B, d(d+1)/2)`` -> lower-triangular ``(*B, d, d)`` with ``softplus(.) + diag_shift`` on
    the diagonal (TFP's ``FillScaleTriL``), filled in ``order`` (see :func:`fill_triangular`)."""
    tril = fill_triangular(raw, d, order)  # (*B, d, d)
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
        tril_order: how the scale parameters fill the lower triangle: ``"tfp"`` (default,
            TFP's ``fill_triangular``, so TFP weights mean the same here) or ``"rows"`` (row by
            row, the order of problayers 0.1; for models trained with it).

    Input: ``(*B, params_size(d))`` = ``(*B, d + d * (d + 1) / 2)``: the mean, then the lower
    triangle of the scale in ``tril_order`` (softplus diagonal plus 1e-5, so it is positive
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
        event_size: SizeOrOneTuple,
        convert_to_tensor_fn: ConvertFn = "rsample",
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
        tril_order: str = "tfp",
    ) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        self.event_size = normalize_event_size(event_size)
        self.validate_args = boolean(validate_args, "validate_args")
        if tril_order not in TRIL_ORDERS:
            raise ValueError(f"tril_order: expected one of {list(TRIL_ORDERS)}, got {tril_order!r}")
        self.tril_order = tril_order

    @params_size_of("event_size")
    def params_size(event_size: SizeOrOneTuple) -> int:
        """Number of inputs per example: ``d + d(d+1)/2``."""
        d = normalize_event_size(event_size)
        return d + d * (d + 1) // 2

    @staticmethod
    def new(
        params, event_size: SizeOrOneTuple, validate_args: bool = False, tril_order: str = "tfp"
    ) -> D.MultivariateNormal:
        """``(*B, params_size(d))`` -> ``MultivariateNormal``, batch B, event ``(d,)``; the scale
        parameters fill the triangle in ``tril_order`` (default TFP's)."""
        d = normalize_event_size(event_size)
        params = check_params("MultivariateNormalTriL", params, d + d * (d + 1) // 2)  # params_size(d)
        loc, raw = params[..., :d], params[..., d:]  # (*B, d), (*B, d(d+1)/2)
        scale_tril = fill_scale_tril(raw, d, order=tril_order)  # (*B, d, d)
        validate_args = boolean(validate_args, "validate_args")
        return D.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=validate_args)

    def make_distribution(self, params) -> D.MultivariateNormal:
        return self.new(params, self.event_size, self.validate_args, self.tril_order)

    def extra_repr(self) -> str:
        order = "" if self.tril_order == "tfp" else f", tril_order={self.tril_order!r}"
        return f"event_size={self.event_size}{order}, {super().extra_repr()}"
