"""The ways a distribution becomes its tensor value: a layer's ``convert_to_tensor_fn``.

A name from :data:`CONVERT_TO_TENSOR_FNS` (TFP's ``tfd.Distribution.sample`` and friends) or any
callable ``Distribution -> Tensor``; checked once, where a layer or a coercible is made
(:func:`check_convert_fn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributions as D

__all__ = ["CONVERT_TO_TENSOR_FNS", "ConvertFn", "check_convert_fn"]

ConvertFn = str | Callable[[D.Distribution], Any]

#: The named ways of turning a distribution into its tensor value.
CONVERT_TO_TENSOR_FNS: dict[str, Callable[[D.Distribution], torch.Tensor]] = {
    # TFP's default (its ``sample`` is reparameterized where it can be): rsample() where the
    # distribution has one, else sample().
    "auto": lambda d: d.rsample() if d.has_rsample else d.sample(),
    "rsample": lambda d: d.rsample(),
    "sample": lambda d: d.sample(),
    "mean": lambda d: d.mean,
    "mode": lambda d: d.mode,
    "stddev": lambda d: d.stddev,
    "variance": lambda d: d.variance,
}


def check_convert_fn(fn: Any) -> ConvertFn:
    """``fn`` if it is a callable or one of the names, else a one-line ``ValueError``."""
    if callable(fn) or (isinstance(fn, str) and fn in CONVERT_TO_TENSOR_FNS):
        return fn
    raise ValueError(
        f"convert_to_tensor_fn: expected one of {sorted(CONVERT_TO_TENSOR_FNS)} or a callable "
        f"taking a Distribution, got {fn!r}"
    )
