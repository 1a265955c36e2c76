"""KL regularization of a distribution layer's output: the KL term of the ELBO.

``KLDivergenceRegularizer(prior)`` is used as a distribution layer's ``activity_regularizer``;
``KLDivergenceAddLoss(prior)`` is the same as a pass-through layer. Either records ``weight``
times the batch mean of ``KL(q || prior)`` as an added loss (see :mod:`problayers.losses`): as in
Keras, the batch members are the rows of the first batch axis, and a member's KL is summed over
the batch axes after it (``Normal`` over ``(B, D)`` without ``Independent``: its ``D`` latents).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributions as D
from torch import nn

from ._state import first_floating_tensor, requires_grad, versions
from .coercible import base_class, convert_to_tensor
from .convert import CONVERT_TO_TENSOR_FNS
from .distcopy import distribution_to, kept_copy, map_tensors
from .kl import exact_kl
from .layers._args import boolean, non_negative_number
from .losses import added_losses_enabled, init_added_losses, set_added_loss
from .precision import in_fp32

__all__ = ["KLDivergenceAddLoss", "KLDivergenceRegularizer", "distribution_to"]

PriorLike = D.Distribution | nn.Module | Callable[[], D.Distribution]


def _forward_takes_an_argument(module: nn.Module) -> bool:
    """Whether ``module.forward`` accepts one positional argument (decided once per prior)."""
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return True
    for parameter in signature.parameters.values():
        if parameter.kind in (
            parameter.POSITIONAL_ONLY,
            parameter.POSITIONAL_OR_KEYWORD,
            parameter.VAR_POSITIONAL,
        ):
            return True
    return False


def _meta_prior(device: torch.device) -> RuntimeError:
    return RuntimeError(
        f"KLDivergenceRegularizer: the prior was made on the meta device and has no values to put "
        f"on {device}; make it outside torch.device('meta'), or pass a module that makes it "
        "(e.g. problayers.StandardNormal(shape))"
    )


def _check_event_shapes(q: D.Distribution, prior: D.Distribution) -> None:
    if q.event_shape != prior.event_shape:
        raise ValueError(
            f"KLDivergenceRegularizer: the prior's event_shape {tuple(prior.event_shape)} differs from "
            f"the posterior's {tuple(q.event_shape)} "
            f"({base_class(prior).__name__} vs {base_class(q).__name__})"
        )


class KLDivergenceRegularizer(nn.Module):
    """``weight * KL(q || prior)``, averaged over the batch members, of a layer's output ``q``.

    Used as a distribution layer's ``activity_regularizer`` (``tfp.layers.KLDivergenceRegularizer``):
    the layer records its value on each output as an added loss (the ELBO's KL term).

    Args:
        prior: a ``Distribution`` (it moves with the model, and to the output's device and
            dtype as needed), an ``nn.Module`` returning one (a trainable prior: its parameters
            become the layer's), or a zero-argument callable returning one. An ``nn.Module``
            whose ``forward`` takes an argument is called with ``q`` (the regularizer's input,
            as the weight layers call their priors with theirs), so ``nn.Sequential(
            VariableLayer(...), DistributionLambda(...))`` works; one whose ``forward`` takes
            none is called with nothing. Its ``event_shape`` must be ``q``'s and its
            ``batch_shape`` must broadcast with ``q``'s. The prior keeps the argument checks
            it was built with: torch's default checks each ``log_prob`` value on the host, so
            for a step captured as a CUDA graph build it with ``validate_args=False`` (the
            layers' own distributions are built so).
        weight: keyword-only, as the arguments after it (TFP's second argument is
            ``use_exact_kl``: a positional port would mix them up); scales the term exactly
            (default 1, as TFP's ``None``; ``weight != 1`` gives a beta-VAE). A tensor (TFP's
            ``tf.Variable`` for a KL annealing) is used as given: change it in place, and the
            next term uses the new value, wherever the model moved; like a Keras regularizer's
            variable it is not in the ``state_dict`` (an ``nn.Parameter`` is: it is trained).
        use_exact_kl: ``torch.distributions.kl_divergence`` (a clear error where torch has no
            formula for the pair) instead of the default (``False``) Monte Carlo estimate
            ``log q(z) - log prior(z)`` at ``z = test_points_fn(q)``.
        test_points_fn: ``q -> z``; default: ``q``'s cached tensor value, so the KL is computed
            at the very sample the next layer consumes.
        test_points_reduce_axis: axes of ``log q(z) - log prior(z)`` to average (sample axes
            of ``z``, or batch axes not to sum); ``None``: every axis averaged, the batch's
            too (TFP's meaning). Default ``()``: none named.

    Input: a distribution ``q`` with ``batch_shape`` B and ``event_shape`` E (a layer's
    output). Output: a 0-dim tensor, ``weight`` times the KL summed over B's axes after the
    first and averaged over its first (the batch members, as Keras counts them) and over any
    sample axes of the test points: for ``B = (N,)`` the batch mean, for ``B = (N, D)`` (a
    ``Normal`` over ``(N, D)`` without ``Independent``) the mean over N of the sum over D, the
    number TFP's sum divided by Keras' batch size gives.

    Example::

        >>> prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
        >>> kl = pl.KLDivergenceRegularizer(prior, use_exact_kl=True)
        >>> kl(D.Independent(D.Normal(torch.ones(4, 2), 1.0), 1))  # KL(N(1, 1) || N(0, 1)) = 1/2 per dim
        tensor(1.)
    """

    def __init__(
        self,
        prior: PriorLike,
        *,
        weight: float | torch.Tensor | None = 1.0,
        use_exact_kl: bool = False,
        test_points_fn: Callable[[D.Distribution], torch.Tensor] = convert_to_tensor,
        test_points_reduce_axis: int | Sequence[int] | None = (),
    ) -> None:
        super().__init__()
        if not (isinstance(prior, (D.Distribution, nn.Module)) or callable(prior)):
            raise TypeError(
                "prior: expected a torch.distributions.Distribution, an nn.Module returning one "
                f"or a zero-argument callable returning one, got {type(prior).__name__}"
            )
        if weight is None:  # TFP's default: no scaling
            weight = 1.0
        weight = non_negative_number(weight, "weight")  # a 0-dim tensor's value too (at construction)
        if not callable(test_points_fn):
            raise TypeError(f"test_points_fn: expected a callable, got {type(test_points_fn).__name__}")
        self.prior = prior  # an nn.Module prior is registered as a submodule
        self.weight = weight  # a tensor: the user's own (an nn.Parameter is registered)
        self.use_exact_kl = boolean(use_exact_kl, "use_exact_kl")
        self.test_points_fn = test_points_fn
        axes = test_points_reduce_axis
        self.test_points_reduce_axis: tuple[int, ...] | None
        if axes is None:
            self.test_points_reduce_axis = None
        elif isinstance(axes, int) and not isinstance(axes, bool):
            self.test_points_reduce_axis = (axes,)
        else:
            try:  # operator.index: a float or a string among the axes raises
                self.test_points_reduce_axis = tuple(operator.index(a) for a in axes)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise TypeError(
                    f"test_points_reduce_axis: expected an int, a tuple of ints or None, got {axes!r}"
                ) from None
        self._takes_input: tuple[object, bool] = (None, False)  # (the prior it is for, the answer)
        self._prior_takes_input()  # decided here, not in a (compiled) call
        # (device, dtype) -> (the prior copied, its versions then, its copy there)
        self._moved: dict[
            tuple[torch.device, torch.dtype], tuple[D.Distribution, tuple[int, ...], D.Distribution]
        ] = {}
        # A Distribution prior as given and the copy ``_apply`` last placed; None for a module
        # prior, registered once (under ``prior``: a second name saves it twice, breaks torch.func).
        given = prior if isinstance(prior, D.Distribution) else None
        self._given_prior: D.Distribution | None = given
        self._placed_prior: D.Distribution | None = given
        self._placed_versions: tuple[int, ...] = ()

    def resolve_prior(self, like: torch.Tensor | None, q: D.Distribution | None = None) -> D.Distribution:
        """The prior as a ``Distribution`` on ``like``'s device and dtype (``None``: where it is).
        An ``nn.Module`` prior that takes an input is called with ``q``, else with ``like``."""
        if isinstance(self.prior, D.Distribution):
            prior = self.prior
        elif self._prior_takes_input():
            prior = self.prior(q if q is not None else like)  # type: ignore[call-arg]  # a module
        else:
            prior = self.prior()
        if not isinstance(prior, D.Distribution):
            raise TypeError(
                f"KLDivergenceRegularizer: prior: the {type(self.prior).__name__} returned "
                f"{type(prior).__name__}, not a Distribution"
            )
        if isinstance(self.prior, D.Distribution) and like is not None:
            if self._given_prior is not self.prior:  # placed by the model's move
                self._replace_if_changed()
                prior = self.prior
            ref = first_floating_tensor(prior)
            if ref is None or (ref.device == like.device and ref.dtype == like.dtype):
                return prior
            key = (like.device, like.dtype)
            if ref.is_meta and not like.is_meta:  # no values to copy to the output's device
                raise _meta_prior(like.device)
            if requires_grad(prior):  # trained by the user: converted at each call, differentiably
                return distribution_to(prior, like.device, like.dtype)
            moved = self._moved.get(key)
            if moved is None or moved[0] is not prior or self._stale(prior, moved[1]):
                # the first call, a prior assigned since, or one changed in place since
                moved = self._moved[key] = (
                    prior,
                    () if torch.compiler.is_compiling() else versions(prior),  # dynamo cannot read them
                    kept_copy(prior, like.device, like.dtype),
                )
            prior = moved[2]
        return prior

    def _prior_takes_input(self) -> bool:
        """Whether the module prior's ``forward`` takes the posterior (decided again for a prior
        assigned since: it may take another signature)."""
        if self._takes_input[0] is not self.prior:
            prior = self.prior
            self._takes_input = (prior, isinstance(prior, nn.Module) and _forward_takes_an_argument(prior))
        return self._takes_input[1]

    def _stale(self, given: D.Distribution, copied: tuple[int, ...]) -> bool:
        """Whether ``given`` changed in place since a copy was made at its ``copied`` versions
        (not asked under ``torch.compile``: a compiled step reads the copy it was traced with)."""
        return not torch.compiler.is_compiling() and versions(given) != copied

    def _replace_if_changed(self) -> None:
        """Place the prior as given again where it changed in place since the model moved it."""
        given = self._given_prior
        if (
            self.prior is self._placed_prior
            and isinstance(given, D.Distribution)
            and self._stale(given, self._placed_versions)
        ):
            ref = first_floating_tensor(self.prior)
            if ref is not None:
                self.prior = self._placed_prior = kept_copy(given, ref.device, ref.dtype)
                self._placed_versions = versions(given)

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> KLDivergenceRegularizer:
        # A Distribution prior moves with the model (``model.to(device)``, ``.double()``), as a
        # buffer would: a compiled graph then finds it where the data is, with nothing to cache.
        # It takes the device and dtype ``fn`` gives a tensor like its own, and its values from
        # the prior as given: ``to_empty`` (meta-device init) would leave it uninitialized, and
        # no state_dict restores it. A prior the user trains (a tensor that requires grad) stays
        # as given: ``resolve_prior`` converts it at each call, so the gradient reaches the user's
        # tensor and the updates are seen.
        super()._apply(fn, recurse)
        if isinstance(self.prior, D.Distribution) and not requires_grad(self.prior):
            if self.prior is not self._placed_prior or not isinstance(self._given_prior, D.Distribution):
                self._given_prior = self.prior  # replaced by the user since
            ref = first_floating_tensor(self.prior)
            placed: D.Distribution
            if ref is None:
                placed = map_tensors(self.prior, fn)
            else:
                like = fn(torch.empty(0, dtype=ref.dtype, device=ref.device))
                given = first_floating_tensor(self._given_prior)
                if given is not None and given.is_meta and not like.is_meta:
                    raise _meta_prior(like.device)
                placed = kept_copy(self._given_prior, like.device, like.dtype)
            self.prior = self._placed_prior = placed
            self._placed_versions = versions(self._given_prior)
            self._moved = {}
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Before 2026-12-07 a module prior was also saved under two more names (the same tensors).
        for old in (f"{prefix}_given_prior.", f"{prefix}_placed_prior."):
            for key in [k for k in state_dict if k.startswith(old)]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, q: D.Distribution) -> torch.Tensor:
        if not isinstance(q, D.Distribution):
            raise TypeError(f"KLDivergenceRegularizer: expected a Distribution, got {type(q).__name__}")
        return in_fp32(self._kl, q)  # the KL in fp32, as the layers' maths

    def _kl(self, q: D.Distribution) -> torch.Tensor:
        # The prior goes where q's parameters are (a sample may be an integer tensor).
        params = first_floating_tensor(q)
        if self.use_exact_kl:
            prior = self.resolve_prior(params, q)
            _check_event_shapes(q, prior)
            kl = exact_kl(q, prior, "use_exact_kl")  # (*B)
            averaged: tuple[int, ...] = ()
        else:
            z = self._test_points(q)  # (*S, *B, *E)
            prior = self.resolve_prior(params if params is not None else z, q)
            _check_event_shapes(q, prior)
            kl = q.log_prob(z) - prior.log_prob(z)  # (*S, *B)
            axes = self.test_points_reduce_axis
            if axes is None:  # TFP's meaning: every axis averaged, the batch's too
                return self.weight * kl.mean()
            if any(not -kl.dim() <= a < kl.dim() for a in axes):
                raise ValueError(
                    f"test_points_reduce_axis: {axes} is out of range "
                    f"for log q(z) - log prior(z) of shape {tuple(kl.shape)}"
                )
            averaged = tuple(sorted({a % kl.dim() for a in axes}))
        # Keras' members: the rows of q's first batch axis (module docstring); TFP sums the rest,
        # a prior's extra batch axes too, and Keras divides by q's rows.
        batch = len(q.batch_shape)  # torch.broadcast_shapes where needed only: ~40 us a call
        if prior.batch_shape not in ((), q.batch_shape):
            batch = len(torch.broadcast_shapes(q.batch_shape, prior.batch_shape))
        rows = kl.dim() - len(q.batch_shape) if q.batch_shape else None  # q's first batch axis
        inner = [a for a in range(kl.dim() - batch, kl.dim()) if a != rows and a not in averaged]
        kl = kl.sum(dim=inner, keepdim=True) if inner else kl  # (*S, B0, 1, ...)
        if rows is not None and rows not in averaged and q.batch_shape[0] == 1:  # a prior's many
            kl = kl.sum(dim=rows, keepdim=True)  # against q's one row: summed, Keras divides by 1
        return self.weight * kl.mean()

    def _test_points(self, q: D.Distribution) -> torch.Tensor:
        z = convert_to_tensor(self.test_points_fn(q))
        if isinstance(z, D.Distribution):  # a plain (not tensor-coercible) distribution: draw
            z = CONVERT_TO_TENSOR_FNS["auto"](z)
        if not isinstance(z, torch.Tensor):
            raise TypeError(
                f"KLDivergenceRegularizer: test_points_fn: expected it to return a tensor, "
                f"got {type(z).__name__}"
            )
        return z


class KLDivergenceAddLoss(nn.Module):
    """Pass-through layer that records ``KLDivergenceRegularizer(...)(q)`` as an added loss.

    The layer form of :class:`KLDivergenceRegularizer` (``tfp.layers.KLDivergenceAddLoss``),
    placed after a distribution layer in an ``nn.Sequential``.

    Args:
        prior: the prior, as for :class:`KLDivergenceRegularizer` (a ``Distribution``, a
            zero-argument callable returning one, or an ``nn.Module`` returning one).
        weight: keyword-only, as the arguments after it; scales the term (default 1).
        use_exact_kl: exact KL instead of the default (``False``) Monte Carlo estimate.
        test_points_fn: ``q -> z`` for the Monte Carlo estimate (default: ``q``'s tensor value).
        test_points_reduce_axis: sample axes of ``z`` (default ``()``: none).

    Input: a distribution ``q`` with ``batch_shape`` B and ``event_shape`` E. Output: ``q``
    itself, unchanged; the regularizer's ``weight`` times the batch mean of the KL (summed over
    B's axes after the first) is recorded as an added loss (:func:`~problayers.collect_losses`).

    Example::

        >>> prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
        >>> model = nn.Sequential(nn.Linear(3, 4), pl.IndependentNormal(2), pl.KLDivergenceAddLoss(prior))
        >>> q = model(torch.zeros(5, 3))
        >>> q.batch_shape, q.event_shape, pl.collect_losses(model).shape
        (torch.Size([5]), torch.Size([2]), torch.Size([]))
    """

    def __init__(
        self,
        prior: PriorLike,
        *,
        weight: float | torch.Tensor | None = 1.0,
        use_exact_kl: bool = False,
        test_points_fn: Callable[[D.Distribution], torch.Tensor] = convert_to_tensor,
        test_points_reduce_axis: int | Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.regularizer = KLDivergenceRegularizer(
            prior,
            weight=weight,
            use_exact_kl=use_exact_kl,
            test_points_fn=test_points_fn,
            test_points_reduce_axis=test_points_reduce_axis,
        )
        init_added_losses(self)

    def forward(self, q: D.Distribution) -> D.Distribution:
        if added_losses_enabled():
            set_added_loss(self, "kl_divergence", self.regularizer(q))
        return q
