"""``to_bayesian``: a trained network's ``nn.Linear`` / ``nn.Conv*d`` / ``nn.ConvTranspose*d`` as
their weight-uncertainty twins, their posterior means at the trained weights (as Bayesian-Torch's
``dnn_to_bnn`` with MOPED-style initialization).

The twins are the layers of :mod:`problayers.layers.reparameterization` and
:mod:`problayers.layers.convolutional`; each records ``kl_weight * KL(q || p)`` of its kernel and
bias on each forward, which :func:`~problayers.collect_losses` picks up. Train the converted
network on the ELBO: the data term (a batch mean) plus ``collect_losses(model)``, with
``kl_weight = 1 / num_train_examples``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .layers._args import positive_number
from .layers.convolutional import (
    Conv1dFlipout,
    Conv1dReparameterization,
    Conv2dFlipout,
    Conv2dReparameterization,
    Conv3dFlipout,
    Conv3dReparameterization,
    ConvTranspose1dFlipout,
    ConvTranspose1dReparameterization,
    ConvTranspose2dFlipout,
    ConvTranspose2dReparameterization,
    ConvTranspose3dFlipout,
    ConvTranspose3dReparameterization,
)
from .layers.reparameterization import DenseFlipout, DenseReparameterization
from .layers.variational import MeanFieldNormal, StandardNormal
from .layers.weight_norm import WeightNorm
from .numerics import inverse_softplus

if TYPE_CHECKING:
    from torch.nn.modules.conv import _ConvNd

__all__ = ["to_bayesian"]

#: nn class -> (the reparameterization twin, the Flipout twin)
_TWINS: dict[type[nn.Module], tuple[type[nn.Module], type[nn.Module]]] = {
    nn.Linear: (DenseReparameterization, DenseFlipout),
    nn.Conv1d: (Conv1dReparameterization, Conv1dFlipout),
    nn.Conv2d: (Conv2dReparameterization, Conv2dFlipout),
    nn.Conv3d: (Conv3dReparameterization, Conv3dFlipout),
    nn.ConvTranspose1d: (ConvTranspose1dReparameterization, ConvTranspose1dFlipout),
    nn.ConvTranspose2d: (ConvTranspose2dReparameterization, ConvTranspose2dFlipout),
    nn.ConvTranspose3d: (ConvTranspose3dReparameterization, ConvTranspose3dFlipout),
}
_ESTIMATORS = ("reparameterization", "flipout")


class _ZeroMeanNormal(StandardNormal):
    """Fixed ``Independent(Normal(0, scale), len(shape))`` (no numbers held: see StandardNormal)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype | None, scale: float) -> None:
        super().__init__(shape, dtype)
        self.std = float(scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.like.new_full((), self.std).expand(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, scale={self.std:.3g}"


class _PriorFn:
    """``(shape, dtype) -> _ZeroMeanNormal(shape, dtype, scale)`` (a picklable prior fn)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> nn.Module:
        return _ZeroMeanNormal(shape, dtype, self.scale)


def _init_posterior(posterior: object, weight: torch.Tensor, init_scale: float, where: str) -> None:
    if not isinstance(posterior, MeanFieldNormal):
        raise TypeError(
            f"to_bayesian: {where}: expected a MeanFieldNormal posterior, got {type(posterior).__name__}"
        )
    eps = torch.finfo(posterior.loc.dtype).eps
    with torch.no_grad():
        posterior.loc.copy_(weight)
        posterior.untransformed_scale.fill_(inverse_softplus(max(init_scale - eps, eps)))


def _twin(
    module: nn.Linear | _ConvNd, cls: type[nn.Module], weights: dict, where: str, init_scale: float
) -> nn.Module:
    """``module``'s variational twin of class ``cls``; posterior means at its weight and bias."""
    w, b = module.weight, module.bias
    args: tuple[Any, ...]
    if isinstance(module, nn.Linear):
        twin = cls(module.in_features, module.out_features, b is not None, **weights, dtype=w.dtype)
    elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        args = (module.kernel_size, module.stride, module.padding, module.dilation, module.groups)
        twin = cls(
            module.in_channels,
            module.out_channels,
            *args,
            b is not None,
            **weights,
            dtype=w.dtype,
            padding_mode=module.padding_mode,
        )
    else:
        args = (module.kernel_size, module.stride, module.padding, module.output_padding, module.groups)
        twin = cls(
            module.in_channels,
            module.out_channels,
            *args,
            b is not None,
            module.dilation,
            **weights,
            dtype=w.dtype,
        )
    twin.to(w.device)
    _init_posterior(twin.kernel_posterior, w, init_scale, where)
    if b is not None:
        _init_posterior(twin.bias_posterior, b, init_scale, where)
    return twin.train(module.training)


def to_bayesian(
    model: nn.Module,
    *,
    kl_weight: float | torch.Tensor = 1.0,
    estimator: str = "reparameterization",
    prior: float | Callable[[tuple[int, ...], torch.dtype | None], nn.Module] = 1.0,
    init_scale: float = 1e-3,
    kl_use_exact: bool = True,
    skip: Iterable[str] = (),
    inplace: bool = False,
) -> nn.Module:
    """A network whose ``nn.Linear``/``nn.Conv*d``/``nn.ConvTranspose*d`` have weight uncertainty.

    Every module whose type is exactly ``nn.Linear``, ``nn.Conv1d``/``2d``/``3d`` or
    ``nn.ConvTranspose1d``/``2d``/``3d`` is replaced by its twin (``DenseReparameterization``,
    ``Conv2dFlipout``, ... with the same arguments, ``padding_mode`` included) whose
    :class:`~problayers.MeanFieldNormal` posteriors have their means at the module's weight and
    bias and a scale of ``init_scale``: at ``init_scale -> 0`` the converted network computes
    what the original did (the scale is at least twice the dtype's ``eps``, TFP's floor: 0.0156
    for bf16, 0.002 for float16; convert a half-precision network in float32, then cast it).
    Subclasses (e.g. ``nn.MultiheadAttention``'s ``out_proj``, lazy or
    parametrized modules) and the layers in a :class:`~problayers.WeightNorm` are left as they
    are; a shared module (under several parents or names) stays shared, and is kept as it is
    wherever one of its names is in ``skip``.
    The twins are on the module's device and dtype and in its train/eval mode.

    Differences from Bayesian-Torch's ``dnn_to_bnn``: the initial posterior scale is
    ``init_scale`` for every weight (not ``delta * |w|``); the prior is fixed and zero-mean
    unless ``prior`` is a module factory.

    Args:
        model: the (trained) network.
        kl_weight: each twin records ``kl_weight * KL`` (default 1: the whole KL; pass
            ``1 / num_train_examples`` with a batch-mean data term).
        estimator: ``"reparameterization"`` (default: one weight sample per forward, shared by
            the batch) or ``"flipout"`` (decorrelated per example by random signs).
        prior: a positive number, the scale of a fixed ``Normal(0, prior)`` for every weight
            (default 1: the standard normal), or a ``(shape, dtype) -> nn.Module`` prior fn
            (e.g. :class:`~problayers.StandardNormal`), for kernels and biases.
        init_scale: the posteriors' initial standard deviation (default ``1e-3``).
        kl_use_exact: exact KL (default ``True``) or the one-sample Monte Carlo estimate.
        skip: qualified names (``model.named_modules()``'s) of modules to keep deterministic;
            they and their submodules are left as they are.
        inplace: convert ``model`` itself (``True``) or a deep copy of it (default ``False``:
            ``model`` is unchanged). A ``model`` that is itself a ``nn.Linear``/``Conv`` is
            replaced either way: use the returned module.

    Returns:
        The converted network (``model`` itself with ``inplace=True``, unless it was replaced).

    Example::

        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> bnn = pl.to_bayesian(net, kl_weight=1 / 100, estimator="flipout")
        >>> [type(m).__name__ for m in bnn], bnn(torch.zeros(5, 3)).shape
        (['DenseFlipout', 'ReLU', 'DenseFlipout'], torch.Size([5, 1]))
        >>> pl.collect_losses(bnn).shape, type(net[0]).__name__
        (torch.Size([]), 'Linear')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator: expected one of {_ESTIMATORS}, got {estimator!r}")
    init_scale = positive_number(init_scale, "init_scale")
    prior_fn: Callable[[tuple[int, ...], torch.dtype | None], nn.Module]
    if isinstance(prior, int | float) and not isinstance(prior, bool):
        if not 0 < prior < math.inf:
            raise ValueError(
                f"prior: expected a positive scale or a (shape, dtype) -> nn.Module, got {prior!r}"
            )
        prior_fn = StandardNormal if prior == 1 else _PriorFn(float(prior))
    elif callable(prior):
        prior_fn = prior
    else:
        raise TypeError(
            f"prior: expected a positive scale or a (shape, dtype) -> nn.Module, got {type(prior).__name__}"
        )
    if isinstance(skip, str) or not isinstance(skip, Iterable):
        raise TypeError(f"skip: expected an iterable of module names, got {type(skip).__name__}")
    skip = set(skip)
    unknown = sorted(skip - {name for name, _ in model.named_modules(remove_duplicate=False)})
    if unknown:
        raise ValueError(f"skip: no module named {unknown[0]!r} in the model")
    weights = {
        "kernel_posterior_fn": MeanFieldNormal,
        "kernel_prior_fn": prior_fn,
        "bias_posterior_fn": MeanFieldNormal,
        "bias_prior_fn": prior_fn,
        "kl_weight": kl_weight,
        "kl_use_exact": kl_use_exact,
    }
    index = _ESTIMATORS.index(estimator)
    converted: dict[int, nn.Module] = {}  # id(original) -> twin: shared modules stay shared

    def convert(module: nn.Module, name: str) -> nn.Module | None:
        twins = _TWINS.get(type(module))
        if twins is None or id(module) in kept:
            return None
        if id(module) not in converted:
            layer = cast("nn.Linear | _ConvNd", module)  # a key of _TWINS
            converted[id(module)] = _twin(layer, twins[index], weights, name or "model", init_scale)
        return converted[id(module)]

    def walk(module: nn.Module, prefix: str) -> None:
        # ``_modules``, not ``named_children()``: a module under two names of one parent (a tied
        # layer, ``nn.Sequential(lin, act, lin)``) is converted at both.
        for child_name, child in list(module._modules.items()):
            name = f"{prefix}{child_name}"
            if child is None or id(child) in kept or isinstance(child, WeightNorm):
                continue
            twin = convert(child, name)
            if twin is not None:
                setattr(module, child_name, twin)
            else:
                walk(child, f"{name}.")

    if not inplace:
        model = copy.deepcopy(model)
    # A shared module is one module: kept wherever one of its names (or a parent's) is skipped.
    every = model.named_modules(remove_duplicate=False)  # a shared module under each of its names
    kept = {id(sub) for name, m in every if name in skip for sub in m.modules()}
    top = convert(model, "")
    if top is not None:
        return top
    if "" not in skip and not isinstance(model, WeightNorm):
        walk(model, "")
    return model
