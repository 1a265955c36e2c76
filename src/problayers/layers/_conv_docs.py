"""The docstrings of the weight-uncertainty convolutions, written from each class's dimensions,
kind (plain or transposed) and estimator, so that the twelve classes say the same things the same
way."""

from __future__ import annotations

from typing import Protocol, TypeVar

from .reparameterization import _WEIGHT_ARGS, _Flipout

_COUNT = {1: "a tuple of one int", 2: "a pair of ints", 3: "a triple of ints"}
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL = {
    1: "``(k,)`` (an int or a 1-tuple)",
    2: "``(kh, kw)`` (an int for both)",
    3: "``(kd, kh, kw)`` (an int for all three)",
}


# (n, transposed) -> (constructor, example input shape, example output shape)
_EXAMPLES = {
    (1, False): ("1, 4, kernel_size=3, padding=1", (2, 1, 8), (2, 4, 8)),
    (2, False): ("1, 4, kernel_size=3, padding=1", (2, 1, 8, 8), (2, 4, 8, 8)),
    (3, False): ("1, 4, kernel_size=3, padding=1", (2, 1, 4, 4, 4), (2, 4, 4, 4, 4)),
    (1, True): ("4, 1, kernel_size=2, stride=2", (2, 4, 8), (2, 1, 16)),
    (2, True): ("4, 1, kernel_size=2, stride=2", (2, 4, 4, 4), (2, 1, 8, 8)),
    (3, True): ("4, 1, kernel_size=2, stride=2", (2, 4, 2, 2, 2), (2, 1, 4, 4, 4)),
}


class _ConvKind(Protocol):
    spatial_dims: int
    transposed: bool


_ConvClass = TypeVar("_ConvClass", bound=type[_ConvKind])


def _document(cls: _ConvClass) -> _ConvClass:
    """Write the docstring of a public convolution from its dimensions, kind and estimator."""
    n, transposed, flipout = cls.spatial_dims, cls.transposed, issubclass(cls, _Flipout)
    ref = f"nn.ConvTranspose{n}d" if transposed else f"nn.Conv{n}d"
    if flipout:
        summary = f"``{ref}`` with a posterior over its kernel and bias; Flipout perturbations."
        how = (
            "One kernel perturbation per forward, decorrelated per example by random signs (one per\n"
            "example and channel, shared over the spatial dimensions); the kernel's posterior must be\n"
            "symmetric about its mean"
        )
        tfp = f"Convolution{n}DFlipout"
    else:
        summary = f"``{ref}`` with a posterior over its kernel and bias; one sample per forward."
        how = "One reparameterized kernel (and bias) sample per forward is shared by the whole\nbatch"
        tfp = f"Convolution{n}DReparameterization"
    tfp = "no TFP counterpart" if transposed else f"``tfp.layers.{tfp}``"
    sp = _SPATIAL[n]
    out_sp = ", ".join(f"{d}_out" for d in sp.split(", "))
    layout = "(C_in, C_out // groups, *k)" if transposed else "(C_out, C_in // groups, *k)"
    args = [
        "    in_channels: ``C_in``, the input's channels.",
        "    out_channels: ``C_out``, the output's channels.",
        f"    kernel_size: the kernel's {_KERNEL[n]}; the kernel has shape",
        f"        ``{layout}``.",
        f"    stride: as ``{ref}`` (default 1).",
    ]
    if transposed:
        args += [
            f"    padding: an int or {_COUNT[n]} (default 0), as ``{ref}``: it crops the",
            "        output.",
            f"    output_padding: added to one side of the output (default 0), as ``{ref}``; each",
            "        must be smaller than its stride or its dilation.",
            f"    groups: as ``{ref}`` (default 1); must divide ``in_channels`` and ``out_channels``.",
            "    bias: whether the layer has a bias (default ``True``).",
            f"    dilation: as ``{ref}`` (default 1).",
        ]
    else:
        args += [
            '    padding: ``"same"``, ``"valid"`` (either in any case: Keras\' ``"SAME"``), an int or',
            f'        {_COUNT[n]} (default 0), as ``{ref}``; ``"same"`` at a stride is TF\'s (``ceil(n /',
            "        stride)`` outputs, the odd padding after), which torch refuses.",
            f"    dilation: as ``{ref}`` (default 1).",
            f"    groups: as ``{ref}`` (default 1); must divide ``in_channels`` and ``out_channels``.",
            "    bias: whether the layer has a bias (default ``True``).",
        ]
    weight_args = _WEIGHT_ARGS.format(
        posterior=" (it must be symmetric about its mean)" if flipout else "", w=""
    )
    args.append(weight_args.rstrip("\n"))
    if not transposed:
        args.append(
            '    padding_mode: keyword-only; ``"zeros"`` (default), ``"reflect"``, ``"replicate"``\n'
            f'        or ``"circular"``, as ``{ref}``.'
        )
    make, x_shape, y_shape = _EXAMPLES[n, transposed]
    cls.__doc__ = f"""{summary}

{how} ({tfp}; see the module doc).

Args:
{chr(10).join(args)}

Input: ``(N, C_in, {sp})`` or ``(C_in, {sp})``. Output: a tensor of shape
``(N, C_out, {out_sp})`` (resp. without ``N``), the sizes as ``{ref}``'s;
each forward records ``kl_weight * KL`` (kernel and bias) as an added loss
(:func:`~problayers.collect_losses`).

Example::

    >>> layer = pl.{cls.__name__}({make})
    >>> layer(torch.zeros{x_shape}).shape, pl.collect_losses(layer).shape
    (torch.Size({list(y_shape)}), torch.Size([]))
"""
    return cls
