"""KL divergences that ``torch.distributions`` lacks, registered with ``register_kl``, and the
exact KL as the layers compute it.

Registered when ``problayers`` is imported (as ``torch.distributions`` registers its own):

* ``MultivariateNormal`` ``p`` vs ``Independent(Normal, 1)`` ``q`` (the seed VAE's exact KL:
  full-covariance posterior, standard normal prior): the cross-entropy of ``p`` and ``q`` minus
  ``p``'s entropy, the cross-entropy summed over ``p``'s marginals (``q`` factorizes), each from
  torch's Normal-Normal KL and entropy.
* the reverse: the diagonal Gaussian viewed as a ``MultivariateNormal`` with ``scale_tril =
  diag(scale)``, and torch's MVN-MVN formula.

``torch.compile(fullgraph=True)`` (torch 2.13) traces the exact KL as every other layer: torch's
KL lookup is done ahead, for every registered pair of classes, by :func:`prepare_kl_dispatch`,
which :func:`exact_kl` calls first (run by dynamo while it traces, as a constant), because dynamo
cannot trace that lookup where torch has not cached it yet (``min`` over a generator), only the
cached result; a ``register_kl`` at any time empties that cache. Torch's MVN-MVN formula, which
dynamo cannot trace (``torch._C._infer_size``), goes in the graph as one call (:func:`mvn_kl`);
that works for fixed shapes only, so the reverse pair compiles without a dynamic batch.
"""

from __future__ import annotations

import torch
import torch.distributions as D
from torch.distributions.kl import register_kl

from ._on_import import when_imported
from .coercible import base_class, convert_to_tensor

__all__ = ["diagonal_normal_as_mvn", "exact_kl", "kl_or_estimate", "mvn_kl", "prepare_kl_dispatch"]


def _diagonal_normal(dist: D.Independent) -> D.Normal:
    """The ``Normal`` of ``Independent(Normal, 1)``; ``NotImplementedError`` for any other."""
    base = dist.base_dist
    if not _is_diagonal(dist):
        raise NotImplementedError(
            f"no KL formula between MultivariateNormal and Independent({type(base).__name__}, "
            f"reinterpreted_batch_ndims={dist.reinterpreted_batch_ndims}); only Independent(Normal, 1)"
        )
    return base


def diagonal_normal_as_mvn(dist: D.Independent) -> D.MultivariateNormal:
    """View ``Independent(Normal(loc, scale), 1)`` (batch B, event (d,)) as the equal
    ``MultivariateNormal`` (batch B, event (d,)). Other ``Independent`` distributions raise
    ``NotImplementedError``."""
    base = _diagonal_normal(dist)
    loc, scale = base.loc, base.scale  # (*B, d)
    return D.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale), validate_args=False)


def mvn_kl(
    q_loc: torch.Tensor, q_tril: torch.Tensor, p_loc: torch.Tensor, p_tril: torch.Tensor
) -> torch.Tensor:
    """``KL(MVN(q_loc, q_tril q_tril^T) || MVN(p_loc, p_tril p_tril^T))`` by torch's formula,
    shape ``(*B)`` for locs ``(*B, d)`` and lower-triangular factors ``(*B, d, d)``. One call in
    a ``torch.compile`` graph: dynamo cannot trace the formula, AOTAutograd can."""
    q = D.MultivariateNormal(q_loc, scale_tril=q_tril, validate_args=False)
    p = D.MultivariateNormal(p_loc, scale_tril=p_tril, validate_args=False)
    return D.kl_divergence(q, p)


# Registered once dynamo is imported (importing it here would add seconds to ``import problayers``).
when_imported("torch._dynamo", lambda: torch.compiler.allow_in_graph(mvn_kl))


@register_kl(D.MultivariateNormal, D.Independent)
def _kl_mvn_independent(p: D.MultivariateNormal, q: D.Independent) -> torch.Tensor:
    # KL(p || q) = H(p, q) - H(p), and as q factorizes over the d coordinates, the cross-entropy
    # H(p, q) is the sum of those of p's marginals N(loc_i, Sigma_ii): H(p_i, q_i) = KL(p_i ||
    # q_i) + H(p_i). No d x d solve, and no torch._C._infer_size (which dynamo cannot trace, so
    # the MVN-MVN formula does not compile with a dynamic batch).
    normal = _diagonal_normal(q)  # (*Bq, d)
    marginals = D.Normal(p.loc, p.stddev, validate_args=False)  # (*Bp, d)
    cross_entropy = (D.kl_divergence(marginals, normal) + marginals.entropy()).sum(-1)  # (*B)
    return cross_entropy - p.entropy()  # (*B)


@register_kl(D.Independent, D.MultivariateNormal)
def _kl_independent_mvn(p: D.Independent, q: D.MultivariateNormal) -> torch.Tensor:
    diagonal = diagonal_normal_as_mvn(p)
    return mvn_kl(diagonal.loc, diagonal.scale_tril, q.loc, q.scale_tril)


class _Prepared:
    """Marks torch's KL cache as filled by :func:`prepare_kl_dispatch` (``register_kl`` empties it)."""


def _with_subclasses(cls: type) -> list[type]:
    found: list[type] = [cls]
    todo: list[type] = [cls]
    while todo:
        subclasses: list[type] = todo.pop().__subclasses__()
        for sub in subclasses:
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


def prepare_kl_dispatch() -> None:
    """Look up, in torch's KL cache, the formula of every pair of distribution classes defined
    so far that a registered pair covers, unless done since the cache was last emptied.

    ``kl_divergence`` finds its formula through that cache; on a miss it searches the registry
    with code dynamo (torch 2.13) cannot trace, so ``torch.compile(fullgraph=True)`` of a layer
    with an exact KL failed in a process that had not computed that KL eagerly before, or had
    called ``register_kl`` (which empties the cache) since. Called before every exact KL
    (:func:`exact_kl`; a dictionary lookup once done); under ``torch.compile`` it runs while
    dynamo traces."""
    memo = getattr(D.kl, "_KL_MEMOIZE", None)
    registry = getattr(D.kl, "_KL_REGISTRY", None)
    dispatch = getattr(D.kl, "_dispatch_kl", None)
    if memo is None or registry is None or dispatch is None or (_Prepared, _Prepared) in memo:
        return  # another torch version: kl_divergence's own lookup
    pairs = list(registry)
    subclasses = {cls: _with_subclasses(cls) for pair in pairs for cls in pair}  # each class once
    for left, right in pairs:
        for p_cls in subclasses[left]:
            for q_cls in subclasses[right]:
                if (p_cls, q_cls) not in memo:
                    memo[p_cls, q_cls] = dispatch(p_cls, q_cls)
    memo[_Prepared, _Prepared] = NotImplemented


# Run while dynamo traces, not traced; marked once dynamo is imported, as mvn_kl above.
when_imported("torch._dynamo", lambda: torch.compiler.assume_constant_result(prepare_kl_dispatch))


def _label(dist: D.Distribution) -> str:
    name = base_class(dist).__name__
    return f"{name}({type(dist.base_dist).__name__})" if isinstance(dist, D.Independent) else name


def _missing_pair(q: D.Distribution, p: D.Distribution) -> str | None:
    """``"Q || P"`` for the pair torch has no formula for (for two ``Independent``, the pair of
    their base distributions, which torch's formula for them needs; for ``Independent`` and
    ``MultivariateNormal``, problayers' formula covers a diagonal Normal only), else ``None``."""
    if D.kl._dispatch_kl(type(q), type(p)) is NotImplemented:
        return f"{_label(q)} || {_label(p)}"
    if isinstance(q, D.Independent) and isinstance(p, D.Independent):
        return _missing_pair(q.base_dist, p.base_dist)
    for ind, mvn in ((q, p), (p, q)):
        if isinstance(ind, D.Independent) and isinstance(mvn, D.MultivariateNormal) and not _is_diagonal(ind):
            return f"{_label(q)} || {_label(p)}"
    return None


def _is_diagonal(dist: D.Independent) -> bool:
    return isinstance(dist.base_dist, D.Normal) and dist.reinterpreted_batch_ndims == 1


def exact_kl(q: D.Distribution, p: D.Distribution, option: str) -> torch.Tensor:
    """``torch.distributions.kl_divergence(q, p)`` (shape: ``q``'s ``batch_shape`` broadcast with
    ``p``'s), with a one-line error naming ``option`` (the argument that chose the exact KL)
    where torch has no formula for the pair. A formula that exists but fails (a dtype without a
    kernel, an ``Independent`` over other dimensions) raises its own error."""
    prepare_kl_dispatch()
    try:
        return D.kl_divergence(q, p)
    except NotImplementedError as err:
        pair = _missing_pair(q, p)
        if pair is None:
            raise
        raise NotImplementedError(
            f"{option}=True: torch.distributions has no KL formula for {pair}; register one with "
            f"torch.distributions.kl.register_kl, or use {option}=False (Monte Carlo)"
        ) from err


def kl_or_estimate(
    q: D.Distribution, p: D.Distribution, z: torch.Tensor | None = None, exact: bool = True
) -> torch.Tensor:
    """``KL(q || p)`` exactly where ``exact`` is set and torch has a formula for the pair, else
    its one-sample Monte Carlo estimate ``log q(z) - log p(z)`` at ``z``, a draw from ``q``.

    The VAE objectives' and evaluation's KL: a prior without a closed form (a mixture, the
    VampPrior) or a posterior without one (a flow) falls back without the user asking.

    Args:
        q: the posterior, batch ``B``, event ``E``.
        p: the prior, batch broadcastable with ``B``, event ``E``.
        z: the sample, shape ``B + E`` (or ``S + B + E``: then the estimate has shape ``S + B``);
            default ``None``: ``q``'s tensor value (:func:`~problayers.convert_to_tensor`, a
            tensor-coercible ``q``), taken only where the estimate is (an exact KL draws nothing).
        exact: try the exact KL first.

    Returns:
        shape ``B`` (broadcast with ``p``'s batch) where exact, else ``z``'s shape less ``E``.
    """
    if exact:
        prepare_kl_dispatch()  # torch's lookup cached: compiled code traces the formula
        try:
            return D.kl_divergence(q, p)
        except NotImplementedError:
            pass
    if z is None:
        z = convert_to_tensor(q)
    return q.log_prob(z) - p.log_prob(z)
