"""Mixture layers: ``MixtureSameFamily`` of any parameterized layer, ``MixtureNormal`` and
``MixtureLogistic``; all build ``torch.distributions.MixtureSameFamily``.

Parameters are laid out as in ``tfp.layers``: ``num_components`` mixture logits, then each
component's parameters (component-major), i.e. ``params_size = K + K * component_params_size``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.distributions as D

from ..coercible import TensorCoercible
from ..convert import ConvertFn
from ._args import boolean, positive_int
from .base import DistributionLambda, Shape, Size, check_params, normalize_event_shape, params_size_of
from .independent import IndependentLogistic, IndependentNormal, _IndependentLayer, loc_scale_params_size

__all__ = ["MixtureLogistic", "MixtureNormal", "MixtureSameFamily"]

ComponentNew = Callable[[torch.Tensor], D.Distribution]


def _instance_params_size(layer) -> int | None:
    """``type(layer).params_size(...)`` with each argument read from the same-named attribute
    of ``layer`` (``event_shape``, ``event_size``, ``num_components``, ...); ``None`` when an
    argument without a default has no such attribute."""
    fn = getattr(type(layer), "params_size", None)
    if fn is None:
        return None
    kwargs = {}
    for name, p in inspect.signature(fn).parameters.items():
        if hasattr(layer, name):
            kwargs[name] = getattr(layer, name)
        elif p.default is inspect.Parameter.empty:
            return None
    return fn(**kwargs)


def resolve_component(component_layer) -> tuple[ComponentNew, int | None]:
    """``component_layer`` -> (``params (*B, K, p) -> Distribution`` with batch ``(*B, K)``, ``p``).

    Accepts a layer class with static ``params_size``/``new`` (used with their defaults), a
    layer instance (a :class:`DistributionLambda` is applied through ``make_distribution``, so
    without its activity regularizer), or any callable ``params -> Distribution``. ``p`` is
    ``None`` where it cannot be inferred (then it comes from the ``params`` width)."""
    if isinstance(component_layer, type):
        if not (hasattr(component_layer, "params_size") and hasattr(component_layer, "new")):
            raise TypeError(
                f"component_layer: the class {component_layer.__name__} has no static params_size/new"
            )
        try:
            size = component_layer.params_size()
        except TypeError:  # its params_size and new take arguments (an event size)
            raise TypeError(
                f"component_layer: the class {component_layer.__name__} needs arguments "
                f"({_arguments(component_layer.new)}); pass an instance, e.g. "
                f"{component_layer.__name__}({_arguments(component_layer.new)})"
            ) from None
        return component_layer.new, size
    if isinstance(component_layer, DistributionLambda):
        return component_layer.make_distribution, _instance_params_size(component_layer)
    if callable(component_layer):
        return component_layer, _instance_params_size(component_layer)
    raise TypeError(
        "component_layer: expected a layer class with params_size/new, a layer instance or a "
        f"callable params -> Distribution, got {type(component_layer).__name__}"
    )


def _arguments(new: Callable) -> str:
    """The names of ``new``'s required arguments after ``params``."""
    parameters = list(inspect.signature(new).parameters.values())[1:]
    return ", ".join(p.name for p in parameters if p.default is p.empty)


def _mixture(
    layer: str, params, k: int, size: int | None, new: ComponentNew, validate_args: bool
) -> D.MixtureSameFamily:
    """Split ``(*B, K + K * p)`` params and build the mixture (batch B, the component's event)."""
    validate_args = boolean(validate_args, "validate_args")
    if size is None:  # infer p from the width, then check as usual
        width = params.shape[-1] if isinstance(params, torch.Tensor) and params.dim() else 0
        size = max((width - k) // k, 1)
    params = check_params(layer, params, k + k * size)
    mix_logits = params[..., :k]  # (*B, K)
    comp_params = params[..., k:].reshape((*params.shape[:-1], k, size))  # (*B, K, p)
    components = new(comp_params)  # batch (*B, K), event E
    if isinstance(components, TensorCoercible):
        components = components.distribution
    if not isinstance(components, D.Distribution):
        raise TypeError(
            f"{layer}: the component layer returned {type(components).__name__}, not a Distribution"
        )
    return D.MixtureSameFamily(
        D.Categorical(logits=mix_logits, validate_args=validate_args), components, validate_args=validate_args
    )


class _MixtureLayer(DistributionLambda):
    def __init__(self, num_components, convert_to_tensor_fn, validate_args, activity_regularizer) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        self.num_components = positive_int(num_components, "num_components")
        self.validate_args = boolean(validate_args, "validate_args")


class MixtureSameFamily(_MixtureLayer):
    """A ``num_components`` mixture of the distributions ``component_layer`` makes.

    Args:
        num_components: K, the number of mixture components.
        component_layer: a layer class with static ``params_size``/``new`` (e.g.
            ``IndependentNormal``, used with its defaults), a layer instance (e.g.
            ``IndependentNormal((2, 3))``; an ``nn.Module``'s parameters become this layer's),
            or a callable ``params (*B, K, p) -> Distribution`` with batch ``(*B, K)``.
        component_params_size: p, the component layer's inputs per component. Default ``None``:
            inferred from the class/instance (an error where it cannot be).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"auto"``, TFP's ``sample``: a
            draw through the components' ``rsample`` where they have one, so the gradient
            reaches the drawn component's parameters (not the mixing weights: a mixture has no
            ``rsample``); ``"sample"`` draws without a gradient.
        validate_args: passed to the distributions (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).

    Input: ``(*B, params_size(K, p))`` = ``(*B, K + K * p)``: the mixture logits, then each
    component's p parameters (component-major). Output: a tensor-coercible
    ``torch.distributions.MixtureSameFamily`` with ``batch_shape`` B and the component's
    ``event_shape``.

    Example::

        >>> layer = pl.MixtureSameFamily(2, pl.IndependentNormal(3))
        >>> layer.component_params_size, pl.MixtureSameFamily.params_size(2, pl.IndependentNormal(3))
        (6, 14)
        >>> out = layer(torch.zeros(4, 14))
        >>> out.batch_shape, out.event_shape
        (torch.Size([4]), torch.Size([3]))
    """

    def __init__(
        self,
        num_components: Size,
        component_layer,
        component_params_size: int | None = None,
        convert_to_tensor_fn: ConvertFn = "auto",
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(num_components, convert_to_tensor_fn, validate_args, activity_regularizer)
        self._component_new, size = resolve_component(component_layer)
        if component_params_size is not None:
            given = positive_int(component_params_size, "component_params_size")
            if size is not None and given != size:
                raise ValueError(
                    f"component_params_size: got {given}, but component_layer takes {size} per component"
                )
            size = given
        if size is None:
            raise ValueError(
                "component_params_size: cannot be inferred from component_layer "
                f"{component_layer!r}; pass it explicitly"
            )
        if isinstance(component_layer, torch.nn.Module):
            self.component_layer = component_layer  # its parameters become this layer's
        self.component_params_size = size

    @params_size_of("num_components", "component_params_size")
    def params_size(num_components: Size, component_params_size) -> int:
        """``K + K * p``; ``component_params_size`` is ``p`` or a layer class/instance to infer it from."""
        k = positive_int(num_components, "num_components")
        if callable(component_params_size):  # a layer class or instance
            _, size = resolve_component(component_params_size)
            if size is None:
                raise ValueError("component_params_size: cannot infer the size from this layer")
            component_params_size = size
        return k + k * positive_int(component_params_size, "component_params_size")

    @staticmethod
    def new(
        params, num_components: Size, component_layer, validate_args: bool = False
    ) -> D.MixtureSameFamily:
        """``(*B, K + K * p)`` -> ``MixtureSameFamily``, batch B, the component's event shape."""
        k = positive_int(num_components, "num_components")
        new, size = resolve_component(component_layer)
        return _mixture("MixtureSameFamily", params, k, size, new, validate_args)

    def make_distribution(self, params) -> D.MixtureSameFamily:
        k, size = self.num_components, self.component_params_size
        return _mixture("MixtureSameFamily", params, k, size, self._component_new, self.validate_args)

    def extra_repr(self) -> str:
        return (
            f"num_components={self.num_components}, component_params_size="
            f"{self.component_params_size}, {super().extra_repr()}"
        )


class _IndependentMixture(_MixtureLayer):
    """A mixture of ``_component`` (an ``Independent`` layer class) over ``event_shape``."""

    _component: type[_IndependentLayer]

    def __init__(
        self,
        num_components: Size,
        event_shape: Shape = (),
        convert_to_tensor_fn: ConvertFn = "auto",
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(num_components, convert_to_tensor_fn, validate_args, activity_regularizer)
        self.event_shape = normalize_event_shape(event_shape)

    @params_size_of("num_components", "event_shape")
    def params_size(num_components: Size, event_shape: Shape = ()) -> int:
        """``K + K * 2 * prod(event_shape)``."""
        k = positive_int(num_components, "num_components")
        return k + k * loc_scale_params_size(event_shape)

    @classmethod
    def new(
        cls, params, num_components: Size, event_shape: Shape = (), validate_args: bool = False
    ) -> D.MixtureSameFamily:
        """``(*B, params_size(K, event_shape))`` -> ``MixtureSameFamily``, batch B, event
        ``event_shape``."""
        k = positive_int(num_components, "num_components")
        shape = normalize_event_shape(event_shape)

        def component(p: torch.Tensor) -> D.Distribution:  # (*B, K, p) -> batch (*B, K), event E
            return cls._component.new(p, shape, validate_args=validate_args)

        size = loc_scale_params_size(shape)
        return _mixture(cls.__name__, params, k, size, component, validate_args)

    def make_distribution(self, params) -> D.MixtureSameFamily:
        return self.new(params, self.num_components, self.event_shape, self.validate_args)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, event_shape={self.event_shape}, {super().extra_repr()}"


class MixtureNormal(_IndependentMixture):
    """A ``num_components`` mixture of :class:`IndependentNormal` over ``event_shape``.

    Args:
        num_components: K, the number of mixture components.
        event_shape: the shape of one example (an int or a tuple of positive ints; default
            ``()``: a scalar event, as in TFP).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"auto"``, TFP's ``sample``: a
            draw through the components' ``rsample`` where they have one, so the gradient
            reaches the drawn component's parameters (not the mixing weights: a mixture has no
            ``rsample``); ``"sample"`` draws without a gradient.
        validate_args: passed to the distributions (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).

    Input: ``(*B, params_size(K, event_shape))`` = ``(*B, K + K * 2 * prod(event_shape))``: the
    mixture logits, then per component the locs and raw (softplus) scales. Output: a
    tensor-coercible ``MixtureSameFamily`` (``Categorical`` mixing ``IndependentNormal`` outputs) with
    ``batch_shape`` B and ``event_shape`` ``event_shape``.

    Example::

        >>> pl.MixtureNormal.params_size(num_components=2, event_shape=3)
        14
        >>> out = pl.MixtureNormal(2, 3)(torch.zeros(4, 14))
        >>> out.batch_shape, out.event_shape, out.log_prob(torch.zeros(4, 3)).shape
        (torch.Size([4]), torch.Size([3]), torch.Size([4]))
    """

    _component = IndependentNormal


class MixtureLogistic(_IndependentMixture):
    """A ``num_components`` mixture of :class:`IndependentLogistic` over ``event_shape``.

    Args:
        num_components: K, the number of mixture components.
        event_shape: the shape of one example (an int or a tuple of positive ints; default
            ``()``: a scalar event, as in TFP).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"auto"``, TFP's ``sample``: a
            draw through the components' ``rsample`` where they have one, so the gradient
            reaches the drawn component's parameters (not the mixing weights: a mixture has no
            ``rsample``); ``"sample"`` draws without a gradient.
        validate_args: passed to the distributions (default ``False``: no argument checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).

    Input: ``(*B, params_size(K, event_shape))`` = ``(*B, K + K * 2 * prod(event_shape))``: the
    mixture logits, then per component the locs and raw (softplus) scales. Output: a
    tensor-coercible ``MixtureSameFamily`` (``Categorical`` mixing ``IndependentLogistic`` outputs) with
    ``batch_shape`` B and ``event_shape`` ``event_shape``.

    Example::

        >>> layer = pl.MixtureLogistic(3, (2, 2))
        >>> out = layer(torch.zeros(5, pl.MixtureLogistic.params_size(3, (2, 2))))
        >>> out.batch_shape, out.event_shape, out.mean.shape
        (torch.Size([5]), torch.Size([2, 2]), torch.Size([5, 2, 2]))
    """

    _component = IndependentLogistic
