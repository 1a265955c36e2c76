"""A narrow convolution's forward and weight gradient: oneDNN's convolution, and the same
computed as the transposed convolution with input and output exchanged
(``problayers.train.transposed.use_transposed_weight_gradient``), per number of output
channels, on the seed decoder's last layer's shapes (x of 256 x 32 x 28 x 28, channels_last,
a 5x5 kernel, padding 2)::

    python benchmarks/narrow_conv.py [--threads 2] [--batch 256]

Forward, exchanged: the transposed convolution ``conv_transpose(x, K)`` run as the data
gradient of the convolution with input and output exchanged (what
``problayers.train.transposed.conv_transpose_by_conv`` calls). Forward, depthwise (one output
channel only): a depthwise convolution summed over the channels, what the switched layer runs.
"""

from __future__ import annotations

import argparse
import time

import torch


def _ms(fn, repeats: int = 8) -> float:
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def weight_grad(
    grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 2
) -> torch.Tensor:
    """A 2-D convolution's weight gradient (aten.convolution_backward; of ``weight`` only its
    shape is read)."""
    s, p = [stride, stride], [padding, padding]
    return torch.ops.aten.convolution_backward(
        grad_output, input, weight, None, s, p, [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


def _exchanged_forward(x: torch.Tensor, kernel: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``conv_transpose(x, kernel, padding=2)``: the data gradient of the convolution (``like``'s
    shape) whose output gradient is ``x``."""
    return torch.ops.aten.convolution_backward(
        x, like, kernel, None, [1, 1], [2, 2], [1, 1], False, [0, 0], 1, [True, False, False]
    )[0]


def _depthwise_forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A one-output-channel convolution as a depthwise convolution summed over the channels."""
    per_channel = torch.nn.functional.conv2d(x, weight.transpose(0, 1), padding=2, groups=x.shape[1])
    return per_channel.sum(1, keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="images (256: the training batch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype in (torch.float32, torch.bfloat16):
        b = args.batch
        x = torch.randn(b, 32, 28, 28, dtype=dtype).to(memory_format=cl)  # the layer's input
        for out in (1, 2, 4, 8, 16, 32):
            w = torch.randn(out, 32, 5, 5, dtype=dtype)
            dy = torch.randn(b, out, 28, 28, dtype=dtype).to(memory_format=cl)
            k = w.transpose(0, 1).flip(-1, -2).contiguous()  # the transposed convolution's weight
            # fmt: off
            fwd = _ms(lambda: torch.nn.functional.conv2d(x, w, padding=2))  # noqa: B023 (called at once)
            fwd_x = _ms(lambda: _exchanged_forward(x, k, dy))  # noqa: B023
            fwd_dw = _ms(lambda: _depthwise_forward(x, w)) if out == 1 else float("nan")  # noqa: B023
            wgrad = _ms(lambda: weight_grad(dy, x, w))  # noqa: B023
            wgrad_x = _ms(lambda: weight_grad(x, dy, k))  # noqa: B023
            # fmt: on
            print(
                f"{dtype!s:15s} out {out:2d}: forward torch {fwd:6.1f} ms, exchanged {fwd_x:6.1f} ms, "
                f"depthwise {fwd_dw:6.1f} ms; "
                f"weight gradient torch {wgrad:6.1f} ms, exchanged {wgrad_x:6.1f} ms"
            )


if __name__ == "__main__":
    main()
