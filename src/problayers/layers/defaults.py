"""TFP's weight-distribution helpers (``tfp.layers.util``) in torch terms.

TFP's ``*_fn`` build their variables with ``add_variable_fn(name, shape, ...)``; here a
posterior/prior ``fn`` is ``(shape, dtype) -> nn.Module`` (the weight layers'
``kernel_posterior_fn`` & co.), the module's parameters are its variables, and its ``forward``
(input ignored) returns the distribution (resp. the ``(loc, scale)`` pair):

* :func:`default_loc_scale_fn` -> a module returning ``(loc, eps + softplus(untransformed_scale))``
  (``scale`` ``None`` when ``is_singular``);
* :func:`default_mean_field_normal_fn` -> a module returning ``Independent(Normal(loc, scale),
  len(shape))``, or a point mass at ``loc`` when ``is_singular`` (torch has no ``Deterministic``:
  a small one is defined here, its KL to any distribution ``p`` is ``-p.log_prob(loc)``, as TFP's);
* :func:`default_multivariate_normal_fn`: the fixed standard normal,
  :class:`~problayers.StandardNormal`.

Differences from TFP: an initializer is a callable of the tensor, not of a shape and dtype as
Keras' are: a ``torch.nn.init``-style one filling it in place
(``functools.partial(nn.init.normal_, std=0.1)``) or one returning the value; a regularizer's
value is recorded on each forward with :func:`~problayers.set_added_loss` (so
:func:`~problayers.collect_losses` sums it, as Keras' ``model.losses``); there are no
``*_constraint`` arguments: torch has no post-update projection hook (project the parameters
after ``optimizer.step()``, or use ``torch.nn.utils.parametrize``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from ..losses import added_losses_enabled, init_added_losses, set_added_loss
from ._args import callable_or_none, floating_dtype, run_initializer
from .base import Shape, normalize_event_shape
from .variational import StandardNormal

__all__ = ["default_loc_scale_fn", "default_mean_field_normal_fn", "default_multivariate_normal_fn"]

Initializer = Callable[[torch.Tensor], object]
Regularizer = Callable[[torch.Tensor], torch.Tensor]

_LOC_INIT = functools.partial(nn.init.normal_, mean=0.0, std=0.1)
_SCALE_INIT = functools.partial(nn.init.normal_, mean=-3.0, std=0.1)


class _PointMass(D.Distribution):
    """All mass at ``loc`` (TFP's ``Deterministic``): samples are ``loc``, ``log_prob`` is 0 at
    ``loc`` and ``-inf`` elsewhere; batch ``loc.shape``, event ``()``."""

    arg_constraints: ClassVar[dict] = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: torch.Tensor, validate_args: bool | None = False) -> None:
        self.loc = loc
        super().__init__(loc.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        return self.loc.expand(self._extended_shape(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=self.loc.dtype, device=self.loc.device)
        return torch.where(value == self.loc, zero, zero - torch.inf)

    def entropy(self) -> torch.Tensor:
        return torch.zeros_like(self.loc)


@register_kl(_PointMass, D.Distribution)
def _kl_point_mass(p: _PointMass, q: D.Distribution) -> torch.Tensor:
    return -q.log_prob(p.loc)  # E_p[log p - log q] with log p(loc) = 0


class _LocScale(nn.Module):
    """Trainable ``loc`` and ``scale = eps + softplus(untransformed_scale)`` of shape ``shape``;
    ``forward`` returns ``(loc, scale)`` (``scale`` ``None`` when singular)."""

    def __init__(
        self,
        shape: Shape,
        dtype: torch.dtype | None,
        is_singular: bool,
        loc_initializer: Initializer,
        untransformed_scale_initializer: Initializer,
        loc_regularizer: Regularizer | None,
        untransformed_scale_regularizer: Regularizer | None,
    ) -> None:
        super().__init__()
        init_added_losses(self)
        self.shape = normalize_event_shape(shape, "shape")
        dtype = floating_dtype(dtype)
        self.loc = nn.Parameter(torch.empty(self.shape, dtype=dtype))
        self.untransformed_scale = None
        if not is_singular:
            self.untransformed_scale = nn.Parameter(torch.empty(self.shape, dtype=dtype))
        run_initializer(loc_initializer, self.loc, "loc_initializer")
        if self.untransformed_scale is not None:
            run_initializer(
                untransformed_scale_initializer, self.untransformed_scale, "untransformed_scale_initializer"
            )
        self.loc_regularizer = loc_regularizer
        self.untransformed_scale_regularizer = untransformed_scale_regularizer

    @property
    def is_singular(self) -> bool:
        return self.untransformed_scale is None

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        u = self.untransformed_scale
        if added_losses_enabled():
            if self.loc_regularizer is not None:
                set_added_loss(self, "loc_regularizer", self.loc_regularizer(self.loc))
            if u is not None and self.untransformed_scale_regularizer is not None:
                set_added_loss(
                    self, "untransformed_scale_regularizer", self.untransformed_scale_regularizer(u)
                )
        scale = None if u is None else torch.finfo(u.dtype).eps + F.softplus(u)
        return self.loc, scale

    def forward(self, *ignored) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._loc_scale()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, is_singular={self.is_singular}"


class _MeanFieldNormal(_LocScale):
    """``_LocScale`` whose ``forward`` returns ``Independent(Normal(loc, scale), len(shape))``, or
    ``Independent(point mass at loc, len(shape))`` when singular."""

    def forward(self, *ignored) -> D.Independent:  # type: ignore[override]
        loc, scale = self._loc_scale()
        base = _PointMass(loc) if scale is None else D.Normal(loc, scale, validate_args=False)
        return D.Independent(base, len(self.shape))


class _Fn:
    """``(shape, dtype=None) -> module``: the picklable closure the ``default_*_fn`` return."""

    def __init__(self, cls: type[_LocScale], *args) -> None:
        self.cls, self.args = cls, args

    def __call__(self, shape: Shape, dtype: torch.dtype | None = None) -> nn.Module:
        return self.cls(shape, dtype, *self.args)

    def __repr__(self) -> str:
        return f"{self.cls.__name__.lstrip('_')}_fn(is_singular={self.args[0]})"


def _checked(is_singular, inits, regularizers) -> tuple:
    if not isinstance(is_singular, bool):
        raise TypeError(f"is_singular: expected a bool, got {type(is_singular).__name__}")
    for name, init in zip(("loc_initializer", "untransformed_scale_initializer"), inits, strict=True):
        if not callable(init):
            raise TypeError(
                f"{name}: expected a callable filling a tensor in place, got {type(init).__name__}"
            )
    names = ("loc_regularizer", "untransformed_scale_regularizer")
    return (is_singular, *inits, *(callable_or_none(r, n) for r, n in zip(regularizers, names, strict=True)))


def default_loc_scale_fn(
    is_singular: bool = False,
    loc_initializer: Initializer = _LOC_INIT,
    untransformed_scale_initializer: Initializer = _SCALE_INIT,
    loc_regularizer: Regularizer | None = None,
    untransformed_scale_regularizer: Regularizer | None = None,
) -> Callable[..., nn.Module]:
    """A ``(shape, dtype) -> nn.Module`` whose module holds a trainable ``(loc, scale)`` pair.

    As TFP's ``tfp.layers.default_loc_scale_fn``: ``scale = eps + softplus(untransformed_scale)``
    (``eps`` the dtype's machine epsilon), ``loc ~ N(0, 0.1)`` and ``untransformed_scale ~
    N(-3, 0.1)`` by default. Build a location-scale posterior of another family on it.

    Args:
        is_singular: no scale (the module returns ``(loc, None)``; default ``False``).
        loc_initializer: fills ``loc`` in place, a ``torch.nn.init``-style callable (default
            ``partial(nn.init.normal_, mean=0, std=0.1)``).
        untransformed_scale_initializer: the same for ``untransformed_scale`` (default
            ``partial(nn.init.normal_, mean=-3, std=0.1)``: a scale near ``softplus(-3) = 0.049``).
        loc_regularizer: optional ``loc -> 0-dim tensor`` recorded as an added loss on each
            forward (:func:`~problayers.collect_losses`).
        untransformed_scale_regularizer: the same for ``untransformed_scale``.

    Returns:
        ``fn(shape, dtype=None) -> nn.Module`` (picklable); the module's ``forward`` (input
        ignored) returns ``(loc, scale)``, tensors of shape ``shape`` (``scale`` ``None`` if
        ``is_singular``).

    Example::

        >>> fn = pl.default_loc_scale_fn()
        >>> loc, scale = fn((2, 3))()
        >>> loc.shape, bool((scale > 0).all()), pl.default_loc_scale_fn(is_singular=True)(4)()[1]
        (torch.Size([2, 3]), True, None)
    """
    inits = (loc_initializer, untransformed_scale_initializer)
    return _Fn(_LocScale, *_checked(is_singular, inits, (loc_regularizer, untransformed_scale_regularizer)))


def default_mean_field_normal_fn(
    is_singular: bool = False,
    loc_initializer: Initializer = _LOC_INIT,
    untransformed_scale_initializer: Initializer = _SCALE_INIT,
    loc_regularizer: Regularizer | None = None,
    untransformed_scale_regularizer: Regularizer | None = None,
) -> Callable[..., nn.Module]:
    """A ``(shape, dtype) -> nn.Module`` posterior fn: a trainable mean-field Normal (TFP's default).

    As TFP's ``tfp.layers.default_mean_field_normal_fn``; with the default arguments its
    modules are distributed as :class:`~problayers.MeanFieldNormal` (same parameters, same
    initialization). Pass it as a weight layer's ``kernel_posterior_fn``/``bias_posterior_fn``.

    Args:
        is_singular: the ``scale -> 0`` limit, a point mass at ``loc`` (TFP's ``Deterministic``;
            default ``False``). Its KL to a prior ``p`` is ``-p.log_prob(loc)``; not for a local
            reparameterization layer's kernel (it needs a Normal), fine for its bias.
        loc_initializer: fills ``loc`` in place, a ``torch.nn.init``-style callable (default
            ``partial(nn.init.normal_, mean=0, std=0.1)``).
        untransformed_scale_initializer: the same for ``untransformed_scale`` (default
            ``partial(nn.init.normal_, mean=-3, std=0.1)``: a scale near ``softplus(-3) = 0.049``).
        loc_regularizer: optional ``loc -> 0-dim tensor`` recorded as an added loss on each
            forward (:func:`~problayers.collect_losses`).
        untransformed_scale_regularizer: the same for ``untransformed_scale``.

    Returns:
        ``fn(shape, dtype=None) -> nn.Module`` (picklable); the module's ``forward`` (input
        ignored) returns ``Independent(Normal(loc, eps + softplus(untransformed_scale)),
        len(shape))`` (batch ``()``, event ``shape``), or the point mass with those shapes.

    Example::

        >>> layer = pl.DenseFlipout(3, 2, kernel_posterior_fn=pl.default_mean_field_normal_fn())
        >>> q = layer.kernel_posterior()
        >>> q.batch_shape, q.event_shape, layer(torch.zeros(5, 3)).shape
        (torch.Size([]), torch.Size([2, 3]), torch.Size([5, 2]))
    """
    inits = (loc_initializer, untransformed_scale_initializer)
    regularizers = (loc_regularizer, untransformed_scale_regularizer)
    return _Fn(_MeanFieldNormal, *_checked(is_singular, inits, regularizers))


def default_multivariate_normal_fn(shape: Shape, dtype: torch.dtype | None = None) -> nn.Module:
    """The fixed standard normal prior fn (TFP's ``tfp.layers.default_multivariate_normal_fn``).

    TFP's default ``kernel_prior_fn``, itself the ``fn`` (not a maker of one): pass
    ``kernel_prior_fn=pl.default_multivariate_normal_fn``. The weight layers' default,
    :class:`~problayers.StandardNormal`, is the same prior.

    Args:
        shape: the weight tensor's shape (an int or a tuple of positive ints).
        dtype: the buffers' dtype (default ``None``: ``torch.get_default_dtype()``).

    Returns:
        A :class:`~problayers.StandardNormal`: input ignored, output ``Independent(Normal(0, 1),
        len(shape))`` with ``batch_shape`` ``()`` and ``event_shape`` ``shape``, no parameters.

    Example::

        >>> p = pl.default_multivariate_normal_fn((2, 3))
        >>> p().event_shape, p().mean.abs().sum().item(), len(list(p.parameters()))
        (torch.Size([2, 3]), 0.0, 0)
    """
    return StandardNormal(shape, dtype)
