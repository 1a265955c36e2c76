"""benchmarks/onednn_kernels.py's arithmetic count, on which docs/benchmarks.md's per-layer
GFLOP/s rest: the multiply-adds of a (de)convolution pass read from oneDNN's problem descriptor,
counting only the kernel taps inside the image, checked against torch itself (a convolution of
ones over ones counts, at each output pixel, the taps that land inside the image)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "onednn_kernels.py"
_spec = importlib.util.spec_from_file_location("_onednn_kernels", SCRIPT)
assert _spec is not None and _spec.loader is not None
onednn_kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(onednn_kernels)

# (input size, output size, kernel, stride, padding): the seed VAE's layers and some others
SHAPES = [
    (28, 28, 5, 1, 2),
    (28, 14, 5, 2, 2),
    (14, 7, 5, 2, 2),
    (7, 7, 5, 1, 2),
    (7, 1, 7, 1, 0),
    (9, 4, 3, 2, 0),
]


def _descriptor(mb, ic, oc, ih, oh, k, s, p, groups=1):
    g = f"g{groups}" if groups > 1 else ""
    return f"{g}mb{mb}_ic{ic}oc{oc}_ih{ih}oh{oh}kh{k}sh{s}dh0ph{p}_iw{ih}ow{oh}kw{k}sw{s}dw0pw{p}"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_convolution_count_is_the_taps_inside_the_image(shape):
    i, o, k, s, p = shape
    taps = F.conv2d(torch.ones(1, 1, i, i), torch.ones(1, 1, k, k), stride=s, padding=p)
    assert taps.shape[-1] == o
    mb, ic, oc = 3, 4, 6
    expected = 2 * mb * ic * oc * taps.sum().item() / 1e9
    got = onednn_kernels.gflop("convolution", _descriptor(mb, ic, oc, i, o, k, s, p))
    assert got == pytest.approx(expected, rel=1e-12)
    # the transposed convolution of the same shapes does the same work (o pixels in, i out)
    out_pad = i - ((o - 1) * s - 2 * p + k)
    y = F.conv_transpose2d(
        torch.ones(1, 1, o, o), torch.ones(1, 1, k, k), stride=s, padding=p, output_padding=out_pad
    )
    assert y.sum().item() == taps.sum().item()
    deconv = onednn_kernels.gflop("deconvolution", _descriptor(mb, oc, ic, o, i, k, s, p))
    assert deconv == pytest.approx(expected, rel=1e-12)


def test_groups_divide_the_work_and_other_primitives_have_none():
    full = onednn_kernels.gflop("convolution", _descriptor(2, 32, 32, 28, 28, 5, 1, 2))
    depthwise = onednn_kernels.gflop("convolution", _descriptor(2, 32, 32, 28, 28, 5, 1, 2, groups=32))
    assert depthwise == pytest.approx(full / 32)
    assert onednn_kernels.gflop("reorder", "64x64x5x5") is None
    assert onednn_kernels.gflop("matmul", "152x256:256x64") is None
