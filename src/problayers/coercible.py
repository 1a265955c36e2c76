"""Tensor-coercible distributions: a ``Distribution`` that also acts as a tensor.

A distribution layer returns ``as_coercible(dist, convert_to_tensor_fn)``: an instance of a
subclass of ``type(dist)`` (so ``isinstance`` and ``kl_divergence`` dispatch see the original
class) that carries the same state as ``dist`` and, wherever a tensor is expected, stands for one
tensor computed once by ``convert_to_tensor_fn`` and cached:

* inside any torch function (``torch.*``, ``F.*``, ``nn`` layers): ``__torch_function__``;
* with arithmetic, comparison and bitwise operators, indexing and ``numpy.asarray``;
* for tensor attributes the distribution lacks (``.flatten()``, ``.to()``): ``__getattr__``.

``.shape``, ``.dtype``, ``.device`` and ``.ndim`` are known without a draw for the named
convert functions (``batch_shape + event_shape``, the parameters' dtype and device).
Where a name means something on both ``Tensor`` and ``Distribution`` (``mean``, ``mode``,
``variance``, ``stddev``, ``expand``, ``sample``, ``entropy``, ...) the distribution's meaning
wins. ``convert_to_tensor(x)`` (or ``x.tensor()``) gives the tensor explicitly.

Under ``torch.autocast`` the distribution's maths and the value run in fp32. Outputs pickle
(a callable convert function by reference) and deep-copy detached from the graph. Why it is
built so, and its caveats (the value of ``"mean"`` is the ``loc`` tensor itself, as torch's
``mean`` is: in-place changes to it change the distribution): docs/design.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributions as D

from ._state import first_floating_tensor, graph_tensors, in_inference_mode, requires_grad
from .convert import (
    TFP_METHOD_NAMES,
    ConvertFn,
    TensorValue,
    as_sample_shape,
    convert_to_tensor,
    resolve_convert_fn,
    scalars_like,
    unsupported,
)
from .precision import autocast_device, in_fp32

__all__ = ["TensorCoercible", "as_coercible", "base_class", "convert_to_tensor", "is_coercible"]


def base_class(dist: D.Distribution) -> type:
    """The class of ``dist``, or of the distribution it wraps where it is tensor-coercible."""
    return dist._tc_base if isinstance(dist, TensorCoercible) else type(dist)


def is_coercible(value: Any) -> bool:
    """Whether ``value`` is a tensor-coercible distribution."""
    return isinstance(value, TensorCoercible)


if TYPE_CHECKING:
    # For the type checker the mixin is a ``Distribution`` (it only ever sits in front of one);
    # at run time it is a plain mixin.
    _MixinBase = D.Distribution
else:
    _MixinBase = object


class TensorCoercible(TensorValue, _MixinBase):
    """Mixin placed in front of a ``Distribution`` class by :func:`as_coercible`.

    Not instantiated directly. ``tensor()`` computes (once) and returns the cached value;
    ``convert_to_tensor_fn`` is what computes it. ``distribution`` gives the plain distribution.
    """

    #: The distribution class this coercible class extends (set per cached subclass).
    _tc_base: type
    _tc_fn: Callable[[D.Distribution], Any]
    _tc_name: str | None
    _tc_value: torch.Tensor | None

    # -- the tensor value --------------------------------------------------------------------
    def tensor(self) -> torch.Tensor:
        """The cached tensor value (computed by ``convert_to_tensor_fn`` on first use, in fp32
        with autocast off under ``torch.autocast``). Read first with autograd off (a metric under
        ``no_grad``) from parameters that need grad, it is drawn with autograd on all the same:
        the loss reading it next gets this value with its graph; that read gets it detached."""
        value = self._tc_value
        if value is None:
            if self.__dict__.get("_tc_busy", False):  # d + 1, d.shape, torch.exp(d) inside the fn
                raise RuntimeError(
                    f"convert_to_tensor_fn of a {self._tc_base.__name__} output used the output "
                    "as a tensor (its own value, being computed); use the distribution's methods "
                    "(or, if two threads read one output first at once: read it in one first)"
                )
            grad = not torch.is_grad_enabled() and requires_grad(self.__dict__)
            if grad or in_inference_mode():
                # never an inference tensor (a later loss could not save it for backward), and
                # with its graph where the parameters have one
                with torch.inference_mode(False), torch.set_grad_enabled(grad):
                    value = self._tc_value = self._draw()
            else:  # the usual case (a training forward): drawn as it is
                value = self._tc_value = self._draw()
        return value.detach() if value.requires_grad and not torch.is_grad_enabled() else value

    def expand(self, batch_shape: Any, _instance: Any = None) -> D.Distribution:
        """torch's ``expand`` (the distribution's meaning): a tensor-coercible output of its own,
        with this one's ``convert_to_tensor_fn``, its value computed from it when asked."""
        new = super().expand(batch_shape, _instance)
        if isinstance(new, TensorCoercible) and "_tc_fn" not in new.__dict__:
            new._tc_fn, new._tc_name, new._tc_value = self._tc_fn, self._tc_name, None
        return new

    def __iter__(self) -> Any:  # a 0-dim value raises, as a 0-dim tensor does
        return iter(self.tensor())

    def _draw(self) -> torch.Tensor:
        device_type = autocast_device()
        self._tc_busy = True  # an attribute the function asks for is not the value's
        try:
            if device_type is None:
                value = self._tc_fn(self)
            else:
                with torch.autocast(device_type, enabled=False):
                    value = self._tc_fn(self)
        except NotImplementedError as exc:  # e.g. a mixture's mode: name the choice that asked
            raise unsupported(self._tc_name or self._tc_fn, self._tc_base, self.has_rsample, exc) from exc
        finally:
            self._tc_busy = False
        if isinstance(value, TensorCoercible):
            value = value.tensor()
        if isinstance(value, (int, float, list, np.ndarray)) and not isinstance(value, bool):
            # as TFP converts them: in the distribution's floating dtype, on its device
            like = first_floating_tensor(self)
            value = (
                torch.as_tensor(value)
                if like is None
                else torch.as_tensor(value, dtype=like.dtype, device=like.device)
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                "convert_to_tensor_fn must return a torch.Tensor, a number, a list or a numpy "
                f"array, got {type(value).__name__}"
            )
        return value

    @property
    def distribution(self) -> D.Distribution:
        """A plain (not tensor-coercible) copy of the wrapped distribution."""
        plain: D.Distribution = object.__new__(self._tc_base)
        plain.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_tc_")})
        return plain

    def _known(self) -> bool:
        """Whether shape/dtype/device follow from the distribution without the value."""
        return self._tc_value is None and self._tc_name is not None

    @property
    def shape(self) -> torch.Size:
        """The tensor value's shape (``batch_shape + event_shape`` for the named functions,
        known without drawing)."""
        if self._known():
            return self.batch_shape + self.event_shape
        return self.tensor().shape

    @property
    def ndim(self) -> int:
        """``len(self.shape)``."""
        return len(self.shape)

    def dim(self) -> int:
        """``len(self.shape)``, as ``Tensor.dim``."""
        return len(self.shape)

    def size(self, dim: int | None = None) -> torch.Size | int:
        """``self.shape`` (or one entry of it), as ``Tensor.size``."""
        return self.shape if dim is None else self.shape[dim]

    @property
    def dtype(self) -> torch.dtype:
        """The tensor value's dtype (the parameters' for the named functions, without drawing;
        ``torch.int64`` for a ``Categorical``'s sample or mode, ``Independent`` ones and mixtures
        of them too)."""
        if self._known():
            base: D.Distribution = self
            while isinstance(base, (D.Independent, D.MixtureSameFamily)):  # a mixture's draw: its component's
                base = base.base_dist if isinstance(base, D.Independent) else base.component_distribution
            if isinstance(base, D.Categorical) and self._tc_name in ("auto", "sample", "mode"):
                return torch.int64
            like = first_floating_tensor(self)
            if like is not None:
                return like.dtype
        return self.tensor().dtype

    @property
    def device(self) -> torch.device:
        """The tensor value's device (the parameters' for the named functions, without drawing)."""
        if self._known():
            like = first_floating_tensor(self)
            if like is not None:
                return like.device
        return self.tensor().device

    # -- the distribution's maths in fp32 under autocast ---------------------------------------
    # An int sample_shape is taken as TFP takes it: (n,).
    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] | int = ()) -> torch.Tensor:
        return in_fp32(super().rsample, as_sample_shape(sample_shape))

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] | int = ()) -> torch.Tensor:
        return in_fp32(super().sample, as_sample_shape(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return in_fp32(super().log_prob, convert_to_tensor(value))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        return in_fp32(super().cdf, convert_to_tensor(value))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return in_fp32(super().icdf, convert_to_tensor(value))

    def entropy(self) -> torch.Tensor:
        return in_fp32(super().entropy)

    # -- acting as a tensor ---------------------------------------------------------------------
    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        args = convert_to_tensor(tuple(args))
        kwargs = convert_to_tensor(kwargs or {})
        if func is torch.broadcast_tensors:
            args = scalars_like(args)
        return func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the name is not the distribution's.
        missing = f"{type(self).__name__} has no attribute {name!r}"
        if name.startswith("_"):
            raise AttributeError(missing)
        if name in TFP_METHOD_NAMES:  # TFP's Distribution methods: not the tensor value's (quantile)
            raise AttributeError(f"{missing}: TFP's Distribution.{name} is {TFP_METHOD_NAMES[name]} in torch")
        base = self.__dict__.get("base_dist")
        if name in ("logits", "probs") and isinstance(self, D.Independent) and hasattr(base, name):
            # TFP's IndependentBernoulli output has its Bernoulli's logits and probs
            # (tfd.Bernoulli.logits as convert_to_tensor_fn, in TFP's VAE example).
            return getattr(base, name)
        if self.__dict__.get("_tc_busy", False):
            raise AttributeError(f"{missing} (its convert_to_tensor_fn asked for it)")
        value = self.tensor()
        if not hasattr(value, name):
            raise AttributeError(
                f"{missing}: neither the {self._tc_base.__name__} nor its tensor value has it"
            )
        return getattr(value, name)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        array = self.tensor().detach().cpu().numpy()
        return array if dtype is None else array.astype(dtype)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.tensor()[convert_to_tensor(index)]

    # -- copying and pickling ------------------------------------------------------------------
    def __reduce__(self) -> tuple[Callable[..., D.Distribution], tuple[Any, ...]]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_tc_")}
        fn = self._tc_name if self._tc_name is not None else self._tc_fn
        return _rebuild, (self._tc_base, state, fn, self._tc_value)

    def __deepcopy__(self, memo: dict) -> TensorCoercible:
        # A copy detached from the autograd graph (deepcopy refuses non-leaf tensors).
        for tensor in graph_tensors(self.__dict__):
            if id(tensor) not in memo:
                memo[id(tensor)] = tensor.detach().clone()
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def __repr__(self) -> str:
        how = self._tc_name or getattr(self._tc_fn, "__name__", "a callable")
        drawn = "drawn" if self._tc_value is not None else "not drawn yet"
        shape = (
            tuple(self._tc_value.shape)
            if self._tc_value is not None
            else (tuple(self.batch_shape + self.event_shape) if self._tc_name is not None else "?")
        )
        return f"TensorCoercible({self.distribution!r}, tensor: {how}, shape {shape}, {drawn})"


def _rebuild(base: type, state: dict, fn: ConvertFn, value: torch.Tensor | None) -> D.Distribution:
    """Unpickle a tensor-coercible distribution (see ``TensorCoercible.__reduce__``)."""
    out = _new_coercible(base, state, fn)
    out._tc_value = value
    return out


_CLASS_CACHE: dict[type, type] = {}


def _coercible_class(dist_cls: type) -> type:
    """The cached ``TensorCoercible`` subclass of ``dist_cls`` (made once per class; the
    ``type`` call carries ``__module__`` so that no attribute of a type is set afterwards)."""
    cls = _CLASS_CACHE.get(dist_cls)
    if cls is None:
        name = f"_TensorCoercible{dist_cls.__name__}"
        cls = type(name, (TensorCoercible, dist_cls), {"__module__": __name__, "_tc_base": dist_cls})
        _CLASS_CACHE[dist_cls] = cls
    return cls


def _warm_class_cache() -> None:
    """Every ``torch.distributions`` class's coercible class, made up front (see design.md)."""
    for value in vars(D).values():
        if isinstance(value, type) and issubclass(value, D.Distribution) and value is not D.Distribution:
            _coercible_class(value)


_warm_class_cache()


def _new_coercible(base: type, state: dict, convert_to_tensor_fn: ConvertFn) -> TensorCoercible:
    out: TensorCoercible = object.__new__(_coercible_class(base))
    out.__dict__.update(state)
    out._tc_fn = resolve_convert_fn(convert_to_tensor_fn, base, out.has_rsample)
    out._tc_name = convert_to_tensor_fn if isinstance(convert_to_tensor_fn, str) else None
    out._tc_value = None
    return out


def as_coercible(dist: D.Distribution, convert_to_tensor_fn: ConvertFn = "rsample") -> TensorCoercible:
    """Make ``dist`` tensor-coercible.

    Args:
        dist: any ``torch.distributions.Distribution`` with ``batch_shape`` B and ``event_shape`` E.
        convert_to_tensor_fn: ``"rsample"`` (default; gradients flow through the
            reparameterized sample), ``"auto"`` (TFP's default: ``rsample`` where the
            distribution has one; a mixture of components with ``rsample`` through the drawn
            component, as TFP's; else ``sample``), ``"sample"``, ``"mean"``, ``"mode"``,
            ``"stddev"``, ``"variance"``, or a callable ``Distribution -> Tensor`` (or a number,
            a list or a numpy array, made a tensor in the distribution's dtype, as TFP does).

    Returns:
        An instance of a subclass of ``type(dist)`` with the same state (``batch_shape`` B,
        ``event_shape`` E) whose tensor value, of shape ``B + E`` for the named functions, is
        computed lazily on first use and cached. ``dist`` itself is not changed.

    Example::

        >>> q = as_coercible(D.Normal(torch.zeros(3), 1.0), "mean")
        >>> q.shape, (q + 1).tolist()
        (torch.Size([3]), [1.0, 1.0, 1.0])
    """
    if not isinstance(dist, D.Distribution):
        raise TypeError(f"dist: expected a torch.distributions.Distribution, got {type(dist).__name__}")
    base = base_class(dist)
    state = {k: v for k, v in dist.__dict__.items() if not k.startswith("_tc_")}
    return _new_coercible(base, state, convert_to_tensor_fn)
