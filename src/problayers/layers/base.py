"""``DistributionLambda``, the base of every distribution layer, and its argument checks.

A distribution layer is an ``nn.Module`` whose ``forward`` returns a tensor-coercible
distribution (:mod:`problayers.coercible`). Layers with parameters also have a static
``params_size(...)`` (how many inputs the layer consumes per example) and a pure static
``new(params, ...)`` (the distribution those inputs define), as in ``tfp.layers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import SupportsIndex, TypeAlias

import torch
import torch.distributions as D
from torch import nn

from ..coercible import as_coercible, convert_to_tensor
from ..convert import ConvertFn, check_convert_fn
from ..losses import added_losses_enabled, init_added_losses, set_added_loss
from ..precision import in_fp32
from ._args import integer

__all__ = [
    "Activation",
    "DistributionLambda",
    "Shape",
    "Size",
    "SizeOrOneTuple",
    "check_params",
    "event_size",
    "normalize_event_shape",
    "normalize_event_size",
]

#: A size: an int, a numpy integer or a 0-dim integer tensor (taken with ``operator.index``).
Size: TypeAlias = SupportsIndex
#: A size, or TFP's one-element shape of it (``(K,)``): the dimension of a vector event.
SizeOrOneTuple: TypeAlias = SupportsIndex | tuple[SupportsIndex]
#: An event shape: a size, or an iterable of sizes (``()``: a scalar event).
Shape: TypeAlias = SupportsIndex | Iterable[SupportsIndex]
#: An activation: a function of a tensor, one of Keras' names (``"relu"``, see
#: :data:`problayers.layers._args.ACTIVATIONS`), or ``None`` (none).
Activation: TypeAlias = Callable[[torch.Tensor], torch.Tensor] | str | None


def normalize_event_shape(event_shape: Shape, name: str = "event_shape") -> tuple[int, ...]:
    """An int or an iterable of positive ints (numpy integers and 0-dim integer tensors too) ->
    ``tuple``; ``()`` is a scalar event. Anything else raises naming ``name``."""
    what = "a positive int or a tuple of them"
    if isinstance(event_shape, (str, bytes, bool)):
        raise TypeError(f"{name}: expected {what}, got {type(event_shape).__name__} {event_shape!r}")
    if (isinstance(event_shape, torch.Tensor) and event_shape.dim() == 0) or not hasattr(
        event_shape, "__iter__"
    ):
        event_shape = (integer(event_shape, name, what),)
    try:
        shape = tuple(integer(n, name, what) for n in event_shape)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"{name}: expected {what}, got {event_shape!r}"[:160]) from None
    if not all(n > 0 for n in shape):
        raise ValueError(f"{name}: expected positive ints, got {shape!r}")
    return shape


def normalize_event_size(value, name: str = "event_size") -> int:
    """One positive int (or a 1-tuple of one), e.g. ``MultivariateNormalTriL``'s dimension."""
    shape = normalize_event_shape(value, name)
    if len(shape) != 1:
        raise ValueError(f"{name}: expected one positive int (the dimension), got {shape!r}")
    return shape[0]


class params_size_of:
    """Decorator for a layer's ``params_size``: static on the class, as in tfp.layers
    (``IndependentNormal.params_size((1, 28, 28))``); on an instance called without arguments
    it uses that instance's settings (``layer.params_size()``), named by ``settings``.
    ``torch.compile`` does not
    trace through this descriptor: a layer's ``new`` computes its size without it."""

    def __init__(self, *settings: str) -> None:
        self.settings = settings

    def __call__(self, fn: Callable[..., int]) -> params_size_of:
        self.fn = fn
        self.__doc__ = fn.__doc__
        return self

    def __get__(self, obj, cls) -> Callable[..., int]:
        fn = self.fn
        if obj is None:
            return fn

        def bound(*args, **kwargs) -> int:
            if args or kwargs:
                return fn(*args, **kwargs)
            return fn(*(getattr(obj, name) for name in self.settings))

        bound.__doc__ = self.fn.__doc__
        return bound


def tensor_input(layer: str, x, what: str = "input") -> torch.Tensor:
    """``x`` as a tensor, or raise naming ``layer``. Another layer's output (a tensor-coercible
    distribution) gives its tensor value, as Keras converts a TFP layer's output for the next."""
    x = convert_to_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: expected {what} as a torch.Tensor, got {type(x).__name__}")
    return x


def check_params(layer: str, params, expected: int) -> torch.Tensor:
    """Coerce ``params`` to a tensor of shape ``(*batch, expected)`` or raise naming ``layer``."""
    params = tensor_input(layer, params, "params")
    if params.dim() == 0 or params.shape[-1] != expected:
        raise ValueError(
            f"{layer}: expected params of shape (..., {expected}) (params_size), "
            f"got shape {tuple(params.shape)}"
        )
    if not params.is_floating_point():
        raise TypeError(f"{layer}: expected floating-point params, got dtype {params.dtype}")
    return params


def event_size(event_shape: tuple[int, ...]) -> int:
    return math.prod(event_shape)


class DistributionLambda(nn.Module):
    """A layer whose output is a distribution that also acts as a tensor.

    The base of every distribution layer (``tfp.layers.DistributionLambda``): ``forward`` calls
    ``make_distribution_fn`` (or a subclass's ``make_distribution``) and makes the result
    tensor-coercible (:func:`~problayers.as_coercible`), so it can feed the next layer directly.

    Args:
        make_distribution_fn: ``(*inputs) -> Distribution``. Default ``None``: a subclass
            overrides ``make_distribution`` instead.
        convert_to_tensor_fn: how the output becomes a tensor when one is needed: ``"auto"``
            (default, TFP's ``sample``: ``rsample()`` where the distribution has one, so
            gradients flow through the sample; a mixture of components with ``rsample`` through
            the drawn component, as TFP's; else ``sample()``), ``"rsample"``, ``"sample"``, ``"mean"``,
            ``"mode"``, ``"stddev"``, ``"variance"`` or a callable ``Distribution -> Tensor``
            (or a number, a list or a numpy array: a tensor in the distribution's dtype).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` (e.g.
            :class:`~problayers.KLDivergenceRegularizer`); its value on each output is recorded
            as an added loss (:func:`~problayers.collect_losses`). Default ``None``: none.

    Input: whatever ``make_distribution_fn`` takes. Output: a tensor-coercible distribution with
    the ``batch_shape``/``event_shape`` ``make_distribution_fn`` gives.

    Example::

        >>> layer = pl.DistributionLambda(lambda t: D.Normal(t, 1.0), convert_to_tensor_fn="mean")
        >>> out = layer(torch.zeros(4, 3))
        >>> out.batch_shape, out.event_shape, (out + 1).shape
        (torch.Size([4, 3]), torch.Size([]), torch.Size([4, 3]))
    """

    def __init__(
        self,
        make_distribution_fn: Callable[..., D.Distribution] | None = None,
        convert_to_tensor_fn: ConvertFn = "auto",
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if make_distribution_fn is not None and not callable(make_distribution_fn):
            raise TypeError(
                f"make_distribution_fn: expected a callable, got {type(make_distribution_fn).__name__}"
            )
        check_convert_fn(convert_to_tensor_fn)
        if activity_regularizer is not None and not callable(activity_regularizer):
            raise TypeError(
                f"activity_regularizer: expected a callable, got {type(activity_regularizer).__name__}"
            )
        self.make_distribution_fn = make_distribution_fn
        self.convert_to_tensor_fn = convert_to_tensor_fn
        self.activity_regularizer = activity_regularizer
        init_added_losses(self)

    def make_distribution(self, *args, **kwargs) -> D.Distribution:
        if self.make_distribution_fn is None:
            raise NotImplementedError(f"{type(self).__name__} has no make_distribution_fn")
        return self.make_distribution_fn(*args, **kwargs)

    def forward(self, *args, **kwargs) -> D.Distribution:
        # Under autocast the distribution is built (and its regularizer evaluated) in fp32.
        return in_fp32(self._forward, args, kwargs)

    def _forward(self, args: tuple, kwargs: dict) -> D.Distribution:
        dist = self.make_distribution(*args, **kwargs)
        if not isinstance(dist, D.Distribution):
            raise TypeError(
                f"{type(self).__name__}: make_distribution_fn returned {type(dist).__name__}, "
                "expected a torch.distributions.Distribution"
            )
        out = as_coercible(dist, self.convert_to_tensor_fn)
        if self.activity_regularizer is not None and added_losses_enabled():
            set_added_loss(self, "activity_regularizer", self.activity_regularizer(out))
        return out

    def extra_repr(self) -> str:
        fn = self.convert_to_tensor_fn
        return f"convert_to_tensor_fn={fn if isinstance(fn, str) else getattr(fn, '__name__', fn)!s}"
