"""Masked autoregressive flows: the MADE network (``AutoregressiveNetwork``), the MAF bijection
(``MaskedAutoregressiveTransform``, a ``torch.distributions.transforms.Transform``) and the layer
``AutoregressiveTransform`` that pushes a distribution through it (``tfp.layers.AutoregressiveTransform``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from ..coercible import TensorCoercible
from ..convert import ConvertFn
from ._args import activation_fn, boolean, floating_dtype, positive_int
from ._transforms import FreshInverse
from .base import Activation, DistributionLambda, normalize_event_shape, tensor_input

__all__ = [
    "AutoregressiveNetwork",
    "AutoregressiveTransform",
    "MaskedAutoregressiveTransform",
    "MaskedLinear",
]


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` of shape ``(out, in)``."""

    mask: torch.Tensor  # a buffer

    def __init__(self, mask: torch.Tensor, bias: bool = True, dtype: torch.dtype | None = None) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self._mask_init = mask.detach().to("cpu", torch.bool, copy=True)  # for reset_parameters
        self.register_buffer("mask", mask.to(device=self.weight.device, dtype=self.weight.dtype))

    def reset_parameters(self) -> None:
        """``nn.Linear``'s init of the weight and bias, and the mask again as constructed: a module
        made under ``torch.device("meta")`` and materialized with ``to_empty`` has garbage there."""
        super().reset_parameters()
        if "mask" in self._buffers:  # not yet during nn.Linear's __init__
            with torch.no_grad():
                self.mask.copy_(self._mask_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def _input_order(order, d: int) -> torch.Tensor:
    """The degrees ``1..d`` of the inputs: ``'left-to-right'``, ``'right-to-left'``,
    ``'random'`` or an explicit permutation of ``1..d``. On the CPU whatever the default device:
    the masks are computed from them at construction, under ``torch.device("meta")`` too."""
    if isinstance(order, str):
        if order == "left-to-right":
            return torch.arange(1, d + 1, device="cpu")
        if order == "right-to-left":
            return torch.arange(d, 0, -1, device="cpu")
        if order == "random":
            return torch.randperm(d, device="cpu") + 1
        raise ValueError(
            f"input_order: expected 'left-to-right', 'right-to-left', 'random' or a sequence, got {order!r}"
        )
    if not isinstance(order, Iterable):
        raise TypeError(
            "input_order: expected 'left-to-right', 'right-to-left', 'random' or a sequence, "
            f"got {type(order).__name__} {order!r}"
        )
    degrees = torch.as_tensor(list(order), device="cpu")
    if sorted(degrees.tolist()) != list(range(1, d + 1)):
        raise ValueError(f"input_order: expected a permutation of 1..{d}, got {list(order)!r}")
    return degrees


class AutoregressiveNetwork(nn.Module):
    """MADE: a masked MLP whose outputs for dimension ``i`` see only the inputs before ``i``.

    "Before" is in ``input_order`` (Germain et al. 2015; ``tfp.layers.AutoregressiveNetwork``).

    Args:
        params: outputs per input dimension (2 for a MAF: shift and log-scale).
        event_shape: the input size ``d`` (an int or a 1-tuple).
        hidden_units: sizes of the hidden layers (default ``()``: a single masked layer).
        input_order: ``'left-to-right'`` (default), ``'right-to-left'``, ``'random'`` or a
            permutation of ``1..d`` (the degree of each input).
        hidden_degrees: ``'equal'`` (default: evenly spread over ``1..d-1``) or ``'random'``.
        activation: hidden activation, a callable or Keras' name (``"elu"``; default
            ``torch.relu``; TFP's default is linear); ``None`` for none.
        use_bias: whether the masked layers have biases (default ``True``).
        dtype: the weights' dtype (default ``None``: ``torch.get_default_dtype()``).

    Input: ``(*B, d)``. Output: a tensor of shape ``(*B, d, params)``; ``out[..., i, :]``
    depends only on the inputs of lower degree than input ``i``.

    Example::

        >>> made = pl.AutoregressiveNetwork(params=2, event_shape=3, hidden_units=(8,))
        >>> made(torch.zeros(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    input_degrees: torch.Tensor  # a buffer: (d,)

    def __init__(
        self,
        params: int,
        event_shape: int | Sequence[int],
        hidden_units: Sequence[int] = (),
        input_order: str | Sequence[int] = "left-to-right",
        hidden_degrees: str = "equal",
        activation: Activation = torch.relu,
        use_bias: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.params = positive_int(params, "params")
        dtype = floating_dtype(dtype)
        shape = normalize_event_shape(event_shape)
        if len(shape) != 1:
            raise ValueError(f"event_shape: expected a 1-D shape (d,), got {shape!r}")
        (d,) = self.event_shape = shape
        if isinstance(hidden_units, (int, str)) or not hasattr(hidden_units, "__iter__"):
            raise TypeError(
                f"hidden_units: expected a sequence of positive ints, got {type(hidden_units).__name__} "
                f"{hidden_units!r}"
            )
        self.hidden_units = tuple(positive_int(h, "hidden_units") for h in hidden_units)
        if hidden_degrees not in ("equal", "random"):
            raise ValueError(f"hidden_degrees: expected 'equal' or 'random', got {hidden_degrees!r}")
        self.activation = activation_fn(activation)
        degrees = [_input_order(input_order, d)]  # on the CPU: (d,), then (units,) per layer
        # the buffer on the default device (torch.empty's), the masks' too
        self.register_buffer("input_degrees", degrees[0].to(torch.empty(0).device))
        for units in self.hidden_units:
            # TFP's: no hidden degree below the previous layer's lowest (a unit below it would
            # see no input at all)
            low = min(int(degrees[-1].min()), d - 1)
            if hidden_degrees == "equal":  # max(low, ceil(k (d - 1) / (units + 1))), k = 1..units
                k = torch.arange(1, units + 1, device="cpu")
                deg = torch.ceil(k * (d - 1) / (units + 1)).long().clamp_min(low)
            else:
                deg = torch.randint(low, max(d, low + 1), (units,), device="cpu")
            degrees.append(deg)
        layers = []
        for prev, deg in itertools.pairwise(degrees):
            mask = deg[:, None] >= prev[None, :]  # (units, prev): hidden k sees degrees <= its own
            layers.append(MaskedLinear(mask, use_bias, dtype))
        out_deg = degrees[0].repeat_interleave(self.params)  # (d * params,) d-major
        out_mask = out_deg[:, None] > degrees[-1][None, :]  # strictly: output i sees degrees < i
        layers.append(MaskedLinear(out_mask, use_bias, dtype))
        self.layers = nn.ModuleList(layers)
        self._degrees_init = degrees[0].clone()  # (d,), on the CPU: for reset_parameters

    def reset_parameters(self) -> None:
        """The input degrees and every masked layer (weights, biases, masks) again, as torch's
        layers re-initialize (``to_empty`` after building under ``torch.device("meta")``)."""
        with torch.no_grad():
            self.input_degrees.copy_(self._degrees_init)
        for layer in self.layers:
            cast(MaskedLinear, layer).reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tensor_input("AutoregressiveNetwork", x)
        if x.dim() == 0 or x.shape[-1] != self.event_shape[0]:
            raise ValueError(
                f"AutoregressiveNetwork: expected input of shape (..., {self.event_shape[0]}), "
                f"got {tuple(x.shape)}"
            )
        h = x  # (*B, d)
        for layer in self.layers[:-1]:
            h = layer(h)  # (*B, units)
            if self.activation is not None:
                h = self.activation(h)
        out = self.layers[-1](h)  # (*B, d * params)
        return out.unflatten(-1, (self.event_shape[0], self.params))  # (*B, d, params)

    def extra_repr(self) -> str:
        return f"params={self.params}, event_shape={self.event_shape}, hidden_units={self.hidden_units}"


class MaskedAutoregressiveTransform(FreshInverse, Transform):
    """The MAF bijection ``y = u * exp(log_scale(y)) + shift(y)`` on ``R^d`` (event dim 1).

    ``shift, log_scale = made(y).unbind(-1)`` are autoregressive (a :class:`AutoregressiveNetwork`
    with ``params=2``).

    The inverse ``u = (y - shift(y)) * exp(-log_scale(y))`` is one network pass; the forward
    needs ``d`` sequential passes (pass ``i`` fixes the ``i``-th dimension in ``input_order``).
    ``log_abs_det_jacobian(u, y) = sum(log_scale(y))`` (the Jacobian is triangular).

    Args:
        made: an :class:`AutoregressiveNetwork` with ``params=2`` (shift, log-scale); the
            transform holds it, not a copy, so training ``made`` changes the transform.
        cache_size: ``torch.distributions.transforms.Transform``'s cache: ``1`` (default) keeps
            the last ``(u, y)`` pair, so the ``log_prob`` of a fresh sample needs no inversion;
            ``0`` keeps none.
        inverse: swap the two directions (the IAF: one network pass forward, ``d`` back, the
            log-det negated); unlike ``transform.inv`` this pickles and deep-copies.
        network_state: the tensors to run ``made`` with, by name as in
            ``made.named_parameters()`` and ``named_buffers()`` (through
            ``torch.func.functional_call``); default ``None``: ``made``'s own at each call.
            :class:`AutoregressiveTransform` passes the ones current at its forward, so that its
            output computes with the weights that ``torch.func.functional_call`` (or ``grad``,
            ``vmap``) gave the model, and not with grad under ``torch.no_grad``.

    Input: ``u`` of shape ``(*B, d)``. Output: ``y`` of shape ``(*B, d)``;
    ``log_abs_det_jacobian`` has shape ``(*B)``.

    Example::

        >>> maf = pl.MaskedAutoregressiveTransform(pl.AutoregressiveNetwork(2, 3, hidden_units=(8,)))
        >>> u = torch.zeros(5, 3)
        >>> y = maf(u)
        >>> y.shape, maf.log_abs_det_jacobian(u, y).shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(
        self,
        made: AutoregressiveNetwork,
        cache_size: int = 1,
        inverse: bool = False,
        network_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(cache_size=cache_size)
        self.inverse = bool(inverse)  # the IAF: the two directions swapped (pickles, unlike .inv)
        if not isinstance(made, AutoregressiveNetwork):
            raise TypeError(f"made: expected an AutoregressiveNetwork, got {type(made).__name__}")
        if made.params != 2:
            raise ValueError(f"made: expected params=2 (shift, log_scale), got params={made.params}")
        self.made = made
        if network_state is not None and not isinstance(network_state, Mapping):
            raise TypeError(
                f"network_state: expected a dict of tensors by name, got {type(network_state).__name__}"
            )
        self.network_state = None if network_state is None else dict(network_state)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, MaskedAutoregressiveTransform)
            and other.made is self.made
            and other.inverse == self.inverse
        )

    def __hash__(self) -> int:
        return hash(id(self.made))

    def with_cache(self, cache_size: int = 1) -> MaskedAutoregressiveTransform:
        return (
            self
            if self._cache_size == cache_size
            else MaskedAutoregressiveTransform(self.made, cache_size, self.inverse, self.network_state)
        )

    def _shift_log_scale(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.network_state is None:
            out = self.made(y)
        else:
            out = torch.func.functional_call(self.made, self.network_state, (y,))
        shift, log_scale = out.unbind(-1)  # (*B, d) each
        return shift, log_scale

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        return self._one_pass(u) if self.inverse else self._sequential(u)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._sequential(y) if self.inverse else self._one_pass(y)

    def _sequential(self, u: torch.Tensor) -> torch.Tensor:
        y = torch.zeros_like(u)  # (*B, d)
        for _ in range(self.made.event_shape[0]):
            shift, log_scale = self._shift_log_scale(y)
            y = u * log_scale.exp() + shift
        return y

    def _one_pass(self, y: torch.Tensor) -> torch.Tensor:
        shift, log_scale = self._shift_log_scale(y)
        return (y - shift) * torch.exp(-log_scale)

    def log_abs_det_jacobian(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.inverse:  # y = (u - shift(u)) exp(-log_scale(u))
            return -self._shift_log_scale(u)[1].sum(-1)  # (*B)
        _, log_scale = self._shift_log_scale(y)
        return log_scale.sum(-1)  # (*B)


class AutoregressiveTransform(DistributionLambda):
    """Pushes the incoming distribution through a masked autoregressive flow.

    The output is ``TransformedDistribution(input, [MaskedAutoregressiveTransform(made)])``
    (``tfp.layers.AutoregressiveTransform``): a MAF on top of whatever distribution the
    previous layer returns.

    Args:
        made: an :class:`AutoregressiveNetwork` with ``params=2`` and ``event_shape`` ``(d,)``
            (its parameters become the layer's).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"auto"``: ``rsample()`` where the
            result has one, else ``sample()``.
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).
        inverse: push through the inverse bijection instead (``tfb.Invert`` of TFP's MAF): an
            inverse autoregressive flow (IAF, Kingma et al. 2016), ``y = (u - shift(u)) *
            exp(-log_scale(u))``, where sampling takes one network pass and ``log_prob`` of a
            sample just drawn needs none beyond the log-det (the transform's cache), while
            ``log_prob`` of any other point takes ``d``. The choice for a VAE's posterior.
        validate_args: passed to the ``TransformedDistribution`` (default ``False``: no argument
            checks, as the other layers and TFP: a check reads a value back on the host).

    Input: a distribution over ``R^d`` (event ``(d,)``, or event ``()`` with batch ``(*B, d)``,
    whose last batch dimension becomes the event). Output: a tensor-coercible
    ``TransformedDistribution`` with ``batch_shape`` B and ``event_shape`` ``(d,)``;
    ``log_prob`` takes one network pass, sampling ``d`` (with ``inverse``: the other way round).

    Example::

        >>> flow = pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3, hidden_units=(8,)))
        >>> out = flow(D.Independent(D.Normal(torch.zeros(4, 3), 1.0), 1))
        >>> out.batch_shape, out.event_shape, out.log_prob(torch.zeros(4, 3)).shape
        (torch.Size([4]), torch.Size([3]), torch.Size([4]))
    """

    def __init__(
        self,
        made: AutoregressiveNetwork,
        convert_to_tensor_fn: ConvertFn = "auto",
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
        inverse: bool = False,
        validate_args: bool = False,
    ) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        MaskedAutoregressiveTransform(made)  # checks made
        self.made = made
        self.inverse = boolean(inverse, "inverse")
        self.validate_args = boolean(validate_args, "validate_args")

    def make_distribution(self, dist: D.Distribution) -> D.TransformedDistribution:
        if not isinstance(dist, D.Distribution):
            raise TypeError(
                f"AutoregressiveTransform: expected a Distribution input, got {type(dist).__name__}"
            )
        if isinstance(dist, TensorCoercible):
            dist = dist.distribution
        d = self.made.event_shape[0]
        shape = tuple(dist.batch_shape + dist.event_shape)[-1:]
        if len(dist.event_shape) > 1 or shape != (d,):
            raise ValueError(
                f"AutoregressiveTransform: expected a distribution over R^{d} (event_shape ({d},)), got "
                f"batch_shape {tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}"
            )
        # A new transform per output: its cache (sample -> base value) must not outlive the
        # parameters it was computed with. It runs the network at the tensors current now (those
        # of a functional_call, detached under no_grad), not at whatever the module holds later.
        state = dict(itertools.chain(self.made.named_parameters(), self.made.named_buffers()))
        if not torch.is_grad_enabled():
            state = {name: t.detach() for name, t in state.items()}
        transform = MaskedAutoregressiveTransform(self.made, inverse=self.inverse, network_state=state)
        return D.TransformedDistribution(dist, [transform], validate_args=self.validate_args)

    def extra_repr(self) -> str:
        inverse = ", inverse=True" if self.inverse else ""
        return f"event_shape={self.made.event_shape}{inverse}, {super().extra_repr()}"
