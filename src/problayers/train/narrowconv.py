"""Narrow convolutions (few output channels) with the transposed convolution's weight gradient.

The other way round from :mod:`problayers.train.transposed`, a convolution with few output
channels (a decoder's last layer, one channel for MNIST) gets its weight gradient from the
transposed convolution's pass: oneDNN
vectorizes that pass over the output channels (16 fp32 lanes with AVX-512), so with one output
channel most lanes idle, and exchanged it was several times faster for fewer than 16 channels
and equal from 16 on (docs/benchmarks.md, "Narrow convolutions"). The identity holds for
stride 1 and one group: ``conv(x, W)`` is ``conv_transpose(x, K)`` with ``K`` the flipped, in/out-
exchanged ``W`` and padding ``dilation * (k - 1) - padding``, whose weight gradient is the
convolution's with input and output exchanged. :func:`use_transposed_weight_gradient` switches
such layers in place (``nn.Conv{1,2,3}d`` -> ``Conv{1,2,3}dByTransposed``); the input gradient
stays torch's. The forward does not gain from the exchange (oneDNN runs it on the same kernel),
so with exactly one output channel it is a depthwise convolution (vectorized over the input
channels) followed by the sum over the channels: the same numbers up to the summation order.
As for the transposed layers, ``torch.func``'s transforms (``grad``, ``vmap``, ``jacrev``, and
forward mode: ``jvp``, ``jacfwd``, ``hessian``) see through a switched layer, whatever the
batch's layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .convpasses import apply_autocast, in_format, memory_format_of, switch, with_forward_mode

__all__ = [
    "NARROW_CHANNELS",
    "Conv1dByTransposed",
    "Conv2dByTransposed",
    "Conv3dByTransposed",
    "use_transposed_weight_gradient",
]

#: Convolutions with fewer output channels than this take the exchanged weight gradient.
NARROW_CHANNELS = 16


class _TransposedWeightGradient(torch.autograd.Function):
    """A stride-1, one-group convolution whose weight gradient is the transposed convolution's
    (and whose forward, for one output channel, is depthwise + channel sum)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, padding, dilation):
        n = x.dim() - 2
        ones, zeros = [1] * n, [0] * n
        if weight.shape[0] != 1:
            return torch.ops.aten.convolution(x, weight, bias, ones, padding, dilation, False, zeros, 1)
        # One output channel: a depthwise convolution (one group per input channel, which
        # oneDNN vectorizes over the channels), then the sum over the channels.
        per_channel = torch.ops.aten.convolution(
            x, weight.transpose(0, 1), None, ones, padding, dilation, False, zeros, weight.shape[1]
        )  # (B, C_in, *spatial)
        y = per_channel.sum(1, keepdim=True)  # (B, 1, *spatial)
        if bias is not None:
            y = y + bias.view(1, 1, *ones)
        return in_format(y, memory_format_of(x))  # torch's convolution keeps x's layout

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)

    @staticmethod
    def backward(ctx: Any, dy):
        x, weight = ctx.saved_tensors
        padding, dilation, has_bias = ctx.conf
        n = x.dim() - 2
        ones, zeros, spatial = [1] * n, [0] * n, list(range(2, 2 + n))
        dy = dy.to(x.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # torch's own input gradient
            dx = torch.ops.aten.convolution_backward(
                dy, x, weight, None, ones, padding, dilation, False, zeros, 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            kernel = weight.transpose(0, 1).flip(spatial)  # (C_in, C_out, *k): the transposed conv's
            pad = [d * (k - 1) - p for d, k, p in zip(dilation, weight.shape[2:], padding, strict=True)]
            dk = torch.ops.aten.convolution_backward(  # its weight gradient, input and output exchanged
                x, in_format(dy, memory_format_of(x)), kernel, None, ones, pad, dilation, False, zeros, 1,
                [False, True, False],
            )[1]  # fmt: skip
            dw = dk.flip(spatial).transpose(0, 1)  # (C_out, C_in, *k)
        if has_bias and ctx.needs_input_grad[2]:
            db = dy.sum([0, *spatial])
        return dx, dw, db, None, None


_TransposedWeightGradient.with_jvp = with_forward_mode(_TransposedWeightGradient)  # type: ignore[attr-defined]


def _exchangeable(conv: nn.Module) -> bool:
    """Whether the exchanged weight gradient applies to ``conv`` (and is faster)."""
    c: Any = conv
    return (
        c.out_channels < NARROW_CHANNELS
        and c.groups == 1
        and c.padding_mode == "zeros"
        and not isinstance(c.padding, str)
        and all(s == 1 for s in c.stride)
        and all(p <= d * (k - 1) for p, d, k in zip(c.padding, c.dilation, c.kernel_size, strict=True))
    )


class _ByTransposedMixin:
    """``forward`` of a narrow ``nn.Conv{N}d`` whose weight gradient is the transposed convolution's."""

    _dims: int

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != self._dims + 2 or not _exchangeable(self):  # type: ignore[arg-type]
            return super().forward(input)  # type: ignore[misc]
        conv: Any = self
        return apply_autocast(
            _TransposedWeightGradient, input, conv.weight, conv.bias, list(conv.padding), list(conv.dilation)
        )


class Conv1dByTransposed(_ByTransposedMixin, nn.Conv1d):
    """``nn.Conv1d`` whose weight gradient is the transposed convolution's (module docstring)."""

    _dims = 1


class Conv2dByTransposed(_ByTransposedMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight gradient is the transposed convolution's (module docstring)."""

    _dims = 2


class Conv3dByTransposed(_ByTransposedMixin, nn.Conv3d):
    """``nn.Conv3d`` whose weight gradient is the transposed convolution's (module docstring)."""

    _dims = 3


_BY_TRANSPOSED: dict[type, type] = {
    nn.Conv1d: Conv1dByTransposed,
    nn.Conv2d: Conv2dByTransposed,
    nn.Conv3d: Conv3dByTransposed,
}


def use_transposed_weight_gradient(model: nn.Module, *, dry_run: bool = False) -> int:
    """Give ``model``'s narrow convolutions the transposed convolution's weight gradient, in place.

    Args:
        model: any module; its ``nn.Conv1d/2d/3d`` submodules (exactly those classes) with fewer
            than :data:`NARROW_CHANNELS` output channels, stride 1, one group and zero padding
            given as numbers switch to the ``...ByTransposed`` class; the others are left alone.
        dry_run: only count them.

    Returns:
        How many layers were (or, with ``dry_run``, would be) switched.
    """
    return switch(model, _BY_TRANSPOSED, dry_run, _exchangeable)
