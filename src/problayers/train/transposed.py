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
parameters, ``state_dict`` keys, ``isinstance`` answers; such a model pickles and deep-copies,
and ``torch.func``'s transforms (``grad``, ``vmap``, ``jacrev``, and forward mode: ``jvp``,
``jacfwd``, ``hessian``) see through it, channels_last batches included. A
layer whose output padding is not below its stride (allowed where the dilation exceeds the
stride) keeps torch's own forward.
The narrow convolutions' step option, the other way round, is :mod:`problayers.train.narrowconv`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .convpasses import apply_autocast, memory_format_of, switch, with_forward_mode
from .narrowconv import (
    NARROW_CHANNELS,
    Conv1dByTransposed,
    Conv2dByTransposed,
    Conv3dByTransposed,
    use_transposed_weight_gradient,
)

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
]  # the narrow convolutions' (problayers.train.narrowconv) too, where they were first


class _ByConvolution(torch.autograd.Function):
    """``conv_transpose{N}d`` whose forward and backward are the convolution's passes
    (``torch.func``'s transforms through ``setup_context`` and the generated ``vmap`` rule;
    forward mode in eager calls through ``with_jvp``: dynamo does not trace a custom ``jvp``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, output_padding, groups, dilation):
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
            memory_format=memory_format_of(x),
        )  # only its shape and layout are read
        y = torch.ops.aten.convolution_backward(
            x, like, weight, None, stride, padding, dilation, False, [0] * n, groups, [True, False, False]
        )[0]  # (B, C_out, *size)
        if bias is not None:
            y = y + bias.view(1, -1, *([1] * n))
        return y

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, stride, padding, output_padding, groups, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, groups, dilation, bias is not None, output_padding)

    @staticmethod
    def backward(ctx: Any, dy):
        x, weight = ctx.saved_tensors
        stride, padding, groups, dilation, has_bias, _ = ctx.conf
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


_ByConvolution.with_jvp = with_forward_mode(_ByConvolution)  # type: ignore[attr-defined]


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
    return apply_autocast(_ByConvolution, x, weight, bias, *args, groups, dil)


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
        if any(p >= s for p, s in zip(output_padding, conv.stride, strict=True)) or (
            input.shape[1] != conv.in_channels  # torch's own message
        ):  # output padding >= stride (a dilation above the stride allows it): no convolution maps back
            return super().forward(input, output_size)  # type: ignore[misc]
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
    return switch(model, _BY_CONV, dry_run)
