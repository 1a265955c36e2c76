"""Transforms whose inverse is made on each use, not kept.

torch (2.13) keeps ``t.inv`` on ``t``, and the inverse keeps ``t``: a reference cycle, which
reference counting cannot free. Where ``t`` holds tensors of the forward's graph (an affine
map's ``loc`` and ``scale`` from a network, a flow's cached ``(x, y)`` pair), every forward whose
distribution's ``log_prob`` was taken kept its whole graph until Python's cycle collector ran:
a loop without a backward (a validation loss outside ``torch.no_grad()``) held many graphs at
once. ``t.inv.inv is t`` still holds.
"""

from __future__ import annotations

from torch.distributions.transforms import AffineTransform, Transform, _InverseTransform

__all__ = ["Affine", "FreshInverse"]


class FreshInverse:
    """Mixin, before ``Transform`` in the bases: ``inv`` is a new ``_InverseTransform`` each time."""

    @property
    def inv(self) -> Transform:
        return _InverseTransform(self)  # type: ignore[arg-type]  # self is a Transform


class Affine(FreshInverse, AffineTransform):
    """torch's ``AffineTransform``, its inverse not kept."""
