"""problayers.numerics.logsumexp: torch.logsumexp's value and gradient, and no exp that underflows."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from problayers import numerics
from problayers.numerics import logsumexp

#: The log of the smallest normal fp32: an exp of anything below it underflows (MKL's slow path).
UNDERFLOW = math.log(torch.finfo(torch.float32).tiny)


class _ExpArguments(TorchDispatchMode):
    """The smallest argument of every ``exp`` the code under it computes (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.smallest = math.inf

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.exp.default, torch.ops.aten.exp_.default) and args[0].numel():
            self.smallest = min(self.smallest, float(args[0].min()))
        return func(*args, **(kwargs or {}))


def _spread(shape, dtype, width=2000.0):
    """Log-terms spread over ``width`` nats: most of them far under the largest."""
    return (torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * -width).to(
        dtype
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, dim, keepdim",
    [((7,), 0, False), ((3, 500), -1, False), ((4, 5, 6), (0, 2), True), ((2, 3), 0, True)],
)
@pytest.mark.parametrize("width", [5.0, 2000.0])
def test_value_and_gradient_are_torchs(dtype, shape, dim, keepdim, width):
    x = _spread(shape, dtype, width).requires_grad_()
    ours = logsumexp(x, dim, keepdim)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    theirs = torch.logsumexp(x, dim, keepdim)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert ours.shape == theirs.shape and ours.dtype == dtype
    torch.testing.assert_close(
        ours, theirs, rtol=0, atol=4 * torch.finfo(dtype).eps * float(theirs.detach().abs().max())
    )
    # the terms under the floor get no gradient; torch's gives them at most exp(-64) of the total
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=math.exp(-numerics.UNDERFLOW_FLOOR))


@pytest.mark.parametrize(
    "x, dim, want",
    [
        (torch.full((3,), -math.inf), 0, -math.inf),
        (torch.tensor([math.inf, 1.0]), 0, math.inf),
        (torch.tensor([math.nan, 1.0]), 0, math.nan),
        (torch.tensor([1.0, -1e30]), 0, 1.0),
        (torch.zeros(0), 0, -math.inf),
        (torch.tensor(3.0), 0, 3.0),
    ],
    ids=["all -inf", "inf", "nan", "-1e30", "empty", "0-dim"],
)
def test_special_values_as_torch(x, dim, want):
    got = logsumexp(x, dim)
    torch.testing.assert_close(got, torch.logsumexp(x, dim), equal_nan=True)
    torch.testing.assert_close(got, torch.tensor(want), equal_nan=True)
    assert logsumexp(torch.zeros(2, 0), 1).tolist() == [-math.inf, -math.inf]
    assert logsumexp(torch.zeros(2, 0), 0).shape == (0,)


def test_no_exp_underflows_forward_or_backward():
    # What the function is for: torch's exps terms 2000 nats apart (its CPU slow path); ours
    # exponentiates nothing under the log of the smallest normal float, in either pass.
    x = _spread((64, 500), torch.float32).requires_grad_()
    for fn, underflows in ((torch.logsumexp, True), (logsumexp, False)):
        with _ExpArguments() as seen:
            fn(x, -1).sum().backward()
        assert (seen.smallest < UNDERFLOW) is underflows, (fn, seen.smallest)
        assert seen.smallest > -math.inf


def test_compiles_without_a_graph_break():
    x = _spread((8, 50), torch.float32)
    compiled = torch.compile(lambda t: logsumexp(t, -1), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), torch.logsumexp(x, -1))


@pytest.mark.parametrize("dtype, big", [(torch.float32, -3e9), (torch.float64, -3e18)])
def test_the_largest_term_keeps_its_whole_gradient_where_the_floor_rounds_to_it(dtype, big):
    """Where ``max - 64`` rounds back to ``max`` (|max| above 2^30 in fp32), ``maximum`` split
    the largest term's gradient with the floor's tie: 0.5 instead of 1 (gradient audit)."""
    x = torch.tensor([big, big - 1e12, big - 2e12], dtype=dtype, requires_grad=True)
    logsumexp(x, 0).backward()
    want = torch.tensor([1.0, 0.0, 0.0], dtype=dtype)
    torch.testing.assert_close(x.grad, want)


def test_at_least_zero_keeps_the_derivatives_where_it_raises_to_zero():
    """A squared distance expanded as |a|^2 + |b|^2 - 2ab rounds below 0 at a = b: clamp_min
    gave it a zero Hessian there (gradient audit: the VGP kernel, the zoo's mixture prior)."""
    x = torch.tensor([-1e-12, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = numerics.at_least_zero(x)
    assert y.tolist() == [0.0, 0.0, 2.0]
    (grad,) = torch.autograd.grad((y * y.detach().add(1)).sum(), x)
    assert grad.tolist() == [1.0, 1.0, 3.0]
