"""Constructor-argument checks shared by the layers: each error names the argument."""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "activation_fn",
    "bias_flag",
    "boolean",
    "callable_or_none",
    "class_count",
    "divergence_fn",
    "finite_number",
    "floating_dtype",
    "integer",
    "non_negative_number",
    "positive_int",
    "positive_number",
    "run_initializer",
]

#: Keras' activation names (tfp.layers code passes them, ``activation="relu"``) as torch's
#: functions; only those defined the same way in both.
ACTIVATIONS = {
    "linear": None,
    "relu": torch.relu,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "swish": F.silu,
    "silu": F.silu,
    "exponential": torch.exp,
}


def integer(value, name: str, what: str = "a positive int") -> int:
    """``value`` as an ``int``: Python and numpy integers and 0-dim integer tensors are accepted
    (``operator.index``); ``bool``, strings, floats and anything else raise naming ``name``."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}"[:160]) from None


def positive_int(value, name: str) -> int:
    """``value`` as a positive ``int`` (integer-likes accepted, see :func:`integer`);
    ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    value = integer(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


def class_count(value, name: str = "event_size") -> int:
    """A number of classes as a positive ``int``: an integer, or TFP's event-shape form of it, a
    sequence of one (``(3,)``, ``[3]``, ``torch.Size([3])``)."""
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 1:
        value = value[0]
    return positive_int(value, name)


def non_negative_number(value, name: str) -> float | torch.Tensor:
    """``value`` if it is a finite number (a Python or numpy one, or a 0-dim tensor) ``>= 0``;
    raise naming ``name`` otherwise (NaN and inf included)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name}: expected a non-negative number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        raise ValueError(f"{name}: expected a number or a 0-dim tensor, got shape {tuple(value.shape)}")
    if not (isinstance(value, torch.Tensor) and value.is_meta):
        number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)  # a Parameter too
        if not (number >= 0 and math.isfinite(number)):
            raise ValueError(f"{name}: expected a finite number >= 0, got {number}")
    return value


def boolean(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (a numpy bool too); ``TypeError`` naming ``name``
    otherwise: the string ``"False"`` is true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}"[:160])
    return bool(value)


def bias_flag(value, name: str = "bias") -> bool:
    """:func:`boolean` for a weight layer's bias switch; an activation there (TFP's second
    positional argument is ``activation``, which a port of ``DenseFlipout(units, tf.nn.relu)``
    puts here) is named as such."""
    if callable(value) or isinstance(value, str):
        raise TypeError(
            f"{name}: expected True or False, got {repr(value)[:80]}; an activation (TFP's "
            "second positional argument)? pass it as activation=..."
        )
    return boolean(value, name)


def floating_dtype(value, name: str = "dtype") -> torch.dtype:
    """``value`` if it is a real floating ``torch.dtype``, torch's default dtype for ``None``;
    raise naming ``name`` otherwise (Keras' ``"float32"`` strings, integer and complex dtypes)."""
    if value is None:
        return torch.get_default_dtype()
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        hint = f" (torch.{value})" if isinstance(value, str) and hasattr(torch, value) else ""
        raise TypeError(f"{name}: expected a floating torch.dtype, got {value!r}{hint}")
    return value


def finite_number(value, name: str) -> float:
    """``value`` as a ``float`` if it is a finite number (a Python or numpy one, or a 0-dim
    tensor); ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_meta:
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite number, got {type(value).__name__} {value!r}"[:160])
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def positive_number(value, name: str) -> float:
    """``value`` as a ``float`` if it is a finite number ``> 0`` (a Python or numpy one, or a
    0-dim tensor); ``ValueError`` naming ``name`` otherwise (``inf``: a scale of ``inf`` gives
    infinite or NaN results, not an error, later)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_meta:
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
        raise ValueError(f"{name}: expected a finite positive number, got {value!r}"[:160])
    return float(value)


def callable_or_none(value, name: str):
    """``value`` if it is ``None`` or callable; ``TypeError`` naming ``name`` otherwise."""
    if value is not None and not callable(value):
        raise TypeError(f"{name}: expected a callable or None, got {type(value).__name__}")
    return value


def divergence_fn(value, name: str):
    """``value`` if it is ``"kl"``, ``None`` or a callable ``(q, p, w) -> Tensor`` (a weight
    layer's ``kernel_divergence_fn``/``bias_divergence_fn``); ``TypeError`` naming ``name``."""
    if value is None or (value == "kl" if isinstance(value, str) else callable(value)):
        return value
    got = repr(value) if isinstance(value, (str, int, float)) else type(value).__name__
    raise TypeError(f"{name}: expected 'kl', None or a callable (q, p, w) -> Tensor, got {got}"[:160])


def run_initializer(initializer, tensor: torch.Tensor, name: str) -> None:
    """Fill ``tensor`` with ``initializer(tensor)``, a ``torch.nn.init``-style callable that works
    in place (and may return the tensor or a view of it). One that returns the value instead
    (Keras' style: ``lambda t: torch.full_like(t, 0.5)``) is taken too: a returned tensor or
    number is copied in. ``tensor`` is zeroed first, so no uninitialized memory is left whatever
    the callable does; a result that does not fit raises naming ``name``."""
    with torch.no_grad():
        tensor.zero_()
        result = initializer(tensor)
        if result is None or tensor.is_meta:
            return
        if (
            isinstance(result, torch.Tensor)
            and result.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        ):
            return  # the tensor itself, or a view of it: filled in place
        if isinstance(result, bool) or not isinstance(result, (torch.Tensor, int, float)):
            raise TypeError(f"{name}: returned {type(result).__name__}, expected None, a tensor or a number")
        if not isinstance(result, torch.Tensor):
            tensor.fill_(result)
            return
        try:
            fits = torch.broadcast_shapes(result.shape, tensor.shape) == tensor.shape
        except RuntimeError:
            fits = False
        if not fits:
            got, want = tuple(result.shape), tuple(tensor.shape)
            raise ValueError(f"{name}: a value of shape {got} does not broadcast to shape {want}")
        tensor.copy_(result.expand(tensor.shape))


def activation_fn(value, name: str = "activation"):
    """``value`` if it is ``None`` or callable; a Keras name (:data:`ACTIVATIONS`) as torch's
    function; anything else raises naming ``name`` and the names taken."""
    if isinstance(value, str):
        if value not in ACTIVATIONS:
            raise ValueError(
                f"{name}: expected a callable, None or one of {sorted(ACTIVATIONS)}, got {value!r}"
            )
        return ACTIVATIONS[value]
    return callable_or_none(value, name)
