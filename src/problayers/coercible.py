"""Tensor-coercible distributions: a ``Distribution`` that also acts as a tensor.

A distribution layer returns ``as_coercible(dist, convert_to_tensor_fn)``: an instance of a
subclass of ``type(dist)`` (so ``isinstance`` and ``kl_divergence`` dispatch see the original
class) that carries the same state as ``dist`` and, wherever a tensor is expected, stands for one
tensor computed once by ``convert_to_tensor_fn`` and cached:

* inside any torch function (``torch.*``, ``torch.nn.functional.*``, ``nn`` layers) through
  ``__torch_function__``;
* with arithmetic and comparison operators, indexing and ``numpy.asarray``;
* for tensor attributes and methods the distribution does not have (``.shape``, ``.flatten()``,
  ``.view()``, ``.to()``, ``.dtype``, ...), through ``__getattr__``.

Where a name means something on both ``Tensor`` and ``Distribution`` (``mean``, ``mode``,
``variance``, ``stddev``, ``expand``, ``sample``, ``entropy``, ...) the distribution's meaning
wins. ``convert_to_tensor(x)`` (or ``x.tensor()``) gives the tensor explicitly, e.g.
``x.tensor().mean()`` for the tensor's mean.

Caveat: a distribution that calls a clashing method on its parameters (``MultivariateNormal``
calls ``loc.expand``) needs ``convert_to_tensor(x)`` as that parameter.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.distributions as D

__all__ = [
    "CONVERT_TO_TENSOR_FNS",
    "TensorCoercible",
    "as_coercible",
    "convert_to_tensor",
    "is_coercible",
]

ConvertFn = str | Callable[[D.Distribution], torch.Tensor]

#: The named ways of turning a distribution into its tensor value.
CONVERT_TO_TENSOR_FNS: dict[str, Callable[[D.Distribution], torch.Tensor]] = {
    "rsample": lambda d: d.rsample(),
    "sample": lambda d: d.sample(),
    "mean": lambda d: d.mean,
    "mode": lambda d: d.mode,
}


def _resolve_convert_fn(fn: ConvertFn, dist: D.Distribution) -> Callable[[D.Distribution], torch.Tensor]:
    """Validate ``convert_to_tensor_fn`` once, at construction, with a clear error."""
    if callable(fn):
        return fn
    if not isinstance(fn, str) or fn not in CONVERT_TO_TENSOR_FNS:
        raise ValueError(
            f"convert_to_tensor_fn: expected one of {sorted(CONVERT_TO_TENSOR_FNS)} or a callable "
            f"taking a Distribution, got {fn!r}"
        )
    if fn == "rsample" and not dist.has_rsample:
        raise ValueError(
            f"convert_to_tensor_fn='rsample': {type(dist).__name__} has no reparameterized sampler "
            "(has_rsample is False); use 'sample', 'mean', 'mode' or a callable"
        )
    return CONVERT_TO_TENSOR_FNS[fn]


def convert_to_tensor(value: Any) -> Any:
    """The tensor that ``value`` stands for.

    A tensor-coercible distribution gives its cached tensor value (shape
    ``sample_shape + batch_shape + event_shape`` as produced by its ``convert_to_tensor_fn``);
    lists, tuples and dicts are converted element-wise; anything else is returned unchanged.
    """
    if isinstance(value, TensorCoercible):
        return value.tensor()
    if isinstance(value, (list, tuple)):
        converted = [convert_to_tensor(v) for v in value]
        return type(value)(converted) if not hasattr(value, "_fields") else type(value)(*converted)
    if isinstance(value, dict):
        return {k: convert_to_tensor(v) for k, v in value.items()}
    return value


def is_coercible(value: Any) -> bool:
    """Whether ``value`` is a tensor-coercible distribution."""
    return isinstance(value, TensorCoercible)


def _binary(op: Callable[[Any, Any], Any], reflected: bool = False) -> Callable[[Any, Any], Any]:
    if reflected:
        return lambda self, other: op(convert_to_tensor(other), self.tensor())
    return lambda self, other: op(self.tensor(), convert_to_tensor(other))


class TensorCoercible:
    """Mixin placed in front of a ``Distribution`` class by :func:`as_coercible`.

    Not instantiated directly. ``tensor()`` computes (once) and returns the cached value;
    ``convert_to_tensor_fn`` is what computes it.
    """

    _tc_fn: Callable[[D.Distribution], torch.Tensor]
    _tc_value: torch.Tensor | None

    def tensor(self) -> torch.Tensor:
        """The cached tensor value (computed by ``convert_to_tensor_fn`` on first use)."""
        if self._tc_value is None:
            value = self._tc_fn(self)
            if isinstance(value, TensorCoercible):
                value = value.tensor()
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"convert_to_tensor_fn must return a torch.Tensor, got {type(value).__name__}"
                )
            self._tc_value = value
        return self._tc_value

    @property
    def distribution(self) -> D.Distribution:
        """A plain (not tensor-coercible) copy of the wrapped distribution."""
        plain = object.__new__(type(self).__mro__[2])
        plain.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_tc_")})
        return plain

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        args = convert_to_tensor(tuple(args))
        kwargs = convert_to_tensor(kwargs or {})
        if func is torch.broadcast_tensors:
            args = _scalars_like(args)
        return func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the name is not the distribution's.
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        return getattr(self.tensor(), name)

    def __array__(self, dtype=None, copy=None):
        array = self.tensor().detach().cpu().numpy()
        return array if dtype is None else array.astype(dtype)

    def __getitem__(self, index):
        return self.tensor()[convert_to_tensor(index)]

    def __neg__(self):
        return -self.tensor()

    def __pos__(self):
        return self.tensor()

    def __abs__(self):
        return abs(self.tensor())

    __add__ = _binary(operator.add)
    __radd__ = _binary(operator.add, reflected=True)
    __sub__ = _binary(operator.sub)
    __rsub__ = _binary(operator.sub, reflected=True)
    __mul__ = _binary(operator.mul)
    __rmul__ = _binary(operator.mul, reflected=True)
    __truediv__ = _binary(operator.truediv)
    __rtruediv__ = _binary(operator.truediv, reflected=True)
    __floordiv__ = _binary(operator.floordiv)
    __rfloordiv__ = _binary(operator.floordiv, reflected=True)
    __mod__ = _binary(operator.mod)
    __rmod__ = _binary(operator.mod, reflected=True)
    __pow__ = _binary(operator.pow)
    __rpow__ = _binary(operator.pow, reflected=True)
    __matmul__ = _binary(operator.matmul)
    __rmatmul__ = _binary(operator.matmul, reflected=True)
    __lt__ = _binary(operator.lt)
    __le__ = _binary(operator.le)
    __gt__ = _binary(operator.gt)
    __ge__ = _binary(operator.ge)

    def __repr__(self) -> str:
        return f"TensorCoercible({self.distribution!r})"


def _scalars_like(tensors: tuple) -> tuple:
    """Move 0-dim CPU tensors (numbers that ``broadcast_all`` turned into default-dtype CPU
    tensors because the tensor-like beside them is not a ``Tensor``) to the real tensors'
    device and floating dtype, as ``broadcast_all`` does for plain tensors."""
    reference = next((t for t in tensors if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    if reference is None:
        return tensors
    out = []
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dim() == 0 and t.device != reference.device:
            t = t.to(reference.device)
        if (
            isinstance(t, torch.Tensor)
            and t.dim() == 0
            and t.dtype == torch.get_default_dtype()
            and reference.is_floating_point()
        ):
            t = t.to(reference.dtype)
        out.append(t)
    return tuple(out)


_CLASS_CACHE: dict[type, type] = {}


def _coercible_class(dist_cls: type) -> type:
    cls = _CLASS_CACHE.get(dist_cls)
    if cls is None:
        cls = type(f"_TensorCoercible{dist_cls.__name__}", (TensorCoercible, dist_cls), {})
        cls.__module__ = __name__
        _CLASS_CACHE[dist_cls] = cls
    return cls


def as_coercible(dist: D.Distribution, convert_to_tensor_fn: ConvertFn = "rsample") -> D.Distribution:
    """Make ``dist`` tensor-coercible.

    Args:
        dist: any ``torch.distributions.Distribution`` with ``batch_shape`` B and ``event_shape`` E.
        convert_to_tensor_fn: ``"rsample"`` (default; gradients flow through the
            reparameterized sample), ``"sample"``, ``"mean"``, ``"mode"``, or a callable
            ``Distribution -> Tensor``.

    Returns:
        An instance of a subclass of ``type(dist)`` with the same state (``batch_shape`` B,
        ``event_shape`` E) whose tensor value, of shape ``B + E`` for the named functions, is
        computed lazily on first use and cached.
    """
    if not isinstance(dist, D.Distribution):
        raise TypeError(f"dist: expected a torch.distributions.Distribution, got {type(dist).__name__}")
    if isinstance(dist, TensorCoercible):
        dist = dist.distribution
    fn = _resolve_convert_fn(convert_to_tensor_fn, dist)
    out = copy.copy(dist)
    out.__class__ = _coercible_class(type(dist))
    out._tc_fn = fn
    out._tc_value = None
    return out
