"""Categorical layers: ``OneHotCategorical`` and a categorical mixture of them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D

from ..coercible import _coercible_class
from ..convert import ConvertFn
from ..numerics import logsumexp
from ._args import boolean, class_count
from ._args import positive_int as _positive_int
from .base import DistributionLambda, Size, SizeOrOneTuple, check_params, params_size_of

__all__ = [
    "CategoricalMixtureOfOneHotCategorical",
    "OneHotCategorical",
    "OneHotCategoricalMixture",
    "SoftOneHotCategorical",
]


class SoftOneHotCategorical(D.OneHotCategorical):
    """torch's ``OneHotCategorical`` whose ``log_prob(x)`` is TFP's: ``sum_e x_e log p_e`` for any
    ``x`` of shape ``(*B, E)`` -> ``(*B,)``, so a smoothed or soft label (label smoothing, mixup)
    scores as minus its cross-entropy, as in ``tfd.OneHotCategorical``; torch's scores ``argmax(x)``
    only. On a one-hot ``x`` both are the same number. The gradient reaches the logits only, not
    ``x`` (TFP stops it there; torch's has none either). Everything else is torch's; with
    ``validate_args`` torch's support check (one-hot values) applies."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p = self._categorical.logits  # (*B, E), normalized by torch
        value = value.detach().to(log_p.dtype)  # a label: TFP's stop_gradient
        # 0 * log p counts 0 where p = 0 (log p = -inf), in the value and in the gradients
        log_p = torch.where((value == 0) & torch.isneginf(log_p), 0.0, log_p)
        return (value * log_p).sum(-1)  # (*B,)


_coercible_class(SoftOneHotCategorical)  # made up front, as torch's (see coercible.py)


def one_hot_categorical(logits: torch.Tensor, validate_args: bool = False) -> SoftOneHotCategorical:
    """:class:`SoftOneHotCategorical` of ``logits`` whose inner ``Categorical`` gets
    ``validate_args`` too (batch ``logits.shape[:-1]``, event ``logits.shape[-1:]``).

    torch's constructor builds its ``Categorical`` with the global default (checks on), so its
    parameters are checked at every construction and each ``log_prob`` value is checked again,
    each check a value read back on the host: an eager GPU step waits for the device there, and
    a CUDA graph cannot capture the step at all. This builds the same attributes with the checks
    as asked.
    """
    dist = SoftOneHotCategorical.__new__(SoftOneHotCategorical)
    dist._categorical = cat = D.Categorical(logits=logits, validate_args=validate_args)
    D.Distribution.__init__(dist, cat.batch_shape, cat.param_shape[-1:], validate_args=validate_args)
    return dist


class OneHotCategoricalMixture(D.MixtureSameFamily):
    """``MixtureSameFamily(Categorical, OneHotCategorical)`` with TFP's ``log_mean``.

    Args:
        mixture_distribution: ``Categorical`` over the K components, batch B.
        component_distribution: ``OneHotCategorical`` over E classes, batch ``(*B, K)``.
        validate_args: passed to ``MixtureSameFamily``.

    Input: as ``torch.distributions.MixtureSameFamily``. Output: batch B, event ``(E,)``.
    ``log_mean()``: ``(*B, E)``, the log of the mixture's mean (its class probabilities).

    Example::

        >>> mix = pl.layers.categorical.OneHotCategoricalMixture(
        ...     D.Categorical(logits=torch.zeros(2)), D.OneHotCategorical(logits=torch.zeros(2, 3)))
        >>> mix.log_mean().exp()
        tensor([0.3333, 0.3333, 0.3333])
    """

    def log_mean(self) -> torch.Tensor:
        """``log E[x]`` (``(*B, E)``): logsumexp over K of the mixture's and components' log-probs,
        the numerically stable form of ``log(mean)``."""
        log_w = self.mixture_distribution.logits.unsqueeze(-1)  # (*B, K, 1), normalized by torch
        log_p = self.component_distribution.logits  # type: ignore[attr-defined]  # (*B, K, E), normalized
        return logsumexp(log_w + log_p, dim=-2)  # (*B, E)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(OneHotCategoricalMixture, _instance)
        return super().expand(batch_shape, _instance=new)


_coercible_class(OneHotCategoricalMixture)  # made up front, as torch's (see coercible.py)


class OneHotCategorical(DistributionLambda):
    """One-hot categorical over ``event_size`` classes, parameterized by logits.

    Args:
        event_size: the number of classes (an int, or TFP's one-element shape ``(K,)``).
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"sample"``, a one-hot floating
            sample, as the distribution has no ``rsample``.
        validate_args: keyword-only, as the argument after it (TFP's third argument is
            ``sample_dtype``); passed to the distribution (default ``False``: no checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).

    Input: ``(*B, params_size(event_size))`` = ``(*B, event_size)`` logits. Output: a
    tensor-coercible :class:`SoftOneHotCategorical` (a ``torch.distributions.OneHotCategorical``
    whose ``log_prob`` of a soft label is TFP's, minus the cross-entropy) with ``batch_shape`` B and
    ``event_shape`` ``(event_size,)``.

    Example::

        >>> layer = pl.OneHotCategorical(4)
        >>> out = layer(torch.zeros(2, pl.OneHotCategorical.params_size(4)))
        >>> out.batch_shape, out.event_shape, out.shape
        (torch.Size([2]), torch.Size([4]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        event_size: SizeOrOneTuple,
        convert_to_tensor_fn: ConvertFn = "sample",
        *,
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        self.event_size = class_count(event_size)
        self.validate_args = boolean(validate_args, "validate_args")

    @params_size_of("event_size")
    def params_size(event_size: SizeOrOneTuple) -> int:
        """Number of inputs per example: ``event_size`` logits."""
        return class_count(event_size)

    @staticmethod
    def new(params, event_size: SizeOrOneTuple, *, validate_args: bool = False) -> SoftOneHotCategorical:
        """``(*B, event_size)`` logits -> ``OneHotCategorical``, batch B, event ``(event_size,)``."""
        k = class_count(event_size)
        params = check_params("OneHotCategorical", params, k)  # (*B, K)
        return one_hot_categorical(params, boolean(validate_args, "validate_args"))

    def make_distribution(self, params) -> SoftOneHotCategorical:
        return self.new(params, self.event_size, validate_args=self.validate_args)

    def extra_repr(self) -> str:
        return f"event_size={self.event_size}, {super().extra_repr()}"


class CategoricalMixtureOfOneHotCategorical(DistributionLambda):
    """A ``num_components`` mixture of one-hot categoricals over ``event_size`` classes.

    Args:
        event_size: the number of classes (an int, or TFP's one-element shape ``(K,)``).
        num_components: K, the number of mixture components.
        convert_to_tensor_fn: how the output becomes a tensor (see
            :class:`~problayers.DistributionLambda`); default ``"sample"`` (a mixture has no
            ``rsample``).
        validate_args: keyword-only, as the argument after it (TFP's next argument is
            ``sample_dtype``); passed to the distributions (default ``False``: no checks).
        activity_regularizer: optional ``Distribution -> 0-dim tensor`` recorded as an added
            loss on each output (default ``None``: none).

    Input: ``(*B, params_size(event_size, num_components))`` = ``(*B, num_components * (1 +
    event_size))``: the mixture logits, then each component's ``event_size`` logits
    (component-major). Output: a tensor-coercible :class:`OneHotCategoricalMixture` (a
    ``torch.distributions.MixtureSameFamily``, ``Categorical`` mixing ``OneHotCategorical``,
    with ``log_mean()`` as in TFP) with ``batch_shape`` B and ``event_shape`` ``(event_size,)``.

    Example::

        >>> pl.CategoricalMixtureOfOneHotCategorical.params_size(event_size=3, num_components=2)
        8
        >>> out = pl.CategoricalMixtureOfOneHotCategorical(3, 2)(torch.zeros(5, 8))
        >>> out.batch_shape, out.event_shape
        (torch.Size([5]), torch.Size([3]))
    """

    def __init__(
        self,
        event_size: SizeOrOneTuple,
        num_components: Size,
        convert_to_tensor_fn: ConvertFn = "sample",
        *,
        validate_args: bool = False,
        activity_regularizer: Callable[[D.Distribution], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(None, convert_to_tensor_fn, activity_regularizer)
        self.event_size = class_count(event_size)
        self.num_components = _positive_int(num_components, "num_components")
        self.validate_args = boolean(validate_args, "validate_args")

    @params_size_of("event_size", "num_components")
    def params_size(event_size: SizeOrOneTuple, num_components: Size) -> int:
        """Number of inputs per example: ``num_components * (1 + event_size)``."""
        e = class_count(event_size)
        return _positive_int(num_components, "num_components") * (1 + e)

    @staticmethod
    def new(
        params, event_size: SizeOrOneTuple, num_components: Size, *, validate_args: bool = False
    ) -> OneHotCategoricalMixture:
        """``(*B, K * (1 + E))`` -> :class:`OneHotCategoricalMixture` (a ``MixtureSameFamily`` of
        ``Categorical`` and ``OneHotCategorical`` with ``log_mean``), batch B, event ``(E,)``."""
        e = class_count(event_size)
        k = _positive_int(num_components, "num_components")
        validate_args = boolean(validate_args, "validate_args")
        params = check_params("CategoricalMixtureOfOneHotCategorical", params, k * (1 + e))
        mix_logits = params[..., :k]  # (*B, K)
        comp_logits = params[..., k:].reshape((*params.shape[:-1], k, e))  # (*B, K, E)
        return OneHotCategoricalMixture(
            D.Categorical(logits=mix_logits, validate_args=validate_args),
            one_hot_categorical(comp_logits, validate_args),
            validate_args=validate_args,
        )

    def make_distribution(self, params) -> D.MixtureSameFamily:
        return self.new(params, self.event_size, self.num_components, validate_args=self.validate_args)

    def extra_repr(self) -> str:
        return f"event_size={self.event_size}, num_components={self.num_components}, {super().extra_repr()}"
