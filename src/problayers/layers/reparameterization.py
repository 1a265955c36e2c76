"""Weight-uncertainty layers (``tfp.layers`` ``*Reparameterization``, ``*LocalReparameterization``,
``*Flipout``): the shared machinery and the dense layers whose kernel and bias have a posterior
(the convolutions are in :mod:`problayers.layers.convolutional`).

The three estimators of the output, for a posterior ``q`` over the kernel ``W`` (and bias):

* **reparameterization**: one ``W ~ q`` (``rsample``) per forward, shared by the batch;
* **local reparameterization** (a Gaussian kernel posterior only): the output's exact
  per-example Gaussian ``Normal(op(x, E[W]), sqrt(op(x^2, Var[W])))`` is sampled instead of
  ``W``, and one bias ``b ~ q_b`` per forward is added, as TFP's;
* **Flipout**: ``op(x, E[W]) + op(x * s_in, dW) * s_out`` with one ``dW = W - E[W]`` and random
  signs ``s_in``, ``s_out`` per example (needs a posterior symmetric about its mean).

Each forward records ``kl_weight * (KL(q_W || p_W) + KL(q_b || p_b))`` with
:func:`~problayers.set_added_loss`; TFP's ``kernel_divergence_fn``/``bias_divergence_fn``
``(q, p, w) -> Tensor`` replace a term (``None`` drops it). Defaults (TFP's): exact KL
(``kl_use_exact=True``), ``kl_weight = 1`` (the whole KL; pass ``1 / num_train_examples`` with
a batch-mean data term), a :class:`~problayers.MeanFieldNormal` posterior and a
:class:`~problayers.StandardNormal` prior for the kernel; for the bias a point estimate
(``BIAS_POSTERIOR_FN``, ``default_mean_field_normal_fn(is_singular=True)``: TFP's
``Deterministic``) and no prior (``bias_prior_fn=None``: no KL term for the bias). A
posterior/prior ``fn`` is ``(shape, dtype) -> nn.Module`` whose ``forward(x)`` returns a
distribution with batch ``()`` and event ``shape``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from ..losses import added_losses_enabled, init_added_losses, set_added_loss
from ._args import (
    activation_fn,
    bias_flag,
    boolean,
    callable_or_none,
    divergence_fn,
    floating_dtype,
    non_negative_number,
    positive_int,
)
from .base import Activation, tensor_input
from .defaults import _PointMass, default_mean_field_normal_fn
from .variational import MeanFieldNormal, StandardNormal, weight_distribution, weight_kl

__all__ = [
    "BIAS_POSTERIOR_FN",
    "DenseFlipout",
    "DenseLocalReparameterization",
    "DenseReparameterization",
]

WeightFn = Callable[[tuple[int, ...], torch.dtype | None], nn.Module]
#: ``(posterior, prior, w) -> Tensor``, TFP's ``kernel_divergence_fn``: ``w`` is the weight drawn
#: by the forward, ``None`` where the estimator draws none (local reparameterization).
DivergenceFn = Callable[[D.Distribution, D.Distribution, torch.Tensor | None], torch.Tensor]

#: The weight layers' shared arguments, for their docstrings (dense here, convolutions in
#: :mod:`._conv_docs`): ``posterior`` notes what the kernel posterior must be, ``w`` what the
#: divergence function gets.
_WEIGHT_ARGS = """\
    kernel_posterior_fn: ``(shape, dtype) -> nn.Module`` whose ``forward(x)`` returns the
        kernel's posterior (batch ``()``, event ``shape``); default
        :class:`~problayers.MeanFieldNormal`{posterior}.
    kernel_prior_fn: the same for the kernel's prior; default
        :class:`~problayers.StandardNormal` (fixed ``N(0, 1)``).
    bias_posterior_fn: the same for the bias's posterior; default TFP's point estimate
        (``default_mean_field_normal_fn(is_singular=True)``); ``None``: no bias.
    bias_prior_fn: the same for the bias's prior; default ``None``: no KL term for the
        bias (TFP's).
    kl_weight: the recorded added loss is ``kl_weight * KL`` (default 1: the whole KL; pass
        ``1 / num_train_examples`` with a batch-mean data term).
    kl_use_exact: exact KL (``torch.distributions.kl_divergence``, default ``True``) or the
        one-sample Monte Carlo estimate ``log q(w) - log p(w)`` (``False``).
    activation: optional callable applied to the output, or Keras' name (``"relu"``;
        default ``None``: linear).
    dtype: the weights' dtype (default ``None``: ``torch.get_default_dtype()``).
    kernel_divergence_fn: keyword-only; the kernel's term of the added loss: ``"kl"``
        (default: the KL as ``kl_use_exact`` says), ``None`` (no term) or TFP's ``(q, p, w) ->
        Tensor`` (its sum; ``w`` the kernel drawn{w}).
    bias_divergence_fn: the same for the bias (used where it has a prior).
"""

#: The weight layers' default bias posterior, TFP's: a trainable point estimate (``loc ~ N(0,
#: 0.1)`` at initialization; its samples are ``loc``), with no prior by default.
BIAS_POSTERIOR_FN = default_mean_field_normal_fn(is_singular=True)


def _rademacher(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Independent random signs (+1/-1 with probability 1/2) of ``shape``."""
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _base(dist: D.Distribution) -> D.Distribution:
    return dist.base_dist if isinstance(dist, D.Independent) else dist


class _WeightUncertainty(nn.Module):
    """Posteriors/priors, KL bookkeeping and the estimator; subclasses give ``_op`` and shapes."""

    def __init__(
        self,
        kernel_shape: tuple[int, ...],
        bias_shape: tuple[int, ...] | None,
        kernel_posterior_fn: WeightFn,
        kernel_prior_fn: WeightFn,
        bias_posterior_fn: WeightFn | None,
        bias_prior_fn: WeightFn | None,
        kl_weight: float | torch.Tensor,
        kl_use_exact: bool,
        activation: Activation,
        dtype: torch.dtype | None,
        kernel_divergence_fn: DivergenceFn | str | None = "kl",
        bias_divergence_fn: DivergenceFn | str | None = "kl",
    ) -> None:
        super().__init__()
        init_added_losses(self)
        self.kernel_divergence_fn = divergence_fn(kernel_divergence_fn, "kernel_divergence_fn")
        self.bias_divergence_fn = divergence_fn(bias_divergence_fn, "bias_divergence_fn")
        for name, fn in (("kernel_posterior_fn", kernel_posterior_fn), ("kernel_prior_fn", kernel_prior_fn)):
            if not callable(fn):
                raise TypeError(f"{name}: expected a callable (shape, dtype) -> nn.Module")
        callable_or_none(bias_posterior_fn, "bias_posterior_fn")
        callable_or_none(bias_prior_fn, "bias_prior_fn")
        self.kl_weight = non_negative_number(kl_weight, "kl_weight")
        self.kl_use_exact = boolean(kl_use_exact, "kl_use_exact")
        floating_dtype(dtype)  # checked here; given to the weight functions as given (None too)
        self.activation = activation_fn(activation)
        self.kernel_shape, self.bias_shape = kernel_shape, bias_shape
        self.kernel_posterior = kernel_posterior_fn(kernel_shape, dtype)
        self.kernel_prior = kernel_prior_fn(kernel_shape, dtype)
        self.bias_posterior = self.bias_prior = None
        if bias_shape is not None and bias_posterior_fn is not None:
            self.bias_posterior = bias_posterior_fn(bias_shape, dtype)
            if bias_prior_fn is not None:
                self.bias_prior = bias_prior_fn(bias_shape, dtype)

    # -- subclass interface ------------------------------------------------------------------
    def _op(self, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _sign_shapes(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Size, torch.Size]:
        raise NotImplementedError

    def _estimate(self, x, qk, qb) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> (output before activation, the kernel and bias samples used, or ``None``)."""
        raise NotImplementedError

    def _bias_view(self, bias: torch.Tensor) -> torch.Tensor:
        """A bias sample ``(out,)`` shaped to add to the output (dense: as it is)."""
        return bias

    # -- shared ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        x = tensor_input(name, x)
        self._check_input(x)
        qk = weight_distribution(name, "kernel posterior", self.kernel_posterior, x, self.kernel_shape)
        pk = weight_distribution(name, "kernel prior", self.kernel_prior, x, self.kernel_shape)
        qb = pb = None
        if self.bias_posterior is not None:
            qb = weight_distribution(name, "bias posterior", self.bias_posterior, x, self.bias_shape)  # type: ignore[arg-type]
        if self.bias_prior is not None:
            pb = weight_distribution(name, "bias prior", self.bias_prior, x, self.bias_shape)  # type: ignore[arg-type]
        out, wk, wb = self._estimate(x, qk, qb)
        if added_losses_enabled():
            kl = self._divergence("kernel_divergence_fn", qk, pk, wk)
            if pb is not None:
                if wb is None and callable(self.bias_divergence_fn):  # TFP passes a bias sample
                    wb = qb.rsample()  # type: ignore[union-attr]  # (local reparameterization draws none)
                kl = kl + self._divergence("bias_divergence_fn", qb, pb, wb)  # type: ignore[arg-type]  # pb => qb
            if not isinstance(kl, torch.Tensor):  # every term dropped, or numbers
                dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
                kl = torch.tensor(float(kl), device=x.device, dtype=dtype)
            set_added_loss(self, "kl_divergence", self.kl_weight * kl)
        return out if self.activation is None else self.activation(out)

    def _divergence(
        self, role: str, q: D.Distribution, p: D.Distribution, w: torch.Tensor | None
    ) -> torch.Tensor | float:
        """One term of the added loss: the KL (``"kl"``), none (``None``, TFP's way to drop it)
        or the user's ``fn(q, p, w)``, summed (a number is taken, as TFP's ``tf.identity`` does)."""
        fn = getattr(self, role)
        if isinstance(fn, str):  # "kl"
            return weight_kl(q, p, w, self.kl_use_exact)
        if fn is None:
            return 0.0
        value = fn(q, p, w)
        if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
            got = type(value).__name__
            raise TypeError(f"{type(self).__name__}: {role} returned {got}, expected a Tensor or a number")
        return value.sum() if isinstance(value, torch.Tensor) else float(value)


class _Reparameterization(_WeightUncertainty):
    def _estimate(self, x, qk, qb):
        wk = qk.rsample()  # kernel_shape
        wb = qb.rsample() if qb is not None else None  # bias_shape
        return self._op(x, wk, wb), wk, wb


class _LocalReparameterization(_WeightUncertainty):
    def _estimate(self, x, qk, qb):
        if not isinstance(_base(qk), D.Normal):
            raise TypeError(
                f"{type(self).__name__}: local reparameterization needs a Normal (or "
                f"Independent(Normal)) kernel posterior, got {type(_base(qk)).__name__}"
            )
        # The kernel's term per example; the bias drawn once per forward and shared by the batch,
        # as TFP's (its sample also goes to bias_divergence_fn); a point mass in the mean.
        drawn_bias = qb is not None and not isinstance(_base(qb), _PointMass)
        mean = self._op(x, qk.mean, qb.mean if qb is not None and not drawn_bias else None)  # (*B, out)
        var = self._op(x.square(), qk.variance, None)  # (*B, out)
        std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
        out = D.Normal(mean, std, validate_args=False).rsample()  # (*B, out)
        wb = None
        if drawn_bias:
            wb = qb.rsample()  # bias_shape
            out = out + self._bias_view(wb).to(out.dtype)
        return out, None, wb


class _Flipout(_WeightUncertainty):
    def _estimate(self, x, qk, qb):
        loc = qk.mean  # kernel_shape
        wk = qk.rsample()
        delta = wk - loc  # one perturbation, decorrelated per example by the signs
        mean = self._op(x, loc, None)  # (*B, out)
        s_in, s_out = self._sign_shapes(x, mean)
        # The output signs and the bias in the output's dtype: bf16 under autocast, as torch's
        # layers (and the other estimators, whose op takes the bias) give.
        out = mean + self._op(x * _rademacher(s_in, x), delta, None) * _rademacher(s_out, mean)
        wb = None
        if qb is not None:
            wb = qb.rsample()  # bias_shape
            out = out + self._bias_view(wb).to(out.dtype)
        return out, wk, wb


def _dense_check(layer: _WeightUncertainty, x: torch.Tensor) -> None:
    n = layer.kernel_shape[1]
    if x.dim() == 0 or x.shape[-1] != n:
        raise ValueError(f"{type(layer).__name__}: expected input of shape (..., {n}), got {tuple(x.shape)}")


class _Dense(_WeightUncertainty):
    """Dense layer: kernel ``(out_features, in_features)`` (``nn.Linear`` layout), bias ``(out,)``.
    Input ``(*B, in_features)``, output ``(*B, out_features)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        kernel_posterior_fn: WeightFn = MeanFieldNormal,
        kernel_prior_fn: WeightFn = StandardNormal,
        bias_posterior_fn: WeightFn | None = BIAS_POSTERIOR_FN,
        bias_prior_fn: WeightFn | None = None,
        kl_weight: float | torch.Tensor = 1.0,
        kl_use_exact: bool = True,
        activation: Activation = None,
        dtype: torch.dtype | None = None,
        *,
        kernel_divergence_fn: DivergenceFn | str | None = "kl",
        bias_divergence_fn: DivergenceFn | str | None = "kl",
    ) -> None:
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        super().__init__(
            (self.out_features, self.in_features),
            (self.out_features,) if bias_flag(bias) else None,
            kernel_posterior_fn,
            kernel_prior_fn,
            bias_posterior_fn,
            bias_prior_fn,
            kl_weight,
            kl_use_exact,
            activation,
            dtype,
            kernel_divergence_fn,
            bias_divergence_fn,
        )

    def _op(self, x, kernel, bias):
        return F.linear(x, kernel, bias)

    def _check_input(self, x):
        _dense_check(self, x)

    def _sign_shapes(self, x, out):
        return x.shape, out.shape

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_posterior is not None}, kl_weight={float(self.kl_weight):.3g}, "
            f"kl_use_exact={self.kl_use_exact}"
        )


_DenseClass = TypeVar("_DenseClass", bound=type)


def _document_dense(summary: str, how: str, posterior: str = "") -> Callable[[_DenseClass], _DenseClass]:
    """Write a dense weight layer's docstring: its summary and estimator, the shared arguments."""

    def document(cls: _DenseClass) -> _DenseClass:
        w = ", ``None`` for local reparameterization" if issubclass(cls, _LocalReparameterization) else ""
        cls.__doc__ = f"""{summary}

{how}
(``tfp.layers.{cls.__name__}``; see the module doc).

Args:
    in_features: inputs per example.
    out_features: outputs per example (the kernel has shape ``(out_features,
        in_features)``, as ``nn.Linear``'s weight).
    bias: whether the layer has a bias (default ``True``).
{_WEIGHT_ARGS.format(posterior=posterior, w=w)}
Input: ``(*B, in_features)``. Output: a tensor of shape ``(*B, out_features)``; each
forward records ``kl_weight * KL`` (kernel and bias) as an added loss
(:func:`~problayers.collect_losses`).

Example::

    >>> layer = pl.{cls.__name__}(4, 2, kl_weight=1 / 1000)
    >>> layer(torch.zeros(8, 4)).shape, pl.collect_losses(layer).shape
    (torch.Size([8, 2]), torch.Size([]))
"""
        return cls

    return document


@_document_dense(
    "Dense layer with a posterior over its weights; one ``W ~ q`` per forward.",
    "One reparameterized kernel (and bias) sample per forward is shared by the whole batch",
)
class DenseReparameterization(_Dense, _Reparameterization):
    pass


@_document_dense(
    "Dense layer with a Gaussian posterior over its weights; local reparameterization.",
    "Each example's pre-activation is drawn from its exact Gaussian instead of sampling the\n"
    "kernel, independently per example (lower-variance gradients than one ``W`` shared by the\n"
    "batch), from two products per forward: the mean and the variance; a Normal bias is one\n"
    "sample per forward shared by the batch, as TFP's",
    " (the kernel posterior must be\n        ``Normal`` or ``Independent(Normal)``)",
)
class DenseLocalReparameterization(_Dense, _LocalReparameterization):
    pass


@_document_dense(
    "Dense layer with a posterior over its weights; Flipout perturbations.",
    "One weight perturbation per forward, decorrelated per example by random signs",
    " (it must be symmetric about its mean)",
)
class DenseFlipout(_Dense, _Flipout):
    pass
