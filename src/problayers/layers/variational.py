"""Weight distributions and ``DenseVariational``: a dense layer whose weights are random.

The posterior and prior over weights are ``nn.Module`` s whose ``forward`` (called with the
layer's input, which the ones here ignore) returns a ``torch.distributions.Distribution``:

* :class:`MeanFieldNormal` (trainable ``Independent(Normal(loc, eps + softplus(u)))``) and
  :class:`StandardNormal` (fixed ``Independent(Normal(0, 1))``), each built from
  ``(shape, dtype)``;
* for ``DenseVariational``, ``make_posterior_fn``/``make_prior_fn`` take
  ``(kernel_size, bias_size, dtype)`` as in TFP: :func:`posterior_mean_field`,
  :func:`prior_trainable` (a :class:`~problayers.VariableLayer` loc, unit scale) and
  :func:`prior_standard_normal`.

The KL term ``kl_weight * KL(q || p)`` of the weights is recorded with
:func:`~problayers.set_added_loss` on each forward, so :func:`~problayers.collect_losses`
picks it up. It is the KL of the whole weight vector: with a data term averaged over a batch
(as everywhere in problayers) pass ``kl_weight = 1 / num_train_examples`` for the ELBO.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from ..coercible import convert_to_tensor, is_coercible
from ..kl import exact_kl
from ..losses import added_losses_enabled, init_added_losses, set_added_loss
from ._args import (
    activation_fn,
    bias_flag,
    boolean,
    finite_number,
    floating_dtype,
    integer,
    non_negative_number,
    positive_int,
)
from .base import Activation, Shape, normalize_event_shape, tensor_input
from .variable import VariableLayer

__all__ = [
    "DenseVariational",
    "MeanFieldNormal",
    "StandardNormal",
    "posterior_mean_field",
    "prior_standard_normal",
    "prior_trainable",
]


class MeanFieldNormal(nn.Module):
    """Trainable mean-field Gaussian over a weight tensor of shape ``shape``.

    ``forward(*ignored)`` returns ``Independent(Normal(loc, eps + softplus(untransformed_scale)),
    len(shape))`` (batch ``()``, event ``shape``; eps is the dtype's machine epsilon). As TFP's
    ``default_mean_field_normal_fn``: ``loc ~ N(0, loc_init_std)`` and ``untransformed_scale ~
    N(untransformed_scale_init_mean, 0.1)``, i.e. a scale of about ``softplus(-3) = 0.049``.

    Args:
        shape: the weight tensor's shape (an int or a tuple of positive ints).
        dtype: the parameters' dtype (default ``None``: ``torch.get_default_dtype()``).
        loc_init_std: the standard deviation of the ``loc`` initialization (default 0.1).
        untransformed_scale_init_mean: the mean of the ``untransformed_scale`` initialization
            (default -3.0: a small initial scale, so the weights start near their means).

    Input: anything (ignored; the weight layers pass their input). Output: an
    ``Independent(Normal)`` (not tensor-coercible) with ``batch_shape`` ``()`` and
    ``event_shape`` ``shape``.

    Example::

        >>> q = pl.MeanFieldNormal((2, 3))
        >>> w = q(torch.zeros(5, 3))
        >>> w.batch_shape, w.event_shape, w.rsample().shape
        (torch.Size([]), torch.Size([2, 3]), torch.Size([2, 3]))
    """

    def __init__(
        self,
        shape: Shape,
        dtype: torch.dtype | None = None,
        loc_init_std: float = 0.1,
        untransformed_scale_init_mean: float = -3.0,
    ) -> None:
        super().__init__()
        self.shape = normalize_event_shape(shape, "shape")
        dtype = floating_dtype(dtype)
        loc_init_std = float(non_negative_number(loc_init_std, "loc_init_std"))
        scale_init = finite_number(untransformed_scale_init_mean, "untransformed_scale_init_mean")
        self.loc = nn.Parameter(torch.randn(self.shape, dtype=dtype) * loc_init_std)
        scale = torch.randn(self.shape, dtype=dtype) * 0.1 + scale_init
        self.untransformed_scale = nn.Parameter(scale)

    @property
    def scale(self) -> torch.Tensor:
        return torch.finfo(self.loc.dtype).eps + F.softplus(self.untransformed_scale)

    def forward(self, *ignored) -> D.Independent:
        return D.Independent(D.Normal(self.loc, self.scale, validate_args=False), len(self.shape))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class StandardNormal(nn.Module):
    """Fixed ``Independent(Normal(0, 1), len(shape))`` over a weight tensor of shape ``shape``.

    The default prior of the weight layers. It holds no numbers: ``loc`` and ``scale`` are made
    at each call (expanded from one element), with the dtype and device of an empty
    non-persistent buffer, which follows ``.to(...)`` and stays out of the ``state_dict``. So a
    layer built on the ``meta`` device, then ``to_empty`` and loaded, has the same prior.

    Args:
        shape: the weight tensor's shape (an int or a tuple of positive ints).
        dtype: the prior's dtype (default ``None``: ``torch.get_default_dtype()``).

    Input: anything (ignored). Output: an ``Independent(Normal)`` (not tensor-coercible) with
    ``batch_shape`` ``()`` and ``event_shape`` ``shape``.

    Example::

        >>> p = pl.StandardNormal((2, 3))
        >>> p().batch_shape, p().event_shape, p().mean.abs().sum().item()
        (torch.Size([]), torch.Size([2, 3]), 0.0)
    """

    like: torch.Tensor  # an empty non-persistent buffer: the dtype and device

    def __init__(self, shape: Shape, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.shape = normalize_event_shape(shape, "shape")
        dtype = floating_dtype(dtype)
        self.register_buffer("like", torch.empty(0, dtype=dtype), persistent=False)

    @property
    def loc(self) -> torch.Tensor:
        """Zeros of shape ``shape`` (an expanded view)."""
        return self.like.new_zeros(()).expand(self.shape)

    @property
    def scale(self) -> torch.Tensor:
        """Ones of shape ``shape`` (an expanded view)."""
        return self.like.new_ones(()).expand(self.shape)

    def forward(self, *ignored) -> D.Independent:
        normal = D.Normal(self.loc, self.scale, validate_args=False)
        return D.Independent(normal, len(self.shape), validate_args=False)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def posterior_mean_field(kernel_size: int, bias_size: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
    """``make_posterior_fn`` of :class:`DenseVariational`: a trainable mean-field Gaussian.

    Args:
        kernel_size: the number of kernel weights.
        bias_size: the number of bias weights (default 0: no bias).
        dtype: the parameters' dtype (default ``None``: ``torch.get_default_dtype()``).

    Returns:
        A :class:`MeanFieldNormal` over the ``kernel_size + bias_size`` flattened weights: input
        ignored, output ``batch_shape`` ``()`` and ``event_shape`` ``(kernel_size + bias_size,)``.

    Example::

        >>> q = pl.posterior_mean_field(6, 2)
        >>> q(torch.zeros(5, 3)).event_shape
        torch.Size([8])
    """
    return MeanFieldNormal(_weight_count(kernel_size, bias_size), dtype)


def prior_standard_normal(
    kernel_size: int, bias_size: int = 0, dtype: torch.dtype | None = None
) -> nn.Module:
    """``make_prior_fn`` of :class:`DenseVariational`: a fixed standard normal (the default).

    Args:
        kernel_size: the number of kernel weights.
        bias_size: the number of bias weights (default 0: no bias).
        dtype: the buffers' dtype (default ``None``: ``torch.get_default_dtype()``).

    Returns:
        A :class:`StandardNormal` over the ``kernel_size + bias_size`` flattened weights: input
        ignored, output ``batch_shape`` ``()`` and ``event_shape`` ``(kernel_size + bias_size,)``.

    Example::

        >>> p = pl.prior_standard_normal(6, 2)
        >>> p(torch.zeros(5, 3)).event_shape, len(list(p.parameters()))
        (torch.Size([8]), 0)
    """
    return StandardNormal(_weight_count(kernel_size, bias_size), dtype)


def _weight_count(kernel_size, bias_size) -> int:
    """``kernel_size + bias_size``, each checked (a negative ``bias_size`` took weights away)."""
    kernel = positive_int(kernel_size, "kernel_size")
    bias = integer(bias_size, "bias_size", "an int >= 0")
    if bias < 0:
        raise ValueError(f"bias_size: expected an int >= 0, got {bias}")
    return kernel + bias


def _unit_normal(loc: torch.Tensor) -> D.Independent:
    return D.Independent(D.Normal(loc, torch.ones_like(loc), validate_args=False), 1)


def prior_trainable(kernel_size: int, bias_size: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
    """``make_prior_fn`` of :class:`DenseVariational`: ``Independent(Normal(loc, 1))``, ``loc`` trainable.

    As in TFP's regression example: a prior learnt with the model (empirical Bayes).

    Args:
        kernel_size: the number of kernel weights.
        bias_size: the number of bias weights (default 0: no bias).
        dtype: the ``loc``'s dtype (default ``None``: ``torch.get_default_dtype()``).

    Returns:
        A :class:`~problayers.VariableLayer` with a zero-initialized ``loc`` of shape
        ``(kernel_size + bias_size,)``: input ignored, output a tensor-coercible
        ``Independent(Normal)`` with ``batch_shape`` ``()`` and ``event_shape``
        ``(kernel_size + bias_size,)``.

    Example::

        >>> p = pl.prior_trainable(6, 2)
        >>> p(torch.zeros(5, 3)).event_shape, sum(t.numel() for t in p.parameters())
        (torch.Size([8]), 8)
    """
    return VariableLayer(_weight_count(kernel_size, bias_size), dtype, make_distribution_fn=_unit_normal)


def weight_distribution(
    layer: str, role: str, module: nn.Module, x, shape: tuple[int, ...]
) -> D.Distribution:
    """``module(x)``, checked to be a ``Distribution`` with batch ``()`` and event ``shape``."""
    dist = module(x)
    if not isinstance(dist, D.Distribution):
        raise TypeError(f"{layer}: the {role} returned {type(dist).__name__}, expected a Distribution")
    if tuple(dist.batch_shape) != () or tuple(dist.event_shape) != shape:
        raise ValueError(
            f"{layer}: expected the {role} to have batch_shape () and event_shape {shape}, got "
            f"batch_shape {tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}"
        )
    return dist


def weight_kl(q: D.Distribution, p: D.Distribution, w: torch.Tensor | None, exact: bool) -> torch.Tensor:
    """``KL(q || p)`` as a 0-dim tensor: exact (``torch.distributions.kl_divergence``) or the
    one-sample Monte Carlo ``log q(w) - log p(w)`` at ``w`` (a fresh ``q.rsample()`` if ``None``)."""
    if exact:
        return exact_kl(q, p, "kl_use_exact").sum()
    w = q.rsample() if w is None else w
    return (q.log_prob(w) - p.log_prob(w)).sum()


class DenseVariational(nn.Module):
    """Dense layer with a posterior over its weights, trained by the ELBO (``tfp.layers.DenseVariational``).

    Args:
        in_features: inputs per example.
        units: outputs per example.
        make_posterior_fn: ``(kernel_size, bias_size, dtype) -> nn.Module`` whose ``forward(x)``
            returns the posterior over the ``kernel_size + bias_size`` flattened weights (batch
            ``()``, event ``(kernel_size + bias_size,)``). Default :func:`posterior_mean_field`.
        make_prior_fn: the same for the prior. Default :func:`prior_standard_normal`.
        kl_weight: the recorded term is ``kl_weight * KL`` (default 1, as TFP's ``None``: the
            whole KL; pass ``1 / num_train_examples`` with a batch-mean data term).
        kl_use_exact: exact KL (``torch.distributions.kl_divergence``) instead of the default
            (``False``) one-sample estimate ``log q(w) - log p(w)`` at the weights used in this
            forward.
        activation: optional callable applied to the output, or Keras' name (``"relu"``;
            default ``None``: linear).
        use_bias: whether there is a bias (default ``True``: ``bias_size = units``; else 0).
        dtype: the weights' dtype (default ``None``: ``torch.get_default_dtype()``).

    The kernel is ``w[:kernel_size].view(units, in_features)`` (``nn.Linear`` layout), the bias
    ``w[kernel_size:]``; one weight sample ``w ~ q`` per forward is shared by the whole batch:
    ``q.rsample()``, or, where the posterior is a tensor-coercible output (a
    ``DistributionLambda``'s, as TFP's notebooks build it), its value (``convert_to_tensor(q)``,
    as TFP: its ``convert_to_tensor_fn``, e.g. the mean, decides).

    Input: ``(*B, in_features)``. Output: a tensor of shape ``(*B, units)``; each forward
    records ``kl_weight * KL`` as an added loss (:func:`~problayers.collect_losses`).

    Example::

        >>> layer = pl.DenseVariational(3, 2, make_prior_fn=pl.prior_trainable, kl_weight=1 / 100)
        >>> layer(torch.zeros(5, 3)).shape, pl.collect_losses(layer).shape
        (torch.Size([5, 2]), torch.Size([]))
    """

    def __init__(
        self,
        in_features: int,
        units: int,
        make_posterior_fn: Callable[..., nn.Module] = posterior_mean_field,
        make_prior_fn: Callable[..., nn.Module] = prior_standard_normal,
        kl_weight: float | torch.Tensor | None = 1.0,
        kl_use_exact: bool = False,
        activation: Activation = None,
        use_bias: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        init_added_losses(self)
        if callable(units):  # TFP's order, DenseVariational(units, make_posterior_fn, make_prior_fn)
            raise TypeError(
                "units: expected a positive int, got a callable; DenseVariational takes in_features "
                "first: DenseVariational(in_features, units, make_posterior_fn, make_prior_fn)"
            )
        self.in_features = positive_int(in_features, "in_features")
        self.units = positive_int(units, "units")
        for name, fn in (("make_posterior_fn", make_posterior_fn), ("make_prior_fn", make_prior_fn)):
            if not callable(fn):
                raise TypeError(f"{name}: expected a callable (kernel_size, bias_size, dtype) -> nn.Module")
        self.kl_weight = non_negative_number(
            1.0 if kl_weight is None else kl_weight, "kl_weight"
        )  # TFP's None
        self.kl_use_exact = boolean(kl_use_exact, "kl_use_exact")
        floating_dtype(dtype)  # checked here; given to the make_*_fn as given (None too)
        self.activation = activation_fn(activation)
        self.kernel_size = self.in_features * self.units
        self.bias_size = self.units if bias_flag(use_bias, "use_bias") else 0
        self.posterior = make_posterior_fn(self.kernel_size, self.bias_size, dtype)
        self.prior = make_prior_fn(self.kernel_size, self.bias_size, dtype)
        for name, module in (("make_posterior_fn", self.posterior), ("make_prior_fn", self.prior)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name}: expected it to return an nn.Module, got {type(module).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tensor_input("DenseVariational", x)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"DenseVariational: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        shape = (self.kernel_size + self.bias_size,)
        q = weight_distribution("DenseVariational", "posterior", self.posterior, x, shape)
        p = weight_distribution("DenseVariational", "prior", self.prior, x, shape)
        # TFP's w = convert_to_tensor(q): a coercible posterior's value (its convert_to_tensor_fn,
        # e.g. the mean), else a reparameterized draw.
        w = convert_to_tensor(q) if is_coercible(q) else q.rsample()  # (kernel_size + bias_size,)
        kernel = w[: self.kernel_size].view(self.units, self.in_features)  # (units, in)
        bias = w[self.kernel_size :] if self.bias_size else None  # (units,)
        out = F.linear(x, kernel, bias)  # (*B, units)
        if added_losses_enabled():
            set_added_loss(self, "kl_divergence", self.kl_weight * weight_kl(q, p, w, self.kl_use_exact))
        return out if self.activation is None else self.activation(out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, units={self.units}, bias={bool(self.bias_size)}, "
            f"kl_weight={float(self.kl_weight):.3g}, kl_use_exact={self.kl_use_exact}"
        )
