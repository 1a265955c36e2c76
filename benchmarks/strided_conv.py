"""The seed VAE's stride-2 layers in bf16 on the CPU: torch's (oneDNN's) passes against two
other formulations of the same arithmetic.

oneDNN's bf16 kernels run this model's stride-2 passes at about half the rate of its stride-1
ones (``onednn_kernels.py --by-shape``): the weight gradient of a stride-2 convolution, and
the forward of a stride-2 transposed convolution (the IWAE's decoder). Each has a formulation as
stride-1 work, measured here on the layers' shapes (channels_last, bf16, median of timed calls
after warm-up; each checked against float64 first):

* weight gradient, **dilated**: ``dW = conv(x^T, dy^T, dilation=2)``, batch and channels
  exchanged, the output gradient as a dilated kernel;
* weight gradient, **polyphase**: the input split into its 4 (row, column) parities, each a
  stride-1 weight gradient of a 3x3, 3x2, 2x3 or 2x2 part of the kernel;
* transposed forward, **sub-pixel**: each of the output's 4 parities a stride-1 convolution
  with that part of the kernel, written into the output's interleaved positions.

    python benchmarks/strided_conv.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from narrow_conv import weight_grad

CL = torch.channels_last
PAD = 2  # the layers' 'same' padding of a 5x5 kernel


def median_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def wgrad_dilated(dy: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    out = F.conv2d(x.transpose(0, 1), dy.transpose(0, 1), padding=PAD, dilation=2)  # (C, O, >=k, >=k)
    return out.transpose(0, 1)[..., :k, :k]


def wgrad_polyphase(dy: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    oh, ow = dy.shape[-2:]
    xp = F.pad(x, (PAD, PAD, PAD, PAD))
    grad = torch.empty(dy.shape[1], x.shape[1], k, k, dtype=x.dtype)
    for a in (0, 1):
        for b in (0, 1):
            ka, kb = len(range(a, k, 2)), len(range(b, k, 2))
            part = xp[:, :, a::2, b::2][:, :, : oh + ka - 1, : ow + kb - 1].contiguous(memory_format=CL)
            like = torch.empty(dy.shape[1], x.shape[1], ka, kb, dtype=x.dtype)
            grad[:, :, a::2, b::2] = weight_grad(dy, part, like, 1, 0)
    return grad


def tconv_subpixel(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)``, phase by phase."""
    n, _, h, wd = x.shape
    y = torch.empty(n, w.shape[1], 2 * h, 2 * wd, dtype=x.dtype).contiguous(memory_format=CL)
    for a in (0, 1):
        for b in (0, 1):
            ka, kb = (a + PAD) % 2, (b + PAD) % 2  # the kernel taps that reach this output parity
            sa, sb = (a + PAD - ka) // 2, (b + PAD - kb) // 2
            part = w[:, :, ka::2, kb::2].flip(-1, -2).transpose(0, 1).contiguous(memory_format=CL)
            km, kn = part.shape[-2:]
            xp = F.pad(x, (kn - 1 - sb, sb, km - 1 - sa, sa))
            y[:, :, a::2, b::2] = F.conv2d(xp, part)
    return y


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="images per training step (default 256)")
    p.add_argument("--latents", type=int, default=512, help="decoder latents per IWAE call (default 512)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bf16, k = torch.bfloat16, 5
    setup = f"{args.threads} threads, bf16, channels_last; median of {args.repeats}"
    print(f"# torch {torch.__version__}, {setup}")
    print("| pass | shape | torch's | other | other, ms | max rel. error (torch's, other) vs float64 |")
    print("|---|---|---|---|---|---|")
    for c, h, o in [(32, 28, 32), (64, 14, 64)]:  # the encoder's stride-2 convolutions
        x = torch.randn(args.batch, c, h, h, dtype=bf16).contiguous(memory_format=CL)
        dy = torch.randn(args.batch, o, h // 2, h // 2, dtype=bf16).contiguous(memory_format=CL)
        w = torch.empty(o, c, k, k, dtype=bf16)
        ref = weight_grad(dy.double(), x.double(), w.double(), 2, PAD)
        base = median_ms(lambda x=x, dy=dy, w=w: weight_grad(dy, x, w, 2, PAD), args.repeats)
        err0 = relative_error(weight_grad(dy, x, w, 2, PAD), ref)
        for name, fn in [("dilated", wgrad_dilated), ("polyphase", wgrad_polyphase)]:
            err = relative_error(fn(dy, x, k), ref)
            ms = median_ms(lambda fn=fn, x=x, dy=dy: fn(dy, x, k), args.repeats)
            where = f"{args.batch}x{c}x{h}x{h} -> {o} channels"
            print(f"| weight gradient | {where} | {base:.1f} | {name} | {ms:.1f} | {err0:.1e}, {err:.1e} |")
    for c, h, o in [(32, 14, 32), (64, 7, 64)]:  # the decoder's stride-2 transposed convolutions
        x = torch.randn(args.latents, c, h, h, dtype=bf16).contiguous(memory_format=CL)
        w = torch.randn(c, o, k, k, dtype=bf16).contiguous(memory_format=CL)

        def torch_tconv(x=x, w=w):
            return F.conv_transpose2d(x, w, stride=2, padding=PAD, output_padding=1)

        ref = F.conv_transpose2d(x.double(), w.double(), stride=2, padding=PAD, output_padding=1)
        err0, err = relative_error(torch_tconv(), ref), relative_error(tconv_subpixel(x, w), ref)
        base = median_ms(torch_tconv, args.repeats)
        ms = median_ms(lambda x=x, w=w: tconv_subpixel(x, w), args.repeats)
        shape = f"{args.latents}x{c}x{h}x{h} -> {o}x{2 * h}x{2 * h}"
        print(f"| transposed forward | {shape} | {base:.1f} | sub-pixel | {ms:.1f} | {err0:.1e}, {err:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
