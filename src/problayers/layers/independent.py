"""Layers whose output is ``Independent(<scalar family>, len(event_shape))``."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ..coercible import _coercible_class
from ..convert import ConvertFn
from ._args import boolean
from .base import DistributionLambda, Shape, check_params, event_size, normalize_event_shape, params_size_of
from .logistic import Logistic, _LogitTransform  # noqa: F401  (outputs pickled before the move name it here)

__all__ = [
    "IndependentBernoulli",
    "IndependentLogistic",
    "IndependentNormal",
    "IndependentPoisson",
    "LogRatePoisson",
]


class LogRatePoisson(D.Poisson):
    """torch's ``Poisson`` made from its log rate, as TFP's ``tfd.Poisson(log_rate=...)``.

    ``log_prob`` is torch's ``x log(rate) - rate - lgamma(x + 1)`` with ``log(rate)`` the log
    rate given, not the log of its exponential: where ``exp`` leaves the dtype (fp32: log rates
    below about -87 or above 88.7), torch's ``Poisson(exp(log_rate))`` gives ``-inf`` or NaN, and
    it loses digits before that (count 3 at log rate -100: -301.74 for TFP's -301.79); this gives
    TFP's numbers. Sampling, ``mean``, ``variance`` and the KL are torch's at ``rate =
    exp(log_rate)``.

    Args:
        log_rate: the log rates; their shape is the ``batch_shape``.
        validate_args: torch's argument checks (default ``None``: torch's global default).

    ``batch_shape`` is ``log_rate``'s shape; ``event_shape`` is ``()``.

    Example::

        >>> dist = pl.LogRatePoisson(torch.tensor([-100.0, 0.0, 100.0]))
        >>> dist.log_prob(torch.tensor([3.0, 3.0, 0.0]))  # torch's Poisson: -301.74, -2.79, -inf
        tensor([-301.7917,   -2.7918,      -inf])
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {  # type: ignore[misc]
        "log_rate": constraints.real,
    }

    def __init__(self, log_rate, validate_args: bool | None = None) -> None:
        (self.log_rate,) = broadcast_all(log_rate)  # (*B)
        super().__init__(self.log_rate.exp(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LogRatePoisson, _instance)
        new.log_rate = self.log_rate.expand(batch_shape)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_rate, value = broadcast_all(self.log_rate, value)  # (*B)
        # x log(rate), 0 where x = 0 (torch's xlogy, TFP's multiply_no_nan)
        term = torch.where(value == 0, torch.zeros_like(log_rate), value * log_rate)
        return term - log_rate.exp() - (value + 1).lgamma()


_coercible_class(LogRatePoisson)


def _one_per_element(layer: str, params, event_shape) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(*B, prod(E))`` -> ``(*B, *E)`` and ``E``, validated for ``layer``."""
    shape = normalize_event_shape(event_shape)
    params = check_params(layer, params, event_size(shape))
    return params.reshape(params.shape[:-1] + shape), shape


def _loc_softplus_scale(
    layer: str, params, event_shape
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """``(*B, 2 prod(E))`` -> loc ``(*B, *E)``, ``softplus`` scale ``(*B, *E)`` and ``E``."""
    shape = normalize_event_shape(event_shape)
    n = event_size(shape)
    params = check_params(layer, params, 2 * n)
    loc, raw_scale = params.split(n, dim=-1)  # (*B, n) each
    batch = params.shape[:-1]
    return loc.reshape(batch + shape), F.softplus(raw_scale).reshape(batch + shape), shape


class _IndependentLayer(DistributionLambda):
    """Shared constructor: ``event_shape`` and the usual layer options. ``convert_to_tensor_fn``
    defaults to the class's ``default_convert_to_tensor_fn``."""

    default_convert_to_tensor_fn: ConvertFn = "rsample"
    new: Callable[..., D.Distribution]  # each subclass's static ``new(params, event_shape, ...)``

    def __init__(
        self,
        event_shape: Shape = (),
        convert_to_tensor_fn: ConvertFn | None = None,
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        convert = self.default_convert_to_tensor_fn if convert_to_tensor_fn is None else convert_to_tensor_fn
        super().__init__(None, convert, activity_regularizer)
        self.event_shape = normalize_event_shape(event_shape)
        self.validate_args = boolean(validate_args, "validate_args")

    def make_distribution(self, params) -> D.Distribution:
        return self.new(params, self.event_shape, validate_args=self.validate_args)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, {super().extra_repr()}"


class IndependentBernoulli(_IndependentLayer):
    """Pixel-independent Bernoulli over ``event_shape``, parameterized by logits.

    Args:
        event_shape: the shape of one example (an int or a tuple of positive ints; default
            ``()``: a scalar event, as in TFP).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``None``:
            ``"sample"`` (Bernoulli has no ``rsample``).
        validate_args: keyword-only, as the argument after it (TFP's third argument is
            ``sample_dtype``: a positional port would mix them up); passed to the distribution
            (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` (e.g.
            :class:`~problayers.KLDivergenceRegularizer`) recorded as an added loss on each
            output (default ``None``: none).

    Input: ``(*B, params_size(event_shape))`` = ``(*B, prod(event_shape))`` logits. Output: a
    tensor-coercible ``Independent(Bernoulli)`` with ``batch_shape`` B and ``event_shape``
    ``event_shape``.

    Example::

        >>> layer = pl.IndependentBernoulli((2, 3))
        >>> out = layer(torch.zeros(4, pl.IndependentBernoulli.params_size((2, 3))))
        >>> out.batch_shape, out.event_shape, out.log_prob(torch.zeros(4, 2, 3)).shape
        (torch.Size([4]), torch.Size([2, 3]), torch.Size([4]))
    """

    default_convert_to_tensor_fn: ConvertFn = "sample"  # no rsample

    def __init__(
        self,
        event_shape: Shape = (),
        convert_to_tensor_fn: ConvertFn | None = None,
        *,
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(event_shape, convert_to_tensor_fn, validate_args, activity_regularizer)

    @params_size_of("event_shape")
    def params_size(event_shape: Shape = ()) -> int:
        """Number of inputs per example: ``prod(event_shape)`` logits."""
        return event_size(normalize_event_shape(event_shape))

    @staticmethod
    def new(params, event_shape: Shape = (), *, validate_args: bool = False) -> D.Independent:
        """``(*B, prod(event_shape))`` logits -> ``Independent(Bernoulli)``, batch B, event
        ``event_shape``."""
        logits, shape = _one_per_element("IndependentBernoulli", params, event_shape)  # (*B, *E)
        validate_args = boolean(validate_args, "validate_args")
        return D.Independent(D.Bernoulli(logits=logits, validate_args=validate_args), len(shape))


def loc_scale_params_size(event_shape: Shape = ()) -> int:
    """``2 * prod(event_shape)``: a location-scale layer's inputs per example (a plain function,
    which the mixtures call while a forward may be traced)."""
    return 2 * event_size(normalize_event_shape(event_shape))


class _LocScaleLayer(_IndependentLayer):
    """A location-scale family over ``event_shape``: locs, then raw (softplus) scales."""

    @params_size_of("event_shape")
    def params_size(event_shape: Shape = ()) -> int:
        """Number of inputs per example: ``2 * prod(event_shape)``."""
        return loc_scale_params_size(event_shape)


class IndependentNormal(_LocScaleLayer):
    """Independent Normal over ``event_shape``: ``loc`` and ``softplus`` scale.

    Args:
        event_shape: the shape of one example (an int or a tuple of positive ints; default
            ``()``: a scalar event, as in TFP).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``None``:
            ``"rsample"`` (gradients flow through the sample).
        validate_args: passed to the distribution (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` (e.g.
            :class:`~problayers.KLDivergenceRegularizer`) recorded as an added loss on each
            output (default ``None``: none).

    Input: ``(*B, params_size(event_shape))`` = ``(*B, 2 * prod(event_shape))``: the locs, then
    the raw scales (``scale = softplus(raw)``). Output: a tensor-coercible
    ``Independent(Normal)`` with ``batch_shape`` B and ``event_shape`` ``event_shape``.

    Example::

        >>> pl.IndependentNormal.params_size(3)
        6
        >>> model = nn.Sequential(nn.Linear(5, 6), pl.IndependentNormal(3))
        >>> out = model(torch.zeros(4, 5))
        >>> out.batch_shape, out.event_shape, out.shape
        (torch.Size([4]), torch.Size([3]), torch.Size([4, 3]))
    """

    @staticmethod
    def new(params, event_shape: Shape = (), validate_args: bool = False) -> D.Independent:
        """``(*B, 2 * prod(event_shape))`` -> ``Independent(Normal)``, batch B, event ``event_shape``."""
        loc, scale, shape = _loc_softplus_scale("IndependentNormal", params, event_shape)
        validate_args = boolean(validate_args, "validate_args")
        return D.Independent(D.Normal(loc, scale, validate_args=validate_args), len(shape))


class IndependentLogistic(_LocScaleLayer):
    """Independent :class:`Logistic` over ``event_shape``: ``loc`` and ``softplus`` scale.

    Args:
        event_shape: the shape of one example (an int or a tuple of positive ints; default
            ``()``: a scalar event, as in TFP).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``None``:
            ``"rsample"`` (gradients flow through the sample).
        validate_args: passed to the distribution (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` (e.g.
            :class:`~problayers.KLDivergenceRegularizer`) recorded as an added loss on each
            output (default ``None``: none).

    Input: ``(*B, params_size(event_shape))`` = ``(*B, 2 * prod(event_shape))``: the locs, then
    the raw scales (``scale = softplus(raw)``). Output: a tensor-coercible
    ``Independent(Logistic)`` with ``batch_shape`` B and ``event_shape`` ``event_shape``.

    Example::

        >>> layer = pl.IndependentLogistic((2, 2))
        >>> out = layer(torch.zeros(3, pl.IndependentLogistic.params_size((2, 2))))
        >>> out.batch_shape, out.event_shape, out.mean.shape
        (torch.Size([3]), torch.Size([2, 2]), torch.Size([3, 2, 2]))
    """

    @staticmethod
    def new(params, event_shape: Shape = (), validate_args: bool = False) -> D.Independent:
        """``(*B, 2 * prod(event_shape))`` -> ``Independent(Logistic)``, batch B, event ``event_shape``."""
        loc, scale, shape = _loc_softplus_scale("IndependentLogistic", params, event_shape)
        validate_args = boolean(validate_args, "validate_args")
        return D.Independent(Logistic(loc, scale, validate_args=validate_args), len(shape))


class IndependentPoisson(_IndependentLayer):
    """Independent Poisson counts over ``event_shape``, parameterized by the log rate.

    Args:
        event_shape: the shape of one example (an int or a tuple of positive ints; default
            ``()``: a scalar event, as in TFP).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``None``:
            ``"sample"`` (Poisson has no ``rsample``).
        validate_args: passed to the distribution (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` (e.g.
            :class:`~problayers.KLDivergenceRegularizer`) recorded as an added loss on each
            output (default ``None``: none).

    Input: ``(*B, params_size(event_shape))`` = ``(*B, prod(event_shape))`` log rates
    (``rate = exp(params)``). Output: a tensor-coercible ``Independent(LogRatePoisson)`` (a
    torch ``Poisson`` whose ``log_prob`` uses the log rate, as TFP's) with
    ``batch_shape`` B and ``event_shape`` ``event_shape``.

    Example::

        >>> out = pl.IndependentPoisson(3)(torch.zeros(2, pl.IndependentPoisson.params_size(3)))
        >>> out.batch_shape, out.event_shape, out.mean
        (torch.Size([2]), torch.Size([3]), tensor([[1., 1., 1.], [1., 1., 1.]]))
    """

    default_convert_to_tensor_fn: ConvertFn = "sample"  # no rsample

    @params_size_of("event_shape")
    def params_size(event_shape: Shape = ()) -> int:
        """Number of inputs per example: ``prod(event_shape)`` log rates."""
        return event_size(normalize_event_shape(event_shape))

    @staticmethod
    def new(params, event_shape: Shape = (), validate_args: bool = False) -> D.Independent:
        """``(*B, prod(event_shape))`` log rates -> ``Independent(Poisson)``, batch B, event
        ``event_shape``."""
        log_rate, shape = _one_per_element("IndependentPoisson", params, event_shape)  # (*B, *E)
        validate_args = boolean(validate_args, "validate_args")
        return D.Independent(LogRatePoisson(log_rate, validate_args=validate_args), len(shape))
