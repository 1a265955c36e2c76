"""``logsumexp`` without the CPU's slow path for terms that underflow; a clamp at 0 that keeps
derivatives (:func:`at_least_zero`); the inverse of softplus for initial values
(:func:`inverse_softplus`).

torch's CPU ``exp`` of fp32 runs through MKL's vector maths where torch is built with MKL
(the x86 wheels), and MKL takes a slow path for every element whose result underflows: an
argument under about -87.3 (the log of the smallest normal float) costs 10-35x an ordinary one
(the same cliff as pytorch/pytorch#48388 for GELU). ``torch.logsumexp`` exponentiates
``x - max`` forward and ``x - result`` backward, so a reduction whose terms are far apart, as a
trained mixture's components at a point are, slows down as training separates them: the exps
of a VampPrior's 500-component density took 9x as long at the end of training as at its start
(docs/benchmarks.md, "A step that slows down as it trains").

:func:`logsumexp` raises every term to at least ``max - 64`` first. A term that far below the
largest weighs ``exp(-64)`` (1.6e-28) of it, below the resolution of fp32 and fp64 for any
realistic number of terms, so the value is ``torch.logsumexp``'s to float rounding, the
gradient of the raised terms (at most 1.6e-28 each) becomes 0, and no argument of either pass
underflows while there are fewer than ~1e10 terms.
"""

from __future__ import annotations

import math

import torch

__all__ = ["UNDERFLOW_FLOOR", "at_least_zero", "inverse_softplus", "logsumexp"]

#: How far below the largest term (in log space) :func:`logsumexp` raises the others.
UNDERFLOW_FLOOR = 64.0


def logsumexp(x: torch.Tensor, dim: int | tuple[int, ...], keepdim: bool = False) -> torch.Tensor:
    """``torch.logsumexp(x, dim, keepdim)``, without the slow path for underflowing terms.

    Args:
        x: the log-terms, any shape and floating dtype.
        dim: the dimension or dimensions reduced.
        keepdim: keep the reduced dimensions with size 1 (default ``False``).

    Input: ``x`` of shape ``S``. Output: ``S`` without (or, with ``keepdim``, with size 1 at)
    ``dim``; equal to ``torch.logsumexp`` to float rounding, ``-inf`` where all terms are
    ``-inf``, ``inf`` or ``nan`` where torch's is. Terms more than :data:`UNDERFLOW_FLOOR` below
    the largest get no gradient (torch's gives them at most ``exp(-64)``).

    Example::

        >>> x = torch.tensor([0.0, -1000.0])
        >>> logsumexp(x, 0), torch.logsumexp(x, 0)
        (tensor(0.), tensor(0.))
    """
    if x.numel() == 0:  # empty sums are -inf, as torch's (amax would raise)
        return torch.logsumexp(x, dim, keepdim=keepdim)
    floor = x.detach().amax(dim, keepdim=True) - UNDERFLOW_FLOOR  # -inf, inf and nan carry over
    # where, not maximum: once |max| is so large that max - 64 rounds to max (2^30 in fp32),
    # maximum would split the largest term's gradient with the floor's tie
    return torch.logsumexp(torch.where(x < floor, floor, x), dim, keepdim=keepdim)


def at_least_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` with values below 0 raised to 0, and ``x``'s own derivatives everywhere.

    For a quantity that is never negative in exact arithmetic but may round below 0, such as a
    squared distance expanded as ``|a|^2 + |b|^2 - 2ab``: ``clamp_min(0)`` would give the
    rounded points a zero gradient and Hessian, where the quantity is smooth (at ``a = b``).

    Input and output: any shape and floating dtype.
    """
    return x + (x.clamp_min(0) - x).detach()


def inverse_softplus(y: float) -> float:
    """The ``x`` with ``softplus(x) = y`` for a number ``y > 0`` (a raw parameter's initial
    value), as ``y + log(-expm1(-y))``: no overflow for large ``y``, exact for small ones."""
    return y + math.log(-math.expm1(-y))
