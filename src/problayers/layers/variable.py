"""``VariableLayer``: a trainable tensor, whatever the input (the building block of trainable
priors and posteriors, as ``tfp.layers.VariableLayer``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D
from torch import nn

from ..convert import ConvertFn, check_convert_fn
from ._args import activation_fn, callable_or_none, floating_dtype, run_initializer
from .base import Activation, DistributionLambda, Shape, normalize_event_shape

__all__ = ["VariableLayer"]

Initializer = str | float | torch.Tensor | Callable[[torch.Tensor], object]

_NAMED_INITIALIZERS: dict[str, Callable[[torch.Tensor], object]] = {
    "zeros": nn.init.zeros_,
    "ones": nn.init.ones_,
    "normal": lambda t: nn.init.normal_(t, 0.0, 0.05),  # Keras' RandomNormal
    "uniform": lambda t: nn.init.uniform_(t, -0.05, 0.05),
}


class VariableLayer(nn.Module):
    """A trainable tensor of shape ``shape``, returned whatever the input.

    Args:
        shape: the variable's shape (an int or a tuple of positive ints; ``()`` for a scalar).
        dtype: its floating dtype (default ``None``: ``torch.get_default_dtype()``).
        initializer: keyword-only, as the arguments after it (TFP's third argument is
            ``activation``); ``"zeros"`` (default), ``"ones"``, ``"normal"`` (std 0.05), ``"uniform"``
            (+-0.05), a number (constant fill), a tensor broadcastable to ``shape``, or a
            callable: an in-place initializer such as ``torch.nn.init.normal_``, or one that
            returns the value (``lambda t: torch.full_like(t, 0.5)``).
        activation: optional callable applied to the variable on each call, or Keras' name
            (``"softplus"``; default ``None``: the variable itself).
        make_distribution_fn: optional ``tensor -> Distribution``; when given, the layer returns
            that distribution, tensor-coercible with ``convert_to_tensor_fn`` (this replaces
            TFP's ``VariableLayer`` + ``DistributionLambda`` pair in one layer). Default
            ``None``: the layer returns the tensor.
        convert_to_tensor_fn: as for :class:`~problayers.DistributionLambda` (default
            ``"auto"``); used only with ``make_distribution_fn``.

    Input: anything (ignored; e.g. the batch, so the layer fits in an ``nn.Sequential``).
    Output: ``activation(variable)``, a tensor of shape ``shape`` (not broadcast to the batch),
    or the tensor-coercible distribution ``make_distribution_fn`` makes from it (with the
    ``batch_shape``/``event_shape`` that function gives).

    Example::

        >>> layer = pl.VariableLayer(3, initializer=1.0)
        >>> layer(torch.zeros(8, 5)).tolist()
        [1.0, 1.0, 1.0]
        >>> prior = pl.VariableLayer(3, make_distribution_fn=lambda t: D.Independent(D.Normal(t, 1.0), 1))
        >>> q = prior(torch.zeros(8, 5))
        >>> q.batch_shape, q.event_shape
        (torch.Size([]), torch.Size([3]))
    """

    def __init__(
        self,
        shape: Shape,
        dtype: torch.dtype | None = None,
        *,
        initializer: Initializer = "zeros",
        activation: Activation = None,
        make_distribution_fn: Callable[[torch.Tensor], D.Distribution] | None = None,
        convert_to_tensor_fn: ConvertFn = "auto",
    ) -> None:
        super().__init__()
        self.shape = normalize_event_shape(shape, "shape")
        dtype = floating_dtype(dtype)
        self.activation = activation_fn(activation)
        self.make_distribution_fn = callable_or_none(make_distribution_fn, "make_distribution_fn")
        check_convert_fn(convert_to_tensor_fn)
        # TFP's VariableLayer + DistributionLambda pair: the distribution is made by a
        # DistributionLambda (fp32 under autocast, found by problayers.export).
        self.head = (
            None
            if self.make_distribution_fn is None
            else DistributionLambda(self.make_distribution_fn, convert_to_tensor_fn)
        )
        self.convert_to_tensor_fn = convert_to_tensor_fn
        self.variable = nn.Parameter(torch.empty(self.shape, dtype=dtype))
        self._initialize(initializer)

    def _initialize(self, initializer: Initializer) -> None:
        if isinstance(initializer, str):
            if initializer not in _NAMED_INITIALIZERS:
                raise ValueError(
                    f"initializer: expected one of {sorted(_NAMED_INITIALIZERS)}, a number, a tensor "
                    f"or a callable, got {initializer!r}"
                )
            initializer = _NAMED_INITIALIZERS[initializer]
        elif isinstance(initializer, bool) or not (
            callable(initializer) or isinstance(initializer, (int, float, torch.Tensor))
        ):
            raise TypeError(
                f"initializer: expected a name, a number, a tensor or a callable, got "
                f"{type(initializer).__name__}"
            )
        elif not callable(initializer):  # a number or a tensor: the value itself
            value = initializer
            initializer = lambda t: value  # noqa: E731
        run_initializer(initializer, self.variable, "initializer")

    def forward(self, *inputs, **kwargs) -> torch.Tensor | D.Distribution:
        value = self.variable if self.activation is None else self.activation(self.variable)
        return value if self.head is None else self.head(value)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, dtype={self.variable.dtype}"
