"""The ``Logistic`` distribution, built from ``torch.distributions`` pieces (torch has none);
:class:`~problayers.layers.IndependentLogistic` and ``MixtureLogistic`` output it."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.distributions as D
from torch.distributions import constraints
from torch.distributions.transforms import SigmoidTransform, Transform
from torch.distributions.utils import broadcast_all

from ..coercible import _coercible_class
from ._transforms import Affine, FreshInverse

__all__ = ["Logistic"]

_EMPTY = torch.Size()


class _LogitTransform(FreshInverse, Transform):
    """``SigmoidTransform``'s inverse as a transform of its own: ``SigmoidTransform().inv`` is an
    ``_InverseTransform`` that loses its forward transform when pickled or deep-copied (torch
    drops ``_inv`` in ``Transform.__getstate__``). The maths are torch's, with the roles swapped."""

    domain = constraints.unit_interval
    codomain = constraints.real
    bijective = True
    sign = +1

    def __eq__(self, other) -> bool:
        return isinstance(other, _LogitTransform)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return SigmoidTransform._inverse(self, x)  # type: ignore[arg-type]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return SigmoidTransform._call(self, y)  # type: ignore[arg-type]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -SigmoidTransform.log_abs_det_jacobian(self, y, x)  # type: ignore[arg-type]


class Logistic(D.TransformedDistribution):
    """The logistic distribution, ``loc + scale * logit(U)`` with ``U ~ Uniform(0, 1)``.

    ``torch.distributions`` has no logistic distribution; this is the
    ``TransformedDistribution(Uniform(0, 1), [SigmoidTransform().inv, AffineTransform(loc, scale)])``
    it is defined as, so density, CDF, sampling (reparameterized) all come from those pieces;
    in half precision the uniform is drawn in float32 (a bf16 uniform's atom at 0 put 0.2% of
    the samples at -87 scales). ``mean``/``mode`` (``loc``) and ``variance``
    (``(pi * scale)^2 / 3``) are added so that mixtures of it have moments.

    Args:
        loc: location, broadcastable with ``scale``; the broadcast shape is the ``batch_shape``.
        scale: positive scale.
        validate_args: torch's argument checks (default ``None``: torch's global default, see
            ``torch.distributions.Distribution.set_default_validate_args``).

    ``batch_shape`` is the broadcast shape of ``loc`` and ``scale``; ``event_shape`` is ``()``.

    Example::

        >>> dist = pl.Logistic(torch.zeros(2), torch.ones(2))
        >>> dist.batch_shape, dist.event_shape, dist.rsample((5,)).shape
        (torch.Size([2]), torch.Size([]), torch.Size([5, 2]))
        >>> dist.log_prob(torch.zeros(2))  # log(1/4): the density at loc is 1 / (4 scale)
        tensor([-1.3863, -1.3863])
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {  # type: ignore[misc]
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args: bool | None = None) -> None:
        loc, scale = broadcast_all(loc, scale)  # (*B) each
        base = D.Uniform(torch.zeros_like(loc), torch.ones_like(loc), validate_args=validate_args)
        transforms: list[Transform] = [_LogitTransform(), Affine(loc, scale)]
        super().__init__(base, transforms, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Logistic, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        if self.loc.dtype in (torch.float16, torch.bfloat16):
            # A half-precision uniform is 0 with probability 2^-9 (bf16) and stops an eps short
            # of 1: logit(U) had an atom at -87 scales and no tail past +4.8 (bf16), a variance
            # 5x too large. Drawn in float32, then rounded to the parameters' dtype.
            wide = Logistic(self.loc.float(), self.scale.float(), validate_args=False)
            return wide.rsample(sample_shape).to(self.loc.dtype)
        return super().rsample(sample_shape)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():  # the base Uniform's sample is its rsample under no_grad too
            return self.rsample(sample_shape)

    @property
    def loc(self) -> torch.Tensor:
        return self.transforms[-1].loc.expand(self.batch_shape)  # type: ignore[attr-defined]  # Affine

    @property
    def scale(self) -> torch.Tensor:
        return self.transforms[-1].scale.expand(self.batch_shape)  # type: ignore[attr-defined]  # Affine

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return (math.pi * self.scale) ** 2 / 3

    def entropy(self) -> torch.Tensor:
        # The logistic density's entropy, log(scale) + 2 (torch has no logistic distribution).
        return self.scale.log() + 2

    def _monotonize_cdf(self, value: torch.Tensor) -> torch.Tensor:
        # Both transforms increase (scale > 0): torch's cdf/icdf need no flip. Its general
        # ``sign * (u - 0.5) + 0.5`` (the affine's sign is a tensor) rounds a lower-tail
        # probability under ~3e-8 to 0 in fp32 and loses digits well above it.
        return value


_coercible_class(Logistic)  # its coercible class made up front, as torch's (see coercible.py)
