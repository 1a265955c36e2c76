"""Training objectives of a :class:`~problayers.vae.models.VAE`: the ELBO (with a KL warm-up and
free bits), the importance-weighted bound (IWAE) and its doubly reparameterized gradient (DReG).

An objective is an ``nn.Module`` called as ``objective(vae, x) -> (loss, metrics)`` from inside
``vae(x, loss=True)``; it is a submodule of the model, so its state (the step count of a KL
warm-up) is saved, averaged and resumed with the weights. ``OBJECTIVES`` maps a config's
``objective`` name to its class.

For a batch ``x`` of shape ``(B, *X)``, ``q = q(z|x)`` (batch ``(B,)``, event ``(D,)``) and
``z_k ~ q`` (``k = 1..K``)::

    ELBO   = E_q[log p(x|z)] - beta * KL(q || p)
    IWAE_K = log (1/K) sum_k w_k,    log w_k = log p(x|z_k) + beta * (log p(z_k) - log q(z_k|x))

The losses are the negatives, averaged over the batch, in nats per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributions as D
from torch import nn
from torch.nn.parameter import UninitializedBuffer

from .._state import first_floating_tensor
from ..kl import kl_or_estimate
from ..losses import added_losses_skipped, collect_losses
from ..numerics import logsumexp
from ..precision import wide_dtype
from ..train.distributed import mean_over_ranks

__all__ = ["ELBO", "IWAE", "OBJECTIVES", "OBJECTIVE_OPTIONS", "Objective", "check_support", "data_log_prob"]


def data_log_prob(px: D.Distribution, x: torch.Tensor, k: int = 1) -> torch.Tensor:
    """``log p(x|z)`` per example and sample: ``px`` (batch ``(k * B,)``, event X, sample-major)
    at ``x`` ``(B, *X)`` repeated ``k`` times, shape ``(k * B,)``. An ``x`` whose shape after
    the batch is not the decoder's event shape (images ``(B, 28, 28)`` for an event
    ``(1, 28, 28)``) is refused: torch would broadcast it against every example's
    distribution, to a sum over the whole batch."""
    if tuple(x.shape[1:]) != tuple(px.event_shape):
        raise ValueError(
            f"x of shape {tuple(x.shape)}: expected (B, *event_shape) with the decoder's event_shape "
            f"{tuple(px.event_shape)}, got {tuple(x.shape[1:])} after the batch"
        )
    return px.log_prob(x if k == 1 else _repeat(x, k))  # (k * B,)


def check_support(px: D.Distribution, x: torch.Tensor, name: str = "x", k: int = 1) -> None:
    """Refuse data ``x`` ``(B, *X)`` outside the support of the decoder's ``px`` (batch
    ``(k * B,)``, sample-major, as in :func:`data_log_prob`): images in 0..255 given to a
    Bernoulli decoder (``images.float()`` after the uint8 refusal) give a negative -ELBO, since
    ``log_prob`` without argument checks computes it anyway. A support that depends on the
    parameters (a Binomial's ``total_count``) is checked per example. One host sync: evaluation
    checks, the training step does not. A distribution that does not state its support is not
    checked."""
    try:
        support = px.support
    except NotImplementedError:
        return
    if support is None or D.constraints.is_dependent(support):
        return
    inside = support.check(x if k == 1 else _repeat(x, k)).reshape(k, -1).all(0)  # (B,)
    if not bool(inside.all()):
        kind = getattr(px, "_tc_base", type(px)).__name__  # a layer's output: the torch class it extends
        base = getattr(px, "base_dist", None)
        while isinstance(support, D.constraints.independent):
            support = support.base_constraint
        what = f"{kind}({type(base).__name__})" if base is not None else kind
        hint = ""
        if support is D.constraints.boolean:  # the toolkit's images for a Bernoulli decoder
            hint = "; binarized images are 0 or 1: see problayers.vae.data.binarize_fixed"
        raise ValueError(
            f"{name}: expected values in the support of the decoder's {what} "
            f"({type(support).__name__.lstrip('_')}); "
            f"got {int((~inside).sum())} of {x.shape[0]} examples outside it (values in "
            f"[{x.min().item():g}, {x.max().item():g}]{hint})"
        )


class Objective(nn.Module):
    """What the objectives share: the KL weight ``beta``, its warm-up and free bits.

    Args:
        beta: the KL weight at the end of the warm-up (1: the ELBO; ``!= 1``: a beta-VAE). A
            model whose encoder adds its own KL term (a ``KLDivergenceRegularizer``, as the seed)
            takes its KL weight from the regularizer's ``weight``, in every objective: ``beta``
            must then be 1 or that weight (:class:`~problayers.vae.models.VAE` checks).
        kl_warmup_steps: the KL weight rises linearly from 0 to ``beta`` over this many training
            steps (Bowman et al. 2016; Sønderby et al. 2016); 0: no warm-up. The step count is
            a buffer of the model (saved in checkpoints), advanced by each training-mode call
            with gradients enabled.
        free_bits: nats per latent dimension under which the KL term stops pulling (Kingma et
            al. 2016, with the whole latent as one group): the batch-mean KL enters the loss as
            ``max(KL, free_bits * D)``. 0: none. ELBO only.
    """

    steps: torch.Tensor

    def __init__(self, beta: float = 1.0, kl_warmup_steps: int = 0, free_bits: float = 0.0) -> None:
        super().__init__()
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.free_bits = float(free_bits)
        if self.kl_warmup_steps > 0:  # only then: the seed's state_dict stays what it was
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def warmup(self, like: torch.Tensor | None = None) -> torch.Tensor | float:
        """The warm-up factor ``min(1, steps / kl_warmup_steps)`` (1.0 without a warm-up, else
        a 0-dim tensor in ``like``'s dtype, computed in float64 where the device has it, so a
        float64 model's is not rounded to float32; float32 without ``like``); advances the
        step count in a training step."""
        if self.kl_warmup_steps <= 0:
            return 1.0
        wide = wide_dtype(self.steps.device)
        factor = (self.steps.to(wide) / self.kl_warmup_steps).clamp(max=1.0)
        factor = factor.to(torch.float32 if like is None else like.dtype)
        if self.training and torch.is_grad_enabled():
            self.steps.add_(1)
        return factor

    def kl_weight(self, vae: Any) -> float | torch.Tensor:
        """The KL weight before the warm-up: the encoder regularizer's ``weight`` where the model
        has one (the KL term it adds is weighted there), else ``beta``."""
        return self.beta if vae.regularizer is None else vae.regularizer.weight

    def extra_repr(self) -> str:
        return f"beta={self.beta}, kl_warmup_steps={self.kl_warmup_steps}, free_bits={self.free_bits}"


def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, *X) -> (k * B, *X)``, sample-major (row ``s * B + b`` is ``x[b]``)."""
    return x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])


class ELBO(Objective):
    """The negative ELBO from one sample per example.

    A model with an encoder regularizer (the seed, as TFP's example) is trained exactly as the
    example trains it: ``-log p(x|z)`` plus the KL term the encoder added. Otherwise the KL is
    ``torch.distributions.kl_divergence(q, p)`` where torch has a formula for the pair and
    ``exact_kl`` is set, else the Monte Carlo estimate ``log q(z) - log p(z)`` at the sample the
    decoder saw (a mixture prior, a flow posterior: automatically).

    Args:
        exact_kl: prefer the analytic KL where there is one (default ``True``).
        beta, kl_warmup_steps, free_bits: see :class:`Objective`.

    Metrics: ``recon`` (``-log p(x|z)``) and ``kl`` (``beta * KL``, before warm-up and free
    bits), both batch means.
    """

    def __init__(self, exact_kl: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exact_kl = bool(exact_kl)

    def forward(self, vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = vae.encode(x)  # batch (B,), event (D,); its tensor value is the sample z
        rv_x = vae.decoder(q)  # batch (B,), event X
        recon = -data_log_prob(rv_x, x).mean()
        if vae.regularizer is not None:  # the encoder added weight * KL (batch mean)
            kl = collect_losses(vae, clear=True)
            floor = float(vae.regularizer.weight) * self.free_bits * q.event_shape.numel()
        else:
            kl = self.beta * kl_or_estimate(q, vae.prior(), exact=self.exact_kl).mean()
            floor = self.beta * self.free_bits * q.event_shape.numel()
        floor = min(floor, torch.finfo(kl.dtype).max)  # a huge beta: not a conversion error here
        term = kl
        if self.free_bits > 0:  # the global batch's KL decides (data-parallel: not each shard's)
            term = torch.where(mean_over_ranks(kl) >= floor, kl, torch.full_like(kl, floor))
        if self.kl_warmup_steps > 0:
            term = self.warmup(term) * term
        return recon + term, {"recon": recon.detach(), "kl": kl.detach()}


class IWAE(Objective):
    """The negative importance-weighted bound ``-IWAE_K`` (Burda et al. 2016).

    Args:
        num_samples: ``K >= 1`` samples per example (``K = 1``: the ELBO with a Monte Carlo KL).
        dreg: use the doubly reparameterized gradient (Tucker et al. 2019) for the encoder:
            the loss has the same value, but the encoder's gradient is
            ``sum_k w~_k^2 d log w_k / d z_k  d z_k / d phi`` with ``log q`` evaluated at
            stopped parameters (an encoder pass with detached weights), an unbiased estimator
            whose variance does not grow with ``K`` as the plain one's does. With a KL weight
            ``c != 1`` (:meth:`Objective.kl_weight` times the warm-up) the factor ``w~_k^2``
            becomes ``(1 - c) w~_k + c w~_k^2`` (the same derivation), so the gradient stays
            the bound's. The decoder's and
            the prior's gradients are the IWAE's. Costs one more pass without gradients (for
            the weights ``w~``).
        beta, kl_warmup_steps: see :class:`Objective` (free bits do not apply).

    The encoder's own added losses (a KL regularizer) are skipped. Metrics: ``iwae`` (the
    bound's negative, batch mean).
    """

    def __init__(self, num_samples: int = 1, dreg: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_samples = int(num_samples)
        self.dreg = bool(dreg)

    def forward(self, vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k, batch = self.num_samples, x.shape[0]
        with added_losses_skipped():
            q = vae.encode(x)  # batch (B,), event (D,)
        prior = vae.prior()
        kl_weight = self.kl_weight(vae) * self.warmup(first_floating_tensor(q))

        def log_weights(z: torch.Tensor, decoder: Callable[..., Any] = vae.decoder) -> torch.Tensor:
            # (K, B, D) -> (K, B)
            px = decoder(z.reshape(k * batch, -1))  # batch (K * B,), event X
            log_px = data_log_prob(px, x, k).reshape(k, batch)
            log_q = _stopped_log_prob(vae, x, z) if self.dreg else q.log_prob(z)
            return log_px + kl_weight * (prior.log_prob(z) - log_q)

        z = q.rsample((k,))  # (K, B, D)
        if not (self.dreg and z.requires_grad):
            neg_bound = -(logsumexp(log_weights(z), 0) - math.log(k)).mean()
            return neg_bound, {"iwae": neg_bound.detach()}
        # DReG. The normalized weights w first (a pass without gradients), then the pass that
        # is differentiated, at z_w = z with its gradient path to the encoder scaled by s_k (its
        # value is z's): sum_k w_k d log w_k gives the decoder and the prior the IWAE gradient,
        # and the encoder, reached only through z_w (log q is stopped), sum_k w_k s_k d log w_k
        # / d z_k d z_k / d phi. The score term -kl_weight E[sum_k w_k d log q / d phi],
        # reparameterized, is -kl_weight sum_k w_k (1 - w_k) (the path term), so s_k = 1 -
        # kl_weight + kl_weight w_k: Tucker et al.'s w_k^2 at kl_weight 1, and unbiased for a
        # beta or during a warm-up too. No hook: the same graph under torch.compile.
        fixed = z.detach()
        with torch.no_grad():  # the decoder's running statistics are updated by the pass below only
            w = torch.softmax(log_weights(fixed, _on_copied_stats(vae.decoder)), 0)  # (K, B)
        scale = (1 - kl_weight) + kl_weight * w  # (K, B)
        log_w = log_weights(fixed + scale.unsqueeze(-1) * (z - fixed))  # (K, B)
        neg_bound = -(logsumexp(log_w.detach(), 0) - math.log(k)).mean()
        surrogate = -(w * log_w).sum(0).mean()
        return neg_bound + (surrogate - surrogate.detach()), {"iwae": neg_bound}


def _stopped_log_prob(vae: Any, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``log q(z|x)`` with no gradient to the encoder's parameters (only through ``z``): the
    encoder, and the networks its posterior's ``log_prob`` runs (a hierarchical posterior's
    conditional), at detached weights (a flow's output runs its network at the weights of the
    call that made it), on copies of its running statistics (:func:`_running_stats`). ``(K, B)``."""
    state = {f"encoder.{n}": p.detach() for n, p in vae.encoder.named_parameters()}
    state |= _running_stats(vae.encoder, "encoder.")
    with added_losses_skipped():
        return torch.func.functional_call(vae, state, (x,), {"log_q_at": z})


def _running_stats(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Copies of the running statistics of the normalization layers in ``module`` (BatchNorm's
    ``running_mean``, ``running_var``, ``num_batches_tracked``), named for ``functional_call``:
    an extra pass in training mode updates the copies, so the statistics move once per step,
    in the step's own forward. Other buffers are the module's own (a ``WeightNorm``'s
    initialized flag, set by whichever pass comes first, must stay set)."""
    return {
        f"{prefix}{name}.{b}" if name else f"{prefix}{b}": buf.clone()
        for name, sub in module.named_modules()
        if isinstance(sub, nn.modules.batchnorm._NormBase)
        for b, buf in sub.named_buffers(recurse=False)
        if not isinstance(buf, UninitializedBuffer)  # a lazy layer's before its first call
    }


def _on_copied_stats(module: nn.Module) -> Callable[..., Any]:
    """``module`` as a function that runs on copies of its running statistics (a pass that
    must not move them); ``module`` itself where it has none."""
    stats = _running_stats(module)
    if not stats:
        return module
    return lambda *args: torch.func.functional_call(module, stats, args)


#: name -> ``(exact_kl, num_samples, **Objective's arguments) -> Objective``
#: (``ModelConfig.objective``).
OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "elbo": lambda exact_kl, num_samples, **kw: ELBO(exact_kl=exact_kl, **kw),
    "iwae": lambda exact_kl, num_samples, **kw: IWAE(num_samples, **kw),
    "dreg": lambda exact_kl, num_samples, **kw: IWAE(num_samples, dreg=True, **kw),
}

#: name -> the ``ModelConfig`` options the objective reads besides ``beta`` and
#: ``kl_warmup_steps`` (``num_samples``: K >= 2 samples; else one). A config that sets another is
#: refused (:class:`~problayers.vae.models.ModelConfig`); an objective not listed here (one of
#: the user's own in ``OBJECTIVES``) is not checked.
OBJECTIVE_OPTIONS: dict[str, frozenset[str]] = {
    "elbo": frozenset({"exact_kl", "free_bits"}),
    "iwae": frozenset({"num_samples"}),
    "dreg": frozenset({"num_samples"}),
}
