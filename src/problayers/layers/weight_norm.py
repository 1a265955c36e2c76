"""``WeightNorm`` (``tfp.layers.WeightNorm``): a linear or convolutional layer whose weight is
``g * v / ||v||``, its direction and its length trained apart (Salimans and Kingma, 2016), with
their data-dependent initialization on the first batch.

Why not ``torch.nn.utils.parametrizations.weight_norm``: a module with a parametrization cannot
be pickled (torch supports its ``state_dict`` only), and the layers of this library pickle
(``torch.save(model)``, Lightning's ``ddp_spawn``, ``multiprocessing``). Here ``g`` and ``v``
are this module's own parameters, and each call computes the wrapped layer's operation
(``F.linear``, its convolution, ``F.conv_transpose{1,2,3}d``) at the weight they make with the
layer's bias and arguments: nothing of the wrapped module is changed during a call (threads may
share the module), and ``torch.jit.trace``, ``torch.compile`` and ``torch.export`` follow it
(``torch.func.functional_call``, the first way, cannot run under ``torch.jit.trace``). The
wrapped layer's own ``forward`` and hooks are not run.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .._state import exporting, versions
from ..precision import in_fp32
from .base import tensor_input

__all__ = ["WeightNorm"]

_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class WeightNorm(nn.Module):
    """A linear or convolutional layer with a weight-normalized weight (``tfp.layers.WeightNorm``).

    The layer's weight becomes ``w = g * v / ||v||``: ``v`` (the layer's weight as it was) gives
    the direction of each output unit's weights, ``g`` (one number per output unit) their length;
    the norm is over all of a unit's inputs (and kernel positions). With ``data_init`` (TFP's
    default), the first forward sets ``g`` and the bias so that the layer's outputs on that batch
    have zero mean and unit variance per output unit (before any activation that follows), as
    TFP's wrapper; without it the first forward sets ``g`` to ``||v||``, so the layer computes
    what its weight ``v`` does (``v`` may be re-initialized until then). The wrapped layer has
    no ``weight`` of its own (its ``reset_parameters`` fails): build a new ``WeightNorm`` instead.

    The first batch the layer sees initializes it, in any mode (as TFP's; with Lightning that
    is the sanity check's validation batch): give it a batch as large as any. Under DDP each
    process would initialize on its own batch: run one forward before wrapping the model in DDP
    (which then broadcasts rank 0's parameters). The same through ``torch.func``
    (``functional_call`` with other tensors, ``vmap``, ``grad``): the first call must be one of
    the module itself, which the init changes. A loaded ``state_dict`` carries the
    ``initialized`` flag, so a trained model is not initialized again.

    Args:
        layer: an ``nn.Linear``, ``nn.Conv{1,2,3}d`` or ``nn.ConvTranspose{1,2,3}d`` (transposed
            ones with ``groups=1``). Its ``weight`` parameter moves into this module as ``v``.
        data_init: initialize ``g`` and the bias from the first batch (default ``True``).

    Input: what ``layer`` takes (another layer's distribution output gives its tensor value).
    Output: what ``layer`` gives, a tensor of the same shape.

    Example::

        >>> layer = pl.WeightNorm(nn.Linear(4, 3))
        >>> out = layer(torch.randn(256, 4))  # the first batch initializes g and the bias
        >>> out.mean(0).abs().max() < 1e-5, layer.g.shape, layer.v.shape
        (tensor(True), torch.Size([3]), torch.Size([3, 4]))
    """

    def __init__(self, layer: nn.Module, data_init: bool = True) -> None:
        super().__init__()
        if not isinstance(layer, _LAYERS):
            names = ", ".join(cls.__name__ for cls in _LAYERS)
            raise TypeError(f"WeightNorm: layer: expected one of {names}, got {type(layer).__name__}")
        if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
            raise ValueError(
                f"WeightNorm: layer: {type(layer).__name__} has no weight yet: run one forward first"
            )
        transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
        if transposed and layer.groups != 1:
            raise ValueError(
                f"WeightNorm: layer: expected a transposed convolution with groups=1, got {layer.groups}"
            )
        if not isinstance(data_init, bool):
            raise TypeError(f"WeightNorm: data_init: expected a bool, got {type(data_init).__name__}")
        self.data_init = data_init
        #: the weight's output-unit dimension (the transposed convolutions store (C_in, C_out, *k))
        self.dim = 1 if transposed else 0
        #: the output's channel dimension: last for Linear, before the spatial ones for convolutions
        self.channel_dim = -1 if isinstance(layer, nn.Linear) else -1 - len(layer.kernel_size)
        v = layer.weight.detach()
        del layer.weight  # the layer's operation runs at g * v / ||v|| (``_run``)
        self.layer = layer
        self.v = nn.Parameter(v.clone())
        self.g = nn.Parameter(self._norm(self.v).detach().clone())  # (C_out,): the layer as it was
        # TFP's flag, saved with the weights: a loaded model is not initialized again.
        self.initialized: torch.Tensor
        self.register_buffer("initialized", torch.tensor(False, device=v.device))
        self._ready = False
        self._flag_seen = versions(self.initialized)  # the flag's version when last read

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        """``||v||`` per output unit: ``(C_out,)``."""
        other = [d for d in range(v.dim()) if d != self.dim]
        return torch.linalg.vector_norm(v, dim=other)

    def _unit(self, g: torch.Tensor) -> torch.Tensor:
        """``g * v / max(||v||, 1e-6)`` (TFP's ``l2_normalize``: a zero row stays zero)."""
        shape = [1] * self.v.dim()
        shape[self.dim] = -1
        return self.v * (g / self._norm(self.v).clamp_min(1e-6)).reshape(shape)

    @property
    def weight(self) -> torch.Tensor:
        """``g * v / ||v||``, the layer's weight (``v``'s shape)."""
        return self._unit(self.g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tensor_input("WeightNorm", x)
        if not self._refresh_ready():
            if exporting() or torch.jit.is_tracing():  # it would init at every call
                raise RuntimeError(_not_initialized(""))
            if not isinstance(self.g, nn.Parameter):  # the caller's tensors (torch.func)
                raise RuntimeError(
                    "WeightNorm: the first call initializes the module's own g and bias in place; "
                    "it got other tensors (torch.func.functional_call, vmap, grad): run one forward "
                    "of the module itself first"
                )
            self._initialize(x)
        return self._run(x, self.weight)

    def _refresh_ready(self) -> bool:
        """``_ready``, read again from the ``initialized`` buffer where something wrote to it
        since (its version counter moved) while not ready: a copy of another module's buffers
        sets it without a forward or ``load_state_dict`` (an
        :class:`~problayers.train.averaging.EMA`'s update). So the device is read once after
        such a write, never in a step, and not while tracing (``torch.compile`` and ``export``
        trace the first call's initialization; ``jit.trace``)."""
        if not self._ready and not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            seen = versions(self.initialized)
            if seen != self._flag_seen:
                self._flag_seen = seen
                self._ready = bool(self.initialized)
        return self._ready

    def _run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The wrapped layer's operation at ``weight`` (and its own bias unless ``bias`` is given)."""
        layer = self.layer
        bias = layer.bias if bias is None else bias
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):  # torch's forward without output_size
            transpose = _CONV_TRANSPOSE[len(layer.kernel_size)]
            padding = cast(tuple[int, ...], layer.padding)  # never a string for a transposed one
            return transpose(
                x, weight, bias, layer.stride, padding, layer.output_padding, layer.groups, layer.dilation
            )
        return layer._conv_forward(x, weight, bias)  # nn.Conv{1,2,3}d, its padding modes included

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        """TFP's first call: without ``data_init``, ``g = ||v||`` (``v`` as it is now: the layer
        computes what its weight ``v`` does); with it, :meth:`_data_init`."""
        if self.data_init:
            self._data_init(x)
        else:
            self.g.copy_(self._norm(self.v))
        self.initialized.fill_(True)
        self._ready = True  # mirrors the flag without reading it back from the device each call

    def _data_init(self, x: torch.Tensor) -> None:
        """Salimans and Kingma's init: with unit-norm weights and no bias the outputs ``t`` have
        per-unit mean ``m`` and variance ``s^2`` on this batch; ``g = 1 / s``, ``bias = -m / s``.
        Computed apart from the parameters and, under autocast, in fp32 (autocast keeps its cast
        of a parameter for the whole region: a parameter changed in place would go unseen)."""
        bias = self.layer.bias
        unit = {"weight": self._unit(torch.ones_like(self.g))}
        if bias is not None:
            unit["bias"] = torch.zeros_like(bias)
        t = in_fp32(lambda u, x: self._run(x, u["weight"], u.get("bias")), unit, x)  # (..., C_out, ...)
        channel = t.dim() + self.channel_dim
        if t.dim() == 0 or t.numel() // t.shape[channel] < 2:
            raise ValueError(
                "WeightNorm: the first batch sets each output unit's scale from its spread: expected "
                f"2 or more values per unit, got input of shape {tuple(x.shape)}"
            )
        var, mean = torch.var_mean(
            t, dim=[d for d in range(t.dim()) if d != channel], correction=0
        )  # (C_out,)
        scale = torch.rsqrt(var + 1e-10)  # TFP's epsilon
        self.g.copy_(scale)
        if bias is not None:
            bias.copy_(-mean * scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        flag = state_dict.get(prefix + "initialized")
        if flag is not None and not flag.is_meta:  # a meta state dict says nothing yet
            self._ready = bool(flag)

    def extra_repr(self) -> str:
        return f"data_init={self.data_init}, initialized={self._ready}"


def _not_initialized(name: str) -> str:
    where = f" {name!r}" if name else ""
    return f"WeightNorm{where}: run one forward (its initialization) before exporting"


def require_initialized(module: nn.Module) -> None:
    """A one-line ``RuntimeError`` naming the first :class:`WeightNorm` of ``module`` that has not
    run its first forward: an export's example input would otherwise be its data-dependent
    initialization, and change the user's model."""
    for name, sub in module.named_modules():
        if isinstance(sub, WeightNorm) and not sub._refresh_ready():
            raise RuntimeError(_not_initialized(name))
