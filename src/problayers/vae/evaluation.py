"""Evaluation maths of the VAE toolkit: the ELBO and the importance-weighted bound (IWAE).

Everything here is generic over a latent-variable model given as three things, so it does not
depend on any model class:

* ``encode(x) -> q(z|x)``: for ``x`` of shape ``(B, *X)`` a ``torch.distributions.Distribution``
  with ``batch_shape (B,)`` and ``event_shape (D,)``;
* ``decode(z) -> p(x|z)``: for ``z`` of shape ``(N, D)`` (always 2-D) a ``Distribution`` with
  ``batch_shape (N,)`` and ``event_shape X``;
* ``prior``: a ``Distribution`` with ``event_shape (D,)`` and ``batch_shape ()``.

Densities are only ever evaluated through ``torch.distributions`` (``log_prob``,
``rsample``/``sample``, ``kl_divergence``). Samples are reparameterized (``rsample``) when the
posterior supports it, so :func:`elbo_terms` and :func:`iwae_log_likelihood` can also be
differentiated; :func:`evaluate` runs under ``torch.no_grad()``.

The bounds, for one example ``x`` with ``z_k ~ q(z|x)``::

    log p(x) >= ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))
    log p(x) >= IWAE_K = E[ log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) ]

``IWAE_1`` is the ELBO; ``IWAE_K`` rises with ``K`` to ``log p(x)``.

All values are in nats per example; "bits per dim" divides by ``prod(X) * ln 2``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.distributions as D

from ..kl import kl_or_estimate
from ..numerics import logsumexp
from ..precision import wide_dtype
from .objectives import check_support, data_log_prob

__all__ = ["BOUNDS", "elbo_terms", "evaluate", "format_table", "iwae_log_likelihood", "non_finite_bounds"]

Encoder = Callable[[torch.Tensor], D.Distribution]
Decoder = Callable[[torch.Tensor], D.Distribution]
Checked = str | None  # the data's name where it is checked against the decoder's support


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``, else ``ValueError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_data(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape (B, *X), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{name}: expected a tensor of shape (B, *X) with at least 2 dims, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():  # e.g. the uint8 images of load_mnist
        raise ValueError(
            f"{name}: expected float data (binarized images: see problayers.vae.data.binarize_fixed), "
            f"got {x.dtype}"
        )
    return x


def _posterior(encode: Encoder, x: torch.Tensor) -> D.Distribution:
    """``q(z|x)``, checked against the encoder's contract (batch (B,), event (D,))."""
    q = encode(x)
    batch = x.shape[0]
    if not isinstance(q, D.Distribution):
        raise ValueError(f"encode(x): expected a torch Distribution, got {type(q).__name__}")
    if tuple(q.batch_shape) != (batch,) or len(q.event_shape) != 1:
        raise ValueError(
            f"encode(x) for x of shape {tuple(x.shape)}: expected a distribution with batch_shape "
            f"({batch},) and event_shape (D,), got batch_shape {tuple(q.batch_shape)} and event_shape "
            f"{tuple(q.event_shape)}"
        )
    return q


def _check_prior(prior: object, q: D.Distribution) -> D.Distribution:
    """``prior``, checked against its contract: batch ``()``, the posterior's event ``(D,)``."""
    if not isinstance(prior, D.Distribution):
        called = " (a model's prior is prior(): call it)" if callable(prior) else ""
        raise ValueError(f"prior: expected a torch Distribution, got {type(prior).__name__}{called}")
    if tuple(prior.batch_shape) != () or prior.event_shape != q.event_shape:
        raise ValueError(
            f"prior: expected a distribution with batch_shape () and the posterior's event_shape "
            f"{tuple(q.event_shape)} (an Independent over the latents), got batch_shape "
            f"{tuple(prior.batch_shape)} and event_shape {tuple(prior.event_shape)}"
        )
    return prior


def _draw(q: D.Distribution, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
    """A reparameterized sample when ``q`` has one, else a plain sample."""
    shape = torch.Size(sample_shape)
    return q.rsample(shape) if q.has_rsample else q.sample(shape)


def _decoder_log_prob(
    decode: Decoder, z: torch.Tensor, x: torch.Tensor, k: int = 1, check: Checked = None
) -> torch.Tensor:
    """``log p(x|z)`` for ``z`` of shape ``(N, D)``, ``N = k * B`` sample-major, and ``x`` of
    shape ``(B, *X)``: shape ``(N,)``. ``check``: ``x``'s name where it must lie in the
    decoder's support (one host sync)."""
    px = decode(z)
    n = z.shape[0]
    if not isinstance(px, D.Distribution):
        raise ValueError(f"decode(z): expected a torch Distribution, got {type(px).__name__}")
    if tuple(px.batch_shape) != (n,):
        raise ValueError(
            f"decode(z) for z of shape {tuple(z.shape)}: expected a distribution with batch_shape "
            f"({n},) and event_shape X, got batch_shape {tuple(px.batch_shape)}"
        )
    if check is not None and tuple(x.shape[1:]) == tuple(px.event_shape):  # else data_log_prob says
        check_support(px, x, check, k)  # before log_prob: a Categorical's would gather out of range
    return data_log_prob(px, x, k)  # (N,)


# --------------------------------------------------------------------------- bounds


def elbo_terms(
    encode: Encoder,
    decode: Decoder,
    prior: D.Distribution,
    x: torch.Tensor,
    *,
    exact_kl: bool = True,
) -> dict[str, torch.Tensor]:
    """The per-example terms of the negative ELBO, from one sample ``z ~ q(z|x)`` per example.

    Args:
        encode, decode, prior: the model (see the module docstring).
        x: data of shape ``(B, *X)``.
        exact_kl: use ``torch.distributions.kl_divergence(q, prior)`` when a formula is registered
            for the pair; otherwise (or when ``False``) the single-sample Monte Carlo estimate
            ``log q(z|x) - log p(z)`` at the same ``z`` as the reconstruction term.

    Returns:
        A dict of tensors of shape ``(B,)`` (nats): ``"recon"`` = ``-log p(x|z)``, ``"kl"`` and
        ``"neg_elbo"`` = ``recon + kl``.

    Raises:
        ValueError: ``x`` is not float ``(B, *X)`` data in the decoder's support (one host sync
            checks it: images in 0..255 for a Bernoulli decoder would give a negative -ELBO).
    """
    x = _check_data("x", x)
    return _elbo_terms(encode, decode, prior, x, exact_kl, check="x")


def _elbo_terms(
    encode: Encoder,
    decode: Decoder,
    prior: D.Distribution,
    x: torch.Tensor,
    exact_kl: bool,
    check: Checked,
) -> dict[str, torch.Tensor]:
    batch = x.shape[0]
    q = _posterior(encode, x)  # batch (B,), event (D,)
    prior = _check_prior(prior, q)  # batch (), event (D,)
    z = _draw(q)  # (B, D)
    recon = -_decoder_log_prob(decode, z, x, check=check)  # (B,)

    kl = kl_or_estimate(q, prior, z, exact_kl).expand(batch)  # (B,) (the prior's batch is ())
    return {"recon": recon, "kl": kl, "neg_elbo": recon + kl}


def iwae_log_likelihood(
    encode: Encoder,
    decode: Decoder,
    prior: D.Distribution,
    x: torch.Tensor,
    num_samples: int,
    *,
    chunk_size: int = 256,
) -> torch.Tensor:
    """The importance-weighted estimate of ``log p(x)`` (a lower bound in expectation).

    ``log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)`` with ``z_k ~ q(z|x)`` and ``K = num_samples``.
    The samples are drawn in chunks of at most ``chunk_size`` per example (the last chunk may be
    smaller); each chunk is decoded in one call on ``(k * B, D)`` latents and folded into a running
    ``logsumexp``, so under ``torch.no_grad()`` (as :func:`evaluate` runs it) memory is bounded
    by ``chunk_size`` whatever ``K`` is; with autograd on, every chunk's graph is kept for the
    backward pass, and memory grows with ``K``. ``K = 1`` is a single-sample estimate of the
    ELBO; as ``K`` grows the estimate rises to ``log p(x)``.

    Args:
        encode, decode, prior: the model (see the module docstring).
        x: data of shape ``(B, *X)``.
        num_samples: ``K >= 1``, the number of importance samples per example.
        chunk_size: ``>= 1``, the most samples per example decoded at once.

    Returns:
        A tensor of shape ``(B,)`` (nats).

    Raises:
        ValueError: as :func:`elbo_terms`, or ``num_samples``/``chunk_size`` below 1.
    """
    num_samples = _check_int("num_samples", num_samples, 1)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    x = _check_data("x", x)
    return _iwae_log_likelihood(encode, decode, prior, x, num_samples, chunk_size, check="x")


def _iwae_log_likelihood(
    encode: Encoder,
    decode: Decoder,
    prior: D.Distribution,
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int,
    check: Checked,
) -> torch.Tensor:
    batch = x.shape[0]
    q = _posterior(encode, x)  # batch (B,), event (D,)
    prior = _check_prior(prior, q)  # batch (), event (D,)

    running = None  # (B,): logsumexp of the log-weights seen so far
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        z = _draw(q, (k,))  # (k, B, D)
        log_q = q.log_prob(z)  # (k, B)
        log_prior = prior.log_prob(z)  # (k, B)
        z_flat = z.reshape(k * batch, z.shape[-1])  # (k*B, D)
        log_lik = _decoder_log_prob(decode, z_flat, x, k, check if start == 0 else None)  # (k*B,)
        log_w = log_lik.reshape(k, batch) + log_prior - log_q  # (k, B)
        chunk = logsumexp(log_w, dim=0)  # (B,)
        running = chunk if running is None else logsumexp(torch.stack([running, chunk]), dim=0)
    assert running is not None  # num_samples >= 1: the loop ran
    return running - math.log(num_samples)  # (B,)


# --------------------------------------------------------------------------- whole data set


def evaluate(
    encode: Encoder,
    decode: Decoder,
    prior: D.Distribution,
    images: torch.Tensor,
    *,
    batch_size: int = 500,
    iwae_samples: int = 0,
    chunk_size: int = 256,
    exact_kl: bool = True,
    progress: bool = False,
) -> dict:
    """ELBO (and optionally the IWAE bound) of a model over a whole data set, under ``no_grad``.

    Put the model in ``eval()`` mode first; the sampling uses torch's global generator (seed it
    for reproducible numbers).

    Args:
        encode, decode, prior: the model (see the module docstring).
        images: the data set, shape ``(N, *X)`` (already binarized floats), on the model's device.
        batch_size: ``>= 1``, examples per batch.
        iwae_samples: ``K >= 0``; ``0`` skips the IWAE bound.
        chunk_size: ``>= 1``, importance samples per example decoded at once (see
            :func:`iwae_log_likelihood`).
        exact_kl: see :func:`elbo_terms`.
        progress: show a ``tqdm`` progress bar.

    Returns:
        A dict of plain Python numbers: ``"neg_elbo"``, ``"recon"``, ``"kl"`` (means over the
        examples, nats), ``"neg_elbo_bits_per_dim"`` (``neg_elbo / (prod(X) * ln 2)``), and when
        ``iwae_samples > 0`` also ``"iwae_nll"`` (mean of ``-log p_K(x)``), ``"iwae_nll_bits_per_dim"``
        and ``"iwae_samples"``; plus ``"num_examples"`` (``N``).
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    iwae_samples = _check_int("iwae_samples", iwae_samples, 0)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    images = _check_data("images", images)
    num_examples = images.shape[0]
    if num_examples == 0:
        raise ValueError(f"images: expected at least one example, got shape {tuple(images.shape)}")
    dims = math.prod(images.shape[1:])
    nats_to_bits_per_dim = 1.0 / (dims * math.log(2.0))

    device = images.device
    dtype = wide_dtype(device)  # sums over a whole test set
    names = ["neg_elbo", "recon", "kl"] + (["iwae_nll"] if iwae_samples > 0 else [])
    sums = torch.zeros(len(names), dtype=dtype, device=device)  # (M,), one per metric

    bar = None
    if progress:
        from tqdm.auto import tqdm

        passes = 2 if iwae_samples > 0 else 1
        bar = tqdm(total=passes * num_examples, unit="ex", desc="evaluate", leave=False)
    try:
        with torch.no_grad():
            # The ELBO over all batches first, then the IWAE bound: the ELBO draws the same
            # samples whatever the K (a run's -ELBO does not change with --iwae-samples), and the
            # IWAE's samples follow them in the one random stream.
            for start in range(0, num_examples, batch_size):
                x = images[start : start + batch_size]  # (b, *X)
                # each batch against its decoder's support (the IWAE's pass reads the same data)
                terms = _elbo_terms(encode, decode, prior, x, exact_kl, "images")
                columns = [terms["neg_elbo"], terms["recon"], terms["kl"]]  # each (b,)
                sums[:3] += torch.stack([c.to(dtype).sum() for c in columns])  # (3,)
                if bar is not None:
                    bar.update(x.shape[0])
            for start in range(0, num_examples if iwae_samples > 0 else 0, batch_size):
                x = images[start : start + batch_size]  # (b, *X)
                log_px = _iwae_log_likelihood(encode, decode, prior, x, iwae_samples, chunk_size, None)
                sums[3] -= log_px.to(dtype).sum()  # log_px: (b,)
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()

    means = (sums / num_examples).tolist()  # the one device -> host transfer
    results: dict = dict(zip(names, means, strict=True))
    results["neg_elbo_bits_per_dim"] = results["neg_elbo"] * nats_to_bits_per_dim
    if iwae_samples > 0:
        results["iwae_nll_bits_per_dim"] = results["iwae_nll"] * nats_to_bits_per_dim
        results["iwae_samples"] = iwae_samples
    results["num_examples"] = num_examples
    return results


#: The bounds' names in the table and in messages.
BOUNDS = {"neg_elbo": "-ELBO", "iwae_nll": "IWAE NLL"}


def non_finite_bounds(results: dict) -> list[str]:
    """``"-ELBO inf"``-style names of the bounds in ``results`` that are not finite (a diverged
    or damaged model: a number no script should take for a result)."""
    return [
        f"{name} {results[k]}" for k, name in BOUNDS.items() if k in results and not math.isfinite(results[k])
    ]


def format_table(results: dict) -> str:
    """A small aligned text table of the metrics in ``results`` (as returned by :func:`evaluate`).

    One row per metric present: name, value in nats, and bits/dim where ``results`` has it
    (``-`` otherwise). Missing metrics are left out.
    """
    rows = [("metric", "nats", "bits/dim")]
    specs = [
        ("neg_elbo", BOUNDS["neg_elbo"]),
        ("recon", "  reconstruction"),
        ("kl", "  KL"),
        ("iwae_nll", f"{BOUNDS['iwae_nll']} (K={results.get('iwae_samples', '?')})"),
    ]
    for key, label in specs:
        if key not in results:
            continue
        bits = results.get(f"{key}_bits_per_dim")
        rows.append((label, f"{results[key]:.4f}", "-" if bits is None else f"{bits:.5f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    if "num_examples" in results:
        lines.append(f"({results['num_examples']} examples)")
    return "\n".join(lines)
