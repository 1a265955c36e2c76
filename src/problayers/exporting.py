"""Exporting a module whose output is a distribution: ``torch.export``, ONNX, ``torch.jit.trace``.

An exported program can only return tensors. :class:`DistributionParams` wraps a module (an
encoder, a decoder) so that it returns the *inputs of the distribution layer* that made its
output (for ``IndependentBernoulli`` the logits, for ``MultivariateNormalTriL`` the
``params_size`` vector): the parameters, as ``tfp.layers``' ``new(params)`` takes them. Its
``rebuild(params)`` gives the distribution back, eagerly, through the layer's own
``make_distribution``. Inside the wrapper no added loss is computed (no KL, no sample drawn for
it), and nothing is sampled unless the module itself consumes a distribution's tensor value on
the way (a whole VAE draws its ``z``: that is the model).

:func:`export` does ``torch.export.export`` of the wrapper, with the first dimension of every
tensor input dynamic by default, and returns an :class:`ExportedDistribution`: call it like
the module and get the distribution. For ONNX, ``torch.onnx.export(DistributionParams(...),
args, dynamo=True)`` exports the same parameter graph (docs/export.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributions as D
from torch import nn

from .coercible import as_coercible
from .layers.base import DistributionLambda
from .layers.weight_norm import require_initialized
from .losses import added_losses_skipped

__all__ = ["DistributionParams", "ExportedDistribution", "export"]


@dataclass
class _Node:
    """How one distribution layer's output is rebuilt: the layer, and per argument either an
    index into the flat parameter list, a child node (a distribution input) or a constant."""

    layer: DistributionLambda
    args: list[tuple[str, Any]] = field(default_factory=list)
    kwargs: dict[str, tuple[str, Any]] = field(default_factory=dict)


class _Calls:
    """Forward hooks on every distribution layer of a module: ``id(output) -> (layer, args,
    kwargs)`` of each call during a forward."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.calls: dict[int, tuple[DistributionLambda, tuple, dict]] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _Calls:
        for sub in self.module.modules():
            if isinstance(sub, DistributionLambda):
                self.handles.append(sub.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def _hook(
        self, layer: DistributionLambda, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.calls[id(output)] = (layer, args, kwargs)

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _plan(out: Any, calls: dict, leaves: list[torch.Tensor], parent: Any = None) -> _Node:
    """The rebuild plan of ``out`` (appending its tensor parameters to ``leaves``); ``parent``:
    the layer that took ``out`` as an input, if any."""
    if id(out) not in calls:
        if parent is None:
            raise TypeError(
                "DistributionParams: the module's output must be the output of a problayers "
                f"distribution layer (a DistributionLambda), got {type(out).__name__}"
            )
        raise TypeError(
            f"DistributionParams: the module's {type(parent).__name__} was given a "
            f"{type(out).__name__} that no problayers distribution layer made, so its parameters "
            "cannot be exported"
        )
    layer, args, kwargs = calls[id(out)]

    def entry(value: Any) -> tuple[str, Any]:
        if isinstance(value, torch.Tensor):
            leaves.append(value)
            return ("param", len(leaves) - 1)
        if isinstance(value, D.Distribution):
            return ("node", _plan(value, calls, leaves, layer))
        return ("const", value)

    node = _Node(layer)
    node.args = [entry(a) for a in args]
    node.kwargs = {k: entry(v) for k, v in kwargs.items()}
    return node


def _rebuild(node: _Node, params: tuple[torch.Tensor, ...]) -> D.Distribution:
    def value(kind: str, item: Any) -> Any:
        if kind == "param":
            return params[item]
        if kind == "node":
            return _rebuild(item, params)
        return item

    args = [value(*a) for a in node.args]
    kwargs = {k: value(*v) for k, v in node.kwargs.items()}
    dist = node.layer.make_distribution(*args, **kwargs)
    return as_coercible(dist, node.layer.convert_to_tensor_fn)


class DistributionParams(nn.Module):
    """``module`` returning the parameters of its output distribution instead of the distribution.

    Args:
        module: an ``nn.Module`` whose output is a problayers distribution layer's output
            (possibly built from other distribution layers' outputs, e.g. a flow on a Gaussian).
        *example_args, **example_kwargs: one example input, run once (no gradients, no added
            losses) to find which layer makes the output.

    Input: the module's input. Output: a tuple of tensors, the distribution layer's tensor
    inputs (shape ``(*B, params_size)`` for the catalog's layers); ``rebuild(params)`` turns
    them back into the distribution (tensor-coercible, the layer's ``convert_to_tensor_fn``)
    with ``batch_shape`` B and the module's ``event_shape``.

    Example::

        >>> decoder = nn.Sequential(nn.Linear(2, 6), pl.IndependentBernoulli(6))
        >>> wrapped = DistributionParams(decoder, torch.zeros(4, 2))
        >>> (logits,) = wrapped(torch.zeros(3, 2))
        >>> wrapped.rebuild((logits,)).batch_shape
        torch.Size([3])
    """

    def __init__(self, module: nn.Module, *example_args: Any, **example_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        self.module = module
        require_initialized(module)  # the example's forward must not be a WeightNorm's first
        with torch.no_grad(), added_losses_skipped(), _Calls(module) as recorder:
            out = module(*example_args, **example_kwargs)
            leaves: list[torch.Tensor] = []
            self._plan = _plan(out, recorder.calls, leaves)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        with added_losses_skipped(), _Calls(self.module) as recorder:
            out = self.module(*args, **kwargs)
        leaves: list[torch.Tensor] = []
        _plan(out, recorder.calls, leaves)
        return tuple(leaves)

    def rebuild(self, params: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> D.Distribution:
        """The output distribution from the parameters ``forward`` (or an exported copy of it)
        returned: batch and event shapes as the module's own output."""
        return _rebuild(self._plan, tuple(params))


class ExportedDistribution:
    """A ``torch.export`` program of a module with a distribution output, callable like the
    module: ``exported(*args)`` runs ``program`` and rebuilds the distribution.

    Attributes:
        program: the ``torch.export.ExportedProgram`` (it returns the parameter tensors; save it
            with ``torch.export.save``).
        params: the :class:`DistributionParams` wrapper (its ``rebuild`` makes the distribution).
    """

    def __init__(
        self, program: torch.export.ExportedProgram, params: DistributionParams, by_position: bool = False
    ) -> None:
        self.program = program
        self.params = params
        self._run: Callable[..., Any] = program.module()
        self._by_position = by_position

    def __call__(self, *args: Any, **kwargs: Any) -> D.Distribution:
        if self._by_position:  # exported with keyword inputs: the program takes them by position
            args, kwargs = _by_position(self.params.module, args, kwargs, "exported(...)")
        return self.params.rebuild(self._run(*args, **kwargs))

    def __repr__(self) -> str:
        return f"ExportedDistribution(head={type(self.params._plan.layer).__name__})"


def _by_position(module: nn.Module, args: tuple, kwargs: dict, what: str) -> tuple[tuple, dict]:
    """``args, kwargs`` bound to ``module.forward``, every input it takes by position moved into
    ``args`` (the positional defaults filled in, so that none is skipped); what is left: the
    keyword-only inputs given."""
    signature = inspect.signature(module.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"{what}: the inputs do not fit {type(module).__name__}.forward: {err}") from None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for name, p in signature.parameters.items():
        if p.kind in positional and p.default is not p.empty:
            bound.arguments.setdefault(name, p.default)
    return bound.args, bound.kwargs


def export(
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    *,
    dynamic_batch: bool = True,
    strict: bool = False,
) -> ExportedDistribution:
    """``torch.export.export`` of a module whose output is a distribution.

    Args:
        module: e.g. a VAE's decoder ``(N, D) -> p(x|z)`` or encoder ``(B, *X) -> q(z|x)``.
        args: example positional inputs (a tuple).
        kwargs: example keyword inputs. Those that ``module.forward`` also takes by position
            are exported by position, with the forward's defaults filled in (torch.export
            2.13 makes no dynamic shapes for keyword inputs, pytorch#150022): the program
            takes them so, and the returned object binds a call's keywords the same way.
        dynamic_batch: make dimension 0 of every tensor input dynamic (one ``Dim`` shared by all).
        strict: ``torch.export``'s ``strict`` (default ``False``: non-strict tracing).

    Returns:
        An :class:`ExportedDistribution`; ``exported(*inputs)`` gives the distribution with the
        module's batch and event shapes, its parameters computed by the exported program.

    Raises:
        TypeError: ``args`` is not a tuple, or the output is not a distribution layer's output.
        ValueError: ``dynamic_batch`` with an example batch of 0 or 1, or with keyword-only
            inputs.
    """
    if not isinstance(args, tuple):
        raise TypeError(f"args: expected a tuple of example inputs, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs: expected a dict of keyword inputs, got {type(kwargs).__name__}")
    kwargs = dict(kwargs or {})
    # torch.export (2.13) makes no dynamic shapes for the wrapper's **kwargs (pytorch#150022):
    # keyword inputs the module also takes by position go in by position.
    by_position = bool(kwargs)
    if by_position:
        args, kwargs = _by_position(module, args, kwargs, "export")
        if kwargs and dynamic_batch:
            raise ValueError(
                f"kwargs: {', '.join(kwargs)} can only be passed by keyword, and torch.export "
                f"{torch.__version__.split('+')[0]} makes no dynamic batch with keyword inputs "
                "(pytorch/pytorch#150022); pass dynamic_batch=False, or let forward take them by position"
            )
    params = DistributionParams(module, *args, **kwargs)
    dynamic_shapes: dict[str, Any] | None = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")

        def spec(value: Any) -> dict[int, Any] | None:
            return {0: batch} if isinstance(value, torch.Tensor) and value.dim() else None

        for name, value in [*((f"args[{i}]", a) for i, a in enumerate(args)), *kwargs.items()]:
            if spec(value) is not None and value.shape[0] < 2:
                raise ValueError(
                    f"{name}: a dynamic batch needs an example batch of at least 2 (torch.export "
                    f"fixes sizes 0 and 1), got shape {tuple(value.shape)}; pass a larger example, "
                    "or dynamic_batch=False for this batch size only"
                )

        dynamic_shapes = {"args": tuple(spec(a) for a in args)}
    program = torch.export.export(params, args, kwargs, dynamic_shapes=dynamic_shapes, strict=strict)
    return ExportedDistribution(program, params, by_position)
