"""Weight-uncertainty convolutions in 1, 2 and 3 dimensions, and their transposed counterparts
(``tfp.layers.Convolution{1,2,3}DReparameterization`` / ``...Flipout``; TFP has no transposed
ones): ``nn.Conv{1,2,3}d`` / ``nn.ConvTranspose{1,2,3}d`` whose kernel and bias have a posterior.

The estimators, the posterior/prior ``fn`` arguments and the recorded KL term are those of
:mod:`problayers.layers.reparameterization`. The kernel has ``nn.Conv{n}d``'s layout ``(C_out,
C_in // groups, *k)``, resp. ``nn.ConvTranspose{n}d``'s ``(C_in, C_out // groups, *k)``; the
bias is ``(C_out,)``. Flipout's random signs are one per example and channel, shared over the
spatial dimensions (as TFP's convolutional Flipout), for the input and for the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._args import bias_flag, integer, positive_int
from ._conv_docs import _COUNT, _SPATIAL, _document
from .base import Activation
from .reparameterization import (
    BIAS_POSTERIOR_FN,
    DivergenceFn,
    WeightFn,
    _Flipout,
    _Reparameterization,
    _WeightUncertainty,
)
from .variational import MeanFieldNormal, StandardNormal

__all__ = [
    "Conv1dFlipout",
    "Conv1dReparameterization",
    "Conv2dFlipout",
    "Conv2dReparameterization",
    "Conv3dFlipout",
    "Conv3dReparameterization",
    "ConvTranspose1dFlipout",
    "ConvTranspose1dReparameterization",
    "ConvTranspose2dFlipout",
    "ConvTranspose2dReparameterization",
    "ConvTranspose3dFlipout",
    "ConvTranspose3dReparameterization",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _ints(value, n: int, name: str, low: int = 1) -> tuple[int, ...]:
    """``value`` (an int or ``n`` ints; integer-likes) as ``n`` ints ``>= low``; raise naming ``name``."""
    what = f"an int or {_COUNT[n]}"
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{name}: expected {what}, got {value!r}")
        ints = tuple(integer(v, name, what) for v in value)
    else:
        ints = (integer(value, name, what),) * n
    if any(v < low for v in ints):
        raise ValueError(f"{name}: expected {'positive' if low else 'non-negative'} ints, got {value!r}")
    return ints


class _ConvBase(_WeightUncertainty):
    """Shared by the convolutions: channel/kernel checks, input check, Flipout's signs, repr."""

    spatial_dims: int  # 1, 2 or 3
    transposed = False

    def _channels(self, in_channels, out_channels, kernel_size, stride, dilation, groups) -> None:
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups: {groups} must divide in_channels ({in_channels}) and out_channels")
        self.kernel_size = _ints(kernel_size, self.spatial_dims, "kernel_size")
        self.stride = _ints(stride, self.spatial_dims, "stride")
        self.dilation = _ints(dilation, self.spatial_dims, "dilation")

    def _check_input(self, x):
        n, c = self.spatial_dims, self.in_channels
        if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != c:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, {c}, {_SPATIAL[n]}) or "
                f"({c}, {_SPATIAL[n]}), got {tuple(x.shape)}"
            )

    def _sign_shapes(self, x, out):
        # One sign per example and channel, shared over the spatial dims (as TFP's Conv Flipout).
        ones = (1,) * self.spatial_dims
        return (*x.shape[: -self.spatial_dims], *ones), (*out.shape[: -self.spatial_dims], *ones)

    def _bias_view(self, bias):
        return bias.view(-1, *(1,) * self.spatial_dims)  # (C_out, 1, ..., 1)

    def _extra(self) -> str:
        return ""

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, {self._extra()}dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias_posterior is not None}, kl_weight={float(self.kl_weight):.3g}, "
            f"kl_use_exact={self.kl_use_exact}"
        )


class _Conv(_ConvBase):
    """N-d convolution (``nn.Conv{n}d`` arguments and layout)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        kernel_posterior_fn: WeightFn = MeanFieldNormal,
        kernel_prior_fn: WeightFn = StandardNormal,
        bias_posterior_fn: WeightFn | None = BIAS_POSTERIOR_FN,
        bias_prior_fn: WeightFn | None = None,
        kl_weight: float | torch.Tensor = 1.0,
        kl_use_exact: bool = True,
        activation: Activation = None,
        dtype: torch.dtype | None = None,
        *,
        padding_mode: str = "zeros",
        kernel_divergence_fn: DivergenceFn | str | None = "kl",
        bias_divergence_fn: DivergenceFn | str | None = "kl",
    ) -> None:
        self._channels(in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.padding: str | tuple[int, ...]
        if isinstance(padding, str):
            padding = padding.lower()  # Keras' "SAME"/"VALID" too, as Keras lowercases them
            if padding not in ("same", "valid"):
                raise ValueError(f"padding: expected 'same', 'valid', an int or ints, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride) and any(d != 1 for d in self.dilation):
                raise ValueError(  # as Keras refuses it
                    f"padding: 'same' with stride {self.stride} needs dilation 1, got {self.dilation}"
                )
            self.padding = padding
        else:
            self.padding = _ints(padding, self.spatial_dims, "padding", low=0)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode: expected one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        # F.pad's (last dim first) padding for the non-zero modes, as nn.Conv{n}d's.
        if padding == "valid":
            pads = [(0, 0)] * self.spatial_dims
        elif padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            pads = [(t // 2, t - t // 2) for t in totals]
        else:
            pads = [(p, p) for p in self.padding]  # type: ignore[misc]  # ints here
        self._pad = tuple(p for pair in reversed(pads) for p in pair)
        super().__init__(
            (self.out_channels, self.in_channels // self.groups, *self.kernel_size),
            (self.out_channels,) if bias_flag(bias) else None,
            kernel_posterior_fn,
            kernel_prior_fn,
            bias_posterior_fn,
            bias_prior_fn,
            kl_weight,
            kl_use_exact,
            activation,
            dtype,
            kernel_divergence_fn,
            bias_divergence_fn,
        )

    def _op(self, x, kernel, bias):
        conv = _CONV[self.spatial_dims]
        strided_same = self.padding == "same" and any(s != 1 for s in self.stride)
        if self.padding_mode == "zeros" and not strided_same:
            return conv(x, kernel, bias, self.stride, self.padding, self.dilation, self.groups)
        pad = self._strided_same_pad(x) if strided_same else self._pad
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, pad, mode=mode)  # (N, C_in, *padded)
        return conv(x, kernel, bias, self.stride, 0, self.dilation, self.groups)

    def _strided_same_pad(self, x: torch.Tensor) -> tuple[int, ...]:
        """TF's 'same' at a stride: ``ceil(n / s)`` outputs per dimension, the padding split with
        the odd one after (what Keras' layers, and so TFP's, compute); F.pad's order."""
        pads = []
        for n, k, s in zip(x.shape[-self.spatial_dims :], self.kernel_size, self.stride, strict=True):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(p for pair in pads[::-1] for p in pair)  # the last dimension first

    def _extra(self) -> str:
        return "" if self.padding_mode == "zeros" else f"padding_mode={self.padding_mode!r}, "


class _ConvTranspose(_ConvBase):
    """N-d transposed convolution (``nn.ConvTranspose{n}d`` arguments, their order and layout)."""

    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, ...] = 1,
        kernel_posterior_fn: WeightFn = MeanFieldNormal,
        kernel_prior_fn: WeightFn = StandardNormal,
        bias_posterior_fn: WeightFn | None = BIAS_POSTERIOR_FN,
        bias_prior_fn: WeightFn | None = None,
        kl_weight: float | torch.Tensor = 1.0,
        kl_use_exact: bool = True,
        activation: Activation = None,
        dtype: torch.dtype | None = None,
        *,
        kernel_divergence_fn: DivergenceFn | str | None = "kl",
        bias_divergence_fn: DivergenceFn | str | None = "kl",
    ) -> None:
        self._channels(in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.padding = _ints(padding, self.spatial_dims, "padding", low=0)
        self.output_padding = _ints(output_padding, self.spatial_dims, "output_padding", low=0)
        for p, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if p >= max(s, d):
                raise ValueError(
                    f"output_padding: each must be smaller than its stride or dilation, got "
                    f"{self.output_padding} (stride {self.stride}, dilation {self.dilation})"
                )
        super().__init__(
            (self.in_channels, self.out_channels // self.groups, *self.kernel_size),
            (self.out_channels,) if bias_flag(bias) else None,
            kernel_posterior_fn,
            kernel_prior_fn,
            bias_posterior_fn,
            bias_prior_fn,
            kl_weight,
            kl_use_exact,
            activation,
            dtype,
            kernel_divergence_fn,
            bias_divergence_fn,
        )

    def _op(self, x, kernel, bias):
        conv = _CONV_T[self.spatial_dims]
        return conv(
            x, kernel, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )

    def _extra(self) -> str:
        return f"output_padding={self.output_padding}, "


@_document
class Conv1dReparameterization(_Conv, _Reparameterization):
    spatial_dims = 1


@_document
class Conv1dFlipout(_Conv, _Flipout):
    spatial_dims = 1


@_document
class Conv2dReparameterization(_Conv, _Reparameterization):
    spatial_dims = 2


@_document
class Conv2dFlipout(_Conv, _Flipout):
    spatial_dims = 2


@_document
class Conv3dReparameterization(_Conv, _Reparameterization):
    spatial_dims = 3


@_document
class Conv3dFlipout(_Conv, _Flipout):
    spatial_dims = 3


@_document
class ConvTranspose1dReparameterization(_ConvTranspose, _Reparameterization):
    spatial_dims = 1


@_document
class ConvTranspose1dFlipout(_ConvTranspose, _Flipout):
    spatial_dims = 1


@_document
class ConvTranspose2dReparameterization(_ConvTranspose, _Reparameterization):
    spatial_dims = 2


@_document
class ConvTranspose2dFlipout(_ConvTranspose, _Flipout):
    spatial_dims = 2


@_document
class ConvTranspose3dReparameterization(_ConvTranspose, _Reparameterization):
    spatial_dims = 3


@_document
class ConvTranspose3dFlipout(_ConvTranspose, _Flipout):
    spatial_dims = 3
