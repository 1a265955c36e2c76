"""The ways a distribution becomes its tensor value: a layer's ``convert_to_tensor_fn``.

A name from :data:`CONVERT_TO_TENSOR_FNS` (TFP's ``tfd.Distribution.sample`` and friends) or any
callable ``Distribution -> Tensor``; checked once, where a layer or a coercible is made
(:func:`check_convert_fn`). Also how TFP's calls meet torch's: an integer ``sample_shape``
(:func:`as_sample_shape`), TFP method names torch spells otherwise (:data:`TFP_METHOD_NAMES`),
and numbers beside a tensor value in ``torch.broadcast_tensors`` (:func:`scalars_like`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributions as D

__all__ = [
    "CONVERT_TO_TENSOR_FNS",
    "TFP_METHOD_NAMES",
    "ConvertFn",
    "TensorValue",
    "as_sample_shape",
    "check_convert_fn",
    "convert_to_tensor",
    "resolve_convert_fn",
    "scalars_like",
    "unsupported",
]

ConvertFn = str | Callable[[D.Distribution], Any]


def _mode(dist: D.Distribution) -> torch.Tensor:
    """``dist.mode``, except a Bernoulli's (``Independent`` ones too) at ``p = 1/2``: TFP's 0
    (``logits > 0``, or ``probs > 0.5`` where made from probabilities) where torch's is NaN."""
    base = dist
    while isinstance(base, D.Independent):
        base = base.base_dist
    if not isinstance(base, D.Bernoulli):
        return dist.mode
    if "logits" in vars(base):  # made from logits (or they were computed already)
        return (base.logits > 0).to(base.logits.dtype)
    return (base.probs > 0.5).to(base.probs.dtype)


def _mixture_draw(mixture: D.MixtureSameFamily) -> torch.Tensor:
    """A draw of ``mixture`` (shape: batch + event) through its components' ``rsample``, as
    TFP's ``MixtureSameFamily.sample``: the gradient reaches the drawn component's parameters,
    none the mixing weights (so it is no ``rsample``: the mixture is not reparameterized). The
    draw is torch's ``sample()``'s: the component index first, then every component's."""
    index = mixture.mixture_distribution.sample()  # (*B)
    draws = mixture.component_distribution.rsample()  # (*B, K, *E)
    event = mixture.event_shape
    index = index.reshape(*index.shape, 1, *(1 for _ in event)).expand(*index.shape, 1, *event)  # (*B, 1, *E)
    axis = len(mixture.batch_shape)
    return draws.gather(axis, index).squeeze(axis)  # (*B, *E)


def _pathwise(dist: D.Distribution) -> torch.Tensor | None:
    """A draw of ``dist`` with the gradient of TFP's ``sample``, or ``None`` where that has none:
    ``rsample()`` where ``dist`` has one; a mixture of reparameterizable components through the
    drawn component (:func:`_mixture_draw`); ``Independent`` and ``TransformedDistribution``
    over such a draw as torch's ``sample()`` makes theirs (the same draw, then the transforms)."""
    if dist.has_rsample:
        return dist.rsample()
    if isinstance(dist, D.Independent):  # reinterprets dimensions: the same draw
        return _pathwise(dist.base_dist)
    if isinstance(dist, D.TransformedDistribution):
        x = _pathwise(dist.base_dist)
        if x is not None:
            for transform in dist.transforms:
                x = transform(x)
        return x
    if isinstance(dist, D.MixtureSameFamily) and dist.component_distribution.has_rsample:
        return _mixture_draw(dist)
    return None


def _auto(dist: D.Distribution) -> torch.Tensor:
    """TFP's ``tfd.Distribution.sample`` as a value: :func:`_pathwise` where it draws, else
    ``sample()`` (no gradient: a discrete distribution's, a ``VonMises``')."""
    value = _pathwise(dist)
    return dist.sample() if value is None else value


#: The named ways of turning a distribution into its tensor value.
CONVERT_TO_TENSOR_FNS: dict[str, Callable[[D.Distribution], torch.Tensor]] = {
    "auto": _auto,  # TFP's default, tfd.Distribution.sample (reparameterized where it can be)
    "rsample": lambda d: d.rsample(),
    "sample": lambda d: d.sample(),
    "mean": lambda d: d.mean,
    "mode": lambda d: _mode(d),
    "stddev": lambda d: d.stddev,
    "variance": lambda d: d.variance,
}


def check_convert_fn(fn: Any) -> ConvertFn:
    """``fn`` if it is a callable or one of the names, else a one-line ``ValueError``."""
    if callable(fn) or (isinstance(fn, str) and fn in CONVERT_TO_TENSOR_FNS):
        return fn
    getter = getattr(fn, "fget", None) or getattr(fn, "wrapped", None)  # property, torch's lazy_property
    if callable(getter):  # TFP's tfd.Bernoulli.logits is a method; torch's is a property
        name = getattr(getter, "__qualname__", getattr(getter, "__name__", "?"))
        attr = name.rsplit(".", 1)[-1]
        raise ValueError(
            f"convert_to_tensor_fn: got the property {name} (a TFP method, a property in torch); "
            f"pass lambda d: d.{attr}" + (f' or "{attr}"' if attr in CONVERT_TO_TENSOR_FNS else "")
        )
    raise ValueError(
        f"convert_to_tensor_fn: expected one of {sorted(CONVERT_TO_TENSOR_FNS)} or a callable "
        f"taking a Distribution, got {fn!r}"
    )


#: TFP ``Distribution`` methods torch names otherwise; asked of an output, they are an error
#: naming torch's form (``quantile`` would otherwise be the tensor value's quantile).
TFP_METHOD_NAMES = {
    "prob": "log_prob(x).exp()",
    "quantile": "icdf(p)",
    "covariance": "the covariance_matrix property",
    "log_cdf": "cdf(x).log()",
    "survival_function": "1 - cdf(x)",
    "log_survival_function": "(1 - cdf(x)).log()",
    "cross_entropy": "torch.distributions.kl_divergence(q, p) + q.entropy()",
    "kl_divergence": "torch.distributions.kl_divergence(q, p)",
}


def as_sample_shape(sample_shape: Any) -> Any:
    """TFP's integer ``sample_shape`` (a Python, numpy or 0-dim tensor integer) as torch's ``(n,)``."""
    if isinstance(sample_shape, (torch.Size, list, tuple, bool)):
        return sample_shape
    try:
        return torch.Size((operator.index(sample_shape),))
    except TypeError:
        return sample_shape


def resolve_convert_fn(fn: ConvertFn, base: type, has_rsample: bool) -> Callable[[D.Distribution], Any]:
    """``fn`` checked (:func:`check_convert_fn`) and, where it is a name, its function;
    ``"rsample"`` for a distribution class ``base`` without a reparameterized sampler is a
    one-line ``ValueError``."""
    fn = check_convert_fn(fn)
    if not isinstance(fn, str):
        return fn
    if fn == "rsample" and not has_rsample:
        raise ValueError(
            f"convert_to_tensor_fn='rsample': {base.__name__} has no reparameterized "
            f"sampler (has_rsample is False); use {_alternatives(fn, base, has_rsample)}"
        )
    return CONVERT_TO_TENSOR_FNS[fn]


def _alternatives(fn: ConvertFn, base: type, has_rsample: bool) -> str:
    """The names other than ``fn`` that the class ``base`` supports, as a message's choice:
    ``rsample`` where it has one, ``mean``/``mode`` where it overrides ``Distribution``'s (which
    raise); a wrapper such as ``Independent`` is taken at its word."""
    names = ["auto", "sample"] + (["rsample"] if has_rsample else [])
    names += [n for n in ("mean", "mode") if getattr(base, n, None) is not getattr(D.Distribution, n)]
    quoted = [repr(n) for n in names if n != fn]
    return ", ".join(quoted) + " or a callable"


def scalars_like(tensors: tuple) -> tuple:
    """The arguments of ``torch.broadcast_tensors`` with their 0-dim CPU tensors (numbers that
    ``broadcast_all`` made default-dtype CPU tensors because the tensor-like beside them is not
    a ``Tensor``) moved to the real tensors' device and floating dtype, as ``broadcast_all``
    does for plain tensors."""
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


def unsupported(
    fn: ConvertFn, base: type, has_rsample: bool, exc: NotImplementedError
) -> NotImplementedError:
    """The error of a ``convert_to_tensor_fn`` the distribution class ``base`` does not
    implement in torch (a mixture's ``mode``), naming the choice and what to choose instead."""
    how = repr(fn) if isinstance(fn, str) else getattr(fn, "__name__", "a callable")
    why = f" ({exc})" if str(exc) and "does not implement" not in str(exc) else ""  # not torch's own
    return NotImplementedError(
        f"convert_to_tensor_fn={how}: torch's {base.__name__} does not implement it{why}; "
        f"use {_alternatives(fn, base, has_rsample)}"
    )


def _unary(op: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda self: op(self.tensor())


def _operand(other: Any, value: torch.Tensor) -> Any:
    """The other side of an operator: a coercible's value, a numpy array as a tensor beside
    ``value`` (as TFP converts it; torch's operators refuse arrays), anything else as it is."""
    if isinstance(other, np.ndarray):
        return torch.as_tensor(other, device=value.device)
    return convert_to_tensor(other)


def _binary(op: Callable[[Any, Any], Any], reflected: bool = False) -> Callable[[Any, Any], Any]:
    def apply(self: Any, other: Any) -> Any:
        value = self.tensor()
        other = _operand(other, value)
        return op(other, value) if reflected else op(value, other)

    return apply


class TensorValue:
    """What acts as a tensor through a ``tensor()`` value: Python's operators on it (the base of
    :class:`~problayers.coercible.TensorCoercible`; numpy on the left defers to them, as to a
    ``Tensor``). ``==`` and ``hash`` stay the object's own."""

    def tensor(self) -> torch.Tensor:
        raise NotImplementedError

    __neg__ = _unary(operator.neg)
    __pos__ = _unary(operator.pos)
    __abs__ = _unary(operator.abs)
    __invert__ = _unary(operator.invert)
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
    __and__ = _binary(operator.and_)
    __rand__ = _binary(operator.and_, reflected=True)
    __or__ = _binary(operator.or_)
    __ror__ = _binary(operator.or_, reflected=True)
    __xor__ = _binary(operator.xor)
    __rxor__ = _binary(operator.xor, reflected=True)
    __lshift__ = _binary(operator.lshift)
    __rlshift__ = _binary(operator.lshift, reflected=True)
    __rshift__ = _binary(operator.rshift)
    __rrshift__ = _binary(operator.rshift, reflected=True)
    __float__ = _unary(float)
    __int__ = _unary(int)
    __lt__ = _binary(operator.lt)
    __le__ = _binary(operator.le)
    __gt__ = _binary(operator.gt)
    __ge__ = _binary(operator.ge)
    __array_priority__ = 1000  # numpy on the left defers to the operators here, as to a Tensor


def convert_to_tensor(value: Any) -> Any:
    """The tensor that ``value`` stands for.

    A tensor-coercible distribution gives its cached tensor value (shape
    ``sample_shape + batch_shape + event_shape`` as produced by its ``convert_to_tensor_fn``);
    lists, tuples and dicts are converted element-wise; anything else is returned unchanged.
    """
    if isinstance(value, TensorValue):
        return value.tensor()
    if isinstance(value, (list, tuple)):
        converted = [convert_to_tensor(v) for v in value]
        return type(value)(converted) if not hasattr(value, "_fields") else type(value)(*converted)
    if isinstance(value, dict):
        return {k: convert_to_tensor(v) for k, v in value.items()}
    return value
