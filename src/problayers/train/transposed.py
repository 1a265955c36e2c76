"""Transposed convolutions computed with the convolution's own passes, as TensorFlow does.

A transposed convolution is the data gradient of a convolution, so its three passes can run on
the convolution primitive: forward = the convolution's data gradient (``x`` taken as the
gradient of a convolution's output), input gradient = the convolution's forward, weight
gradient = the convolution's weight gradient with the roles of input and output exchanged.
TensorFlow computes ``Conv2DTranspose`` this way; torch calls oneDNN's deconvolution primitive,
whose weight gradient was measured up to 1.75x slower than the convolution's for the seed
VAE's strided layers on a 2-core AMD EPYC (docs/benchmarks.md: the fp32 step 5% and the bf16
step 8% faster with it there). It is a step option (:func:`problayers.train.fastpath.make_train_step`,
``transposed_as_conv``) that the CPU probe measures per machine; the numbers are the same up to
rounding (other kernels, another summation order), and under autocast the bias is added after
the lower-precision result is rounded, not inside the kernel.

:func:`use_convolution_passes` converts a model's ``nn.ConvTranspose1d/2d/3d`` in place by
switching each one's class to a subclass whose ``forward`` differs and nothing else: the same
parameters, ``state_dict`` keys, ``isinstance`` answers; such a model pickles and deep-copies.

The other way round, a convolution with few output channels (a decoder's last layer, one
channel for MNIST) gets its weight gradient from the transposed convolution's pass: oneDNN
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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "NARROW_CHANNELS",
    "Conv1dByTransposed",
    "Conv2dByTransposed",
    "Conv3dByTransposed",
    "ConvTranspose1dByConv",
    "ConvTranspose2dByConv",
    "ConvTranspose3dByConv",
    "conv_transpose_by_conv",
    "use_convolution_passes",
    "use_transposed_weight_gradient",
]

#: Convolutions with fewer output channels than this take the exchanged weight gradient.
NARROW_CHANNELS = 16


class _ByConvolution(torch.autograd.Function):
    """``conv_transpose{N}d`` whose forward and backward are the convolution's passes."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, stride, padding, output_padding, groups, dilation):
        n = x.dim() - 2
        # The transposed convolution's output is the input of the convolution it transposes.
        size = [
            (x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1)
            + output_padding[i] + 1
            for i in range(n)
        ]  # fmt: skip
        # (torch.nn.grad.conv*d_input passes an expanded 1-element tensor here, whose layout
        # is not x's: oneDNN then runs NCHW, measured slower with channels_last models.)
        like = torch.empty(
            (x.shape[0], weight.shape[1] * groups, *size),
            dtype=x.dtype,
            device=x.device,
            memory_format=_memory_format(x),
        )  # only its shape and layout are read
        y = torch.ops.aten.convolution_backward(
            x, like, weight, None, stride, padding, dilation, False, [0] * n, groups, [True, False, False]
        )[0]  # (B, C_out, *size)
        if bias is not None:
            y.add_(bias.view(1, -1, *([1] * n)))
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, groups, dilation, bias is not None)
        return y

    @staticmethod
    def backward(ctx: Any, dy):
        x, weight = ctx.saved_tensors
        stride, padding, groups, dilation, has_bias = ctx.conf
        n = x.dim() - 2
        dy = dy.to(x.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # the convolution's forward of the output's gradient
            dx = torch.ops.aten.convolution(
                dy, weight, None, stride, padding, dilation, False, [0] * n, groups
            )
        if ctx.needs_input_grad[1]:  # the convolution's weight gradient, input and output exchanged
            dw = torch.ops.aten.convolution_backward(
                x, dy, weight, None, stride, padding, dilation, False, [0] * n, groups, [False, True, False]
            )[1]
        if has_bias and ctx.needs_input_grad[2]:
            db = dy.sum([0, *range(2, 2 + n)])
        return dx, dw, db, None, None, None, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def conv_transpose_by_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, ...] = (1,),
    padding: tuple[int, ...] = (0,),
    output_padding: tuple[int, ...] = (0,),
    groups: int = 1,
    dilation: tuple[int, ...] = (1,),
) -> torch.Tensor:
    """``torch.nn.functional.conv_transpose{N}d(x, weight, bias, ...)`` on the convolution's passes.

    Args:
        x: ``(B, C_in, *spatial)`` with N = 1, 2 or 3 spatial dimensions (batched only).
        weight: ``(C_in, C_out / groups, *kernel)``, as for ``conv_transpose{N}d``.
        bias: ``(C_out,)`` or ``None``.
        stride, padding, output_padding, dilation: one int per spatial dimension (or one for all).
        groups: as for ``conv_transpose{N}d``.

    Returns:
        ``(B, C_out, *out_spatial)``, in ``x``'s memory format. Under ``torch.autocast`` the
        inputs are cast as autocast casts ``conv_transpose{N}d``'s.
    """
    n = x.dim() - 2
    if n not in (1, 2, 3) or weight.dim() != x.dim():
        raise ValueError(
            f"x: expected (B, C, *spatial) with 1-3 spatial dimensions and a weight of as many, "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )

    def per_dim(name: str, value: int | tuple[int, ...]) -> list[int]:
        values = [value] * n if isinstance(value, int) else list(value)
        if len(values) == 1:
            values *= n
        if len(values) != n:
            raise ValueError(f"{name}: expected an int or {n} ints, got {value!r}")
        return values

    args = [
        per_dim(k, v)
        for k, v in (("stride", stride), ("padding", padding), ("output_padding", output_padding))
    ]
    dil = per_dim("dilation", dilation)
    return _apply_autocast(_ByConvolution, x, weight, bias, *args, groups, dil)


def _apply_autocast(function: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any, *args: Any) -> Any:
    """``function.apply(x, weight, bias, *args)``, its tensors cast as autocast casts a convolution's."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return function.apply(x, weight, bias, *args)
    return function.apply(x, weight, bias, *args)


def _in_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` with the strides of ``memory_format`` spelled out: for one channel ``contiguous``
    keeps NCHW strides (the layouts coincide), which makes oneDNN pick its NCHW kernels."""
    if memory_format == torch.contiguous_format:
        return t.contiguous()
    wanted = torch.empty(t.shape, device="meta", memory_format=memory_format).stride()
    return t if t.stride() == wanted else torch.empty_like(t, memory_format=memory_format).copy_(t)


class _TransposedWeightGradient(torch.autograd.Function):
    """A stride-1, one-group convolution whose weight gradient is the transposed convolution's
    (and whose forward, for one output channel, is depthwise + channel sum)."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, padding, dilation):
        n = x.dim() - 2
        ones, zeros = [1] * n, [0] * n
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)
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
        return _in_format(y, _memory_format(x))  # torch's convolution keeps x's layout

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
                x, _in_format(dy, _memory_format(x)), kernel, None, ones, pad, dilation, False, zeros, 1,
                [False, True, False],
            )[1]  # fmt: skip
            dw = dk.flip(spatial).transpose(0, 1)  # (C_out, C_in, *k)
        if has_bias and ctx.needs_input_grad[2]:
            db = dy.sum([0, *spatial])
        return dx, dw, db, None, None


class _ByConvMixin:
    """``forward`` of an ``nn.ConvTranspose{N}d`` on :func:`conv_transpose_by_conv`."""

    _dims: int

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        conv: Any = self
        if input.dim() != self._dims + 2:  # unbatched input: torch's own path
            return super().forward(input, output_size)  # type: ignore[misc]
        output_padding = conv._output_padding(
            input, output_size, conv.stride, conv.padding, conv.kernel_size, self._dims, conv.dilation
        )
        return conv_transpose_by_conv(
            input,
            conv.weight,
            conv.bias,
            conv.stride,
            conv.padding,
            output_padding,
            conv.groups,
            conv.dilation,
        )


class ConvTranspose1dByConv(_ByConvMixin, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` computed with the convolution's passes (see the module docstring)."""

    _dims = 1


class ConvTranspose2dByConv(_ByConvMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` computed with the convolution's passes (see the module docstring)."""

    _dims = 2


class ConvTranspose3dByConv(_ByConvMixin, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` computed with the convolution's passes (see the module docstring)."""

    _dims = 3


_BY_CONV: dict[type, type] = {
    nn.ConvTranspose1d: ConvTranspose1dByConv,
    nn.ConvTranspose2d: ConvTranspose2dByConv,
    nn.ConvTranspose3d: ConvTranspose3dByConv,
}


def use_convolution_passes(model: nn.Module, *, dry_run: bool = False) -> int:
    """Compute ``model``'s transposed convolutions with the convolution's passes, in place.

    Args:
        model: any module; its ``nn.ConvTranspose1d/2d/3d`` submodules (exactly those classes,
            not subclasses of them, whose ``forward`` may differ) switch to the ``...ByConv`` class.
        dry_run: only count them.

    Returns:
        How many layers were (or, with ``dry_run``, would be) switched.
    """
    return _switch(model, _BY_CONV, dry_run)


def _switch(
    model: nn.Module, classes: dict[type, type], dry_run: bool, accept: Any = lambda module: True
) -> int:
    """Switch each submodule whose exact class is a key of ``classes`` (and that ``accept``
    takes) to the value's class, in place unless ``dry_run``; how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    count = 0
    for module in model.modules():
        target = classes.get(type(module))
        if target is not None and accept(module):
            count += 1
            if not dry_run:
                module.__class__ = target
    return count


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
        return _apply_autocast(
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
    return _switch(model, _BY_TRANSPOSED, dry_run, _exchangeable)
