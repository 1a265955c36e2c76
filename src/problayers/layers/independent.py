"""Layers whose output is ``Independent(<scalar family>, len(event_shape))``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributions as D
import torch.nn.functional as F

from ..coercible import ConvertFn
from .base import DistributionLambda, check_params, event_size, normalize_event_shape

__all__ = ["IndependentBernoulli", "IndependentNormal"]


class _IndependentLayer(DistributionLambda):
    """Shared constructor: ``event_shape`` and the usual layer options."""

    def __init__(
        self,
        event_shape: int | Iterable[int] = 1,
        convert_to_tensor_fn: ConvertFn = "rsample",
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        self.event_shape = normalize_event_shape(event_shape)
        self.validate_args = validate_args

    def make_distribution(self, params) -> D.Distribution:
        return self.new(params, self.event_shape, self.validate_args)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, {super().extra_repr()}"


class IndependentBernoulli(_IndependentLayer):
    """Pixel-independent Bernoulli over ``event_shape``, parameterized by logits.

    Input: ``(*B, prod(event_shape))`` logits. Output: ``batch_shape`` B, ``event_shape``
    ``event_shape``. Its tensor value defaults to a sample (Bernoulli has no ``rsample``).
    """

    def __init__(
        self,
        event_shape: int | Iterable[int] = 1,
        convert_to_tensor_fn: ConvertFn = "sample",
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(event_shape, convert_to_tensor_fn, validate_args, activity_regularizer)

    @staticmethod
    def params_size(event_shape: int | Iterable[int] = 1) -> int:
        """Number of inputs per example: ``prod(event_shape)`` logits."""
        return event_size(normalize_event_shape(event_shape))

    @staticmethod
    def new(params, event_shape: int | Iterable[int] = 1, validate_args: bool = False) -> D.Independent:
        """``(*B, prod(event_shape))`` logits -> ``Independent(Bernoulli)``, batch B, event
        ``event_shape``."""
        shape = normalize_event_shape(event_shape)
        params = check_params("IndependentBernoulli", params, event_size(shape))
        logits = params.reshape(params.shape[:-1] + shape)  # (*B, *E)
        return D.Independent(D.Bernoulli(logits=logits, validate_args=validate_args), len(shape))


class IndependentNormal(_IndependentLayer):
    """Independent Normal over ``event_shape``: ``loc`` and ``softplus`` scale.

    Input: ``(*B, 2 * prod(event_shape))`` (locs, then raw scales). Output: ``batch_shape`` B,
    ``event_shape`` ``event_shape``.
    """

    @staticmethod
    def params_size(event_shape: int | Iterable[int] = 1) -> int:
        """Number of inputs per example: ``2 * prod(event_shape)``."""
        return 2 * event_size(normalize_event_shape(event_shape))

    @staticmethod
    def new(params, event_shape: int | Iterable[int] = 1, validate_args: bool = False) -> D.Independent:
        """``(*B, 2 * prod(event_shape))`` -> ``Independent(Normal)``, batch B, event ``event_shape``."""
        shape = normalize_event_shape(event_shape)
        n = event_size(shape)
        params = check_params("IndependentNormal", params, 2 * n)
        loc, raw_scale = params.split(n, dim=-1)  # (*B, n) each
        batch = params.shape[:-1]
        loc = loc.reshape(batch + shape)
        scale = F.softplus(raw_scale).reshape(batch + shape)
        return D.Independent(D.Normal(loc, scale, validate_args=validate_args), len(shape))
