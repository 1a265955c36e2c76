"""``VariationalGaussianProcess``: a sparse variational Gaussian process layer
(``tfp.layers.VariationalGaussianProcess``; Titsias 2009, Hensman et al. 2013).

A GP prior ``f ~ GP(mean_fn, k)`` with the exponentiated quadratic (RBF) kernel ``k(x, y) =
amplitude^2 exp(-|x - y|^2 / (2 length_scale^2))`` is summarized by its values ``u = f(Z)`` at
``M`` learnable inducing points ``Z``: prior ``p(u) = N(mean_fn(Z), K_ZZ)`` and variational
posterior ``q(u) = N(m, S S^T)`` (``S`` lower-triangular with a positive diagonal). For inputs
``x``, with ``W = (K_ZZ + jitter I)^-1 K_Zx``, the predictive distribution of ``f(x)`` is
Gaussian with

    mean = mean_fn(x) + W^T (m - mean_fn(Z))
    cov  = K_xx - W^T (K_ZZ - S S^T) W

(TFP's formula: the jitter enters the solves, not the ``K_ZZ`` between them), and the layer's
output adds the (learnable) observation noise variance to its diagonal, as TFP's
``predictive_noise_variance``. The joint covariance gets ``jitter`` on its diagonal too before its
Cholesky factorization; the prior ``p(u)`` is ``N(mean_fn(Z), K_ZZ + jitter I)``. Each forward
records ``kl_weight * KL(q(u) || p(u))`` (``torch.distributions.kl_divergence`` of the two
``MultivariateNormal`` s) with
:func:`~problayers.set_added_loss`: ``-output.log_prob(y).mean() + collect_losses(model)`` is
then the predictive-log-likelihood objective (Jankowiak et al. 2020) with ``kl_weight = 1 /
num_train_examples``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from ..coercible import as_coercible
from ..convert import check_convert_fn
from ..kl import mvn_kl
from ..losses import added_losses_enabled, init_added_losses, set_added_loss
from ..numerics import at_least_zero, inverse_softplus
from ._args import boolean, floating_dtype, non_negative_number, positive_int, positive_number
from .base import tensor_input

__all__ = ["VariationalGaussianProcess"]


class VariationalGaussianProcess(nn.Module):
    """Sparse variational GP layer: inducing points, an RBF kernel, the predictive over the batch.

    See the module doc for the model. Differences from TFP: the kernel is the RBF kernel with a
    learnable amplitude and length scale (no ``kernel_provider``); one output (TFP's
    ``event_shape=(1,)``); the KL is recorded as an added loss (TFP leaves it to
    ``variational_loss``); the output is the marginal predictive per example (``joint=False``,
    as a regression head) or, as TFP's ``VariationalGaussianProcess`` distribution over the
    batch's index points, the joint ``MultivariateNormal`` (``joint=True``).

    Args:
        input_dim: ``d``, the inputs' features.
        num_inducing_points: ``M``, the number of inducing points.
        inducing_points: their initial locations, shape ``(M, d)`` (default ``None``: standard
            normal draws).
        mean_fn: ``"zero"`` (default), ``"constant"`` (a learnable constant, initially 0) or a
            callable ``(N, d) -> (N,)`` (an ``nn.Module`` one is trained with the layer).
        amplitude: the kernel's initial amplitude (default 1).
        length_scale: the kernel's initial length scale (default 1).
        observation_noise_variance: the initial observation noise variance added to the
            predictive variance (default ``1e-2``).
        variational_scale: the initial diagonal of ``S`` (default 1: ``q(u)`` starts at ``N(0,
            I)``, the mean ``m`` at 0).
        jitter: added to the covariance diagonals before factorizing (default ``1e-6``).
        joint: output the joint ``MultivariateNormal`` over the batch (default ``False``: the
            independent marginals).
        kl_weight: the recorded added loss is ``kl_weight * KL(q(u) || p(u))`` (default 1; pass
            ``1 / num_train_examples`` with a batch-mean data term).
        convert_to_tensor_fn: how the output becomes a tensor (default ``"auto"``: a sample; see
            :func:`~problayers.as_coercible`).
        dtype: the parameters' dtype (default ``None``: ``torch.get_default_dtype()``).

    Input: ``(*B, d)`` (``(N, d)`` with ``joint=True``). Output: a tensor-coercible
    ``Independent(Normal(mean, stddev), 1)`` with ``batch_shape`` ``B`` and ``event_shape``
    ``(1,)`` (``y`` of shape ``(*B, 1)``); with ``joint=True`` a ``MultivariateNormal`` with
    ``batch_shape`` ``()`` and ``event_shape`` ``(N,)``. Each forward records ``kl_weight * KL``
    as an added loss (:func:`~problayers.collect_losses`).

    Example::

        >>> gp = pl.VariationalGaussianProcess(2, num_inducing_points=8, kl_weight=1 / 100)
        >>> out = gp(torch.zeros(5, 2))
        >>> out.batch_shape, out.event_shape, pl.collect_losses(gp).shape
        (torch.Size([5]), torch.Size([1]), torch.Size([]))
        >>> gp.joint = True
        >>> gp(torch.zeros(5, 2)).event_shape
        torch.Size([5])
    """

    # Set with setattr in __init__ (raw, before the softplus).
    untransformed_amplitude: nn.Parameter
    untransformed_length_scale: nn.Parameter
    untransformed_observation_noise_variance: nn.Parameter

    def __init__(
        self,
        input_dim: int,
        num_inducing_points: int,
        inducing_points: torch.Tensor | None = None,
        mean_fn: str | Callable[[torch.Tensor], torch.Tensor] = "zero",
        amplitude: float = 1.0,
        length_scale: float = 1.0,
        observation_noise_variance: float = 1e-2,
        variational_scale: float = 1.0,
        jitter: float = 1e-6,
        joint: bool = False,
        kl_weight: float | torch.Tensor = 1.0,
        convert_to_tensor_fn: str | Callable = "auto",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        init_added_losses(self)
        self.input_dim = positive_int(input_dim, "input_dim")
        self.num_inducing_points = positive_int(num_inducing_points, "num_inducing_points")
        dtype = floating_dtype(dtype)
        m, d = self.num_inducing_points, self.input_dim
        if inducing_points is None:
            z = torch.randn(m, d, dtype=dtype)
        elif not isinstance(inducing_points, torch.Tensor) or tuple(inducing_points.shape) != (m, d):
            shape = tuple(inducing_points.shape) if isinstance(inducing_points, torch.Tensor) else None
            raise ValueError(f"inducing_points: expected a tensor of shape ({m}, {d}), got {shape}")
        else:
            z = inducing_points.detach().to(dtype).clone()
        self.inducing_points = nn.Parameter(z)  # Z: (M, d)
        if isinstance(mean_fn, str):
            if mean_fn not in ("zero", "constant"):
                raise ValueError(f"mean_fn: expected 'zero', 'constant' or a callable, got {mean_fn!r}")
            self.mean_constant = nn.Parameter(torch.zeros((), dtype=dtype)) if mean_fn == "constant" else None
            self.mean_fn = None
        elif callable(mean_fn):
            self.mean_constant, self.mean_fn = None, mean_fn
        else:
            raise TypeError(
                f"mean_fn: expected 'zero', 'constant' or a callable, got {type(mean_fn).__name__}"
            )
        for name, value in (
            ("amplitude", amplitude),
            ("length_scale", length_scale),
            ("observation_noise_variance", observation_noise_variance),
        ):
            raw = torch.tensor(inverse_softplus(positive_number(value, name)), dtype=dtype)
            setattr(self, f"untransformed_{name}", nn.Parameter(raw))
        self.variational_loc = nn.Parameter(torch.zeros(m, dtype=dtype))  # m: (M,)
        diag = torch.full(
            (m,), inverse_softplus(positive_number(variational_scale, "variational_scale")), dtype=dtype
        )
        self.untransformed_variational_scale = nn.Parameter(torch.diag(diag))  # (M, M), lower part used
        self.jitter = float(non_negative_number(jitter, "jitter"))
        self.joint = boolean(joint, "joint")
        self.kl_weight = non_negative_number(kl_weight, "kl_weight")
        if not (callable(convert_to_tensor_fn) or isinstance(convert_to_tensor_fn, str)):
            raise TypeError(
                f"convert_to_tensor_fn: expected a name or a callable, got {convert_to_tensor_fn!r}"
            )
        self.convert_to_tensor_fn = check_convert_fn(convert_to_tensor_fn)  # a name: a known one

    # -- parameters ------------------------------------------------------------------------------
    @property
    def amplitude(self) -> torch.Tensor:
        return F.softplus(self.untransformed_amplitude)

    @property
    def length_scale(self) -> torch.Tensor:
        return F.softplus(self.untransformed_length_scale)

    @property
    def observation_noise_variance(self) -> torch.Tensor:
        return F.softplus(self.untransformed_observation_noise_variance)

    @property
    def variational_scale_tril(self) -> torch.Tensor:
        """``S``: the strict lower triangle as stored, the diagonal through a softplus (+ eps)."""
        raw = self.untransformed_variational_scale
        diag = torch.finfo(raw.dtype).eps + F.softplus(raw.diagonal())
        return torch.tril(raw, -1) + torch.diag_embed(diag)  # (M, M)

    def kernel(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The RBF kernel matrix ``k(x1, x2)``: ``(N1, d), (N2, d) -> (N1, N2)``."""
        a, b = x1 / self.length_scale, x2 / self.length_scale  # (N1, d), (N2, d)
        sq = a.square().sum(-1)[:, None] + b.square().sum(-1)[None, :] - 2 * a @ b.mT  # |a - b|^2
        return self.amplitude.square() * torch.exp(-0.5 * at_least_zero(sq))  # (N1, N2)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The prior mean function at ``x``: ``(N, d) -> (N,)``."""
        if self.mean_fn is not None:
            mean = self.mean_fn(x)
            if not isinstance(mean, torch.Tensor) or mean.shape != x.shape[:1]:
                got = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
                raise ValueError(f"mean_fn: expected a tensor of shape {tuple(x.shape[:1])}, got {got}")
            return mean
        if self.mean_constant is not None:
            return self.mean_constant.expand(x.shape[0])
        return x.new_zeros(x.shape[0])

    def _prior_tril(self, kzz: torch.Tensor | None = None) -> torch.Tensor:
        """``L = cholesky(K_ZZ + jitter I)``: ``(M, M)`` (``kzz``: ``K_ZZ`` if already computed)."""
        z = self.inducing_points
        kzz = self.kernel(z, z) if kzz is None else kzz  # (M, M)
        eye = torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
        return torch.linalg.cholesky(kzz + self.jitter * eye)  # L: (M, M)

    def prior(self) -> D.MultivariateNormal:
        """``p(u) = N(mean_fn(Z), K_ZZ + jitter I)``, batch ``()``, event ``(M,)``."""
        return D.MultivariateNormal(self.mean(self.inducing_points), scale_tril=self._prior_tril())

    def variational_distribution(self) -> D.MultivariateNormal:
        """``q(u) = N(m, S S^T)``, batch ``()``, event ``(M,)``."""
        return D.MultivariateNormal(self.variational_loc, scale_tril=self.variational_scale_tril)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> D.Distribution:
        d = self.input_dim
        x = tensor_input("VariationalGaussianProcess", x)
        if x.dim() == 0 or x.shape[-1] != d or (self.joint and x.dim() != 2):
            shape = tuple(x.shape)
            want = f"(N, {d})" if self.joint else f"(..., {d})"
            raise ValueError(f"VariationalGaussianProcess: expected input of shape {want}, got {shape}")
        z = self.inducing_points
        with torch.autocast(x.device.type, enabled=False):  # Cholesky maths in the parameters' dtype
            batch = x.shape[:-1]
            xf = x.reshape(-1, d).to(z.dtype)  # (N, d)
            kzz = self.kernel(z, z)  # (M, M)
            L = self._prior_tril(kzz)  # (M, M)
            A = torch.linalg.solve_triangular(L, self.kernel(z, xf), upper=False)  # L^-1 K_Zx: (M, N)
            W = torch.linalg.solve_triangular(L.mT, A, upper=True)  # (K_ZZ + jI)^-1 K_Zx: (M, N)
            # TFP's predictive covariance: K_xx - W^T (K_ZZ - S S^T) W, the jitter in the solves
            # only (W^T K_ZZ W, not A^T A = W^T (K_ZZ + jI) W).
            KW = kzz @ W  # (M, N)
            S = self.variational_scale_tril  # (M, M)
            mean_z = self.mean(z)  # (M,)
            loc = self.mean(xf) + W.mT @ (self.variational_loc - mean_z)  # (N,)
            SW = S.mT @ W  # (M, N)
            noise = self.observation_noise_variance
            if self.joint:
                cov = self.kernel(xf, xf) - W.mT @ KW + SW.mT @ SW  # (N, N)
                eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
                tril = torch.linalg.cholesky(cov + (noise + self.jitter) * eye)
                dist: D.Distribution = D.MultivariateNormal(loc, scale_tril=tril, validate_args=False)
            else:
                var = self.amplitude.square() - (W * KW).sum(0) + SW.square().sum(0) + noise  # (N,)
                std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
                normal = D.Normal(loc.view(*batch, 1), std.view(*batch, 1), validate_args=False)
                dist = D.Independent(normal, 1)
            if added_losses_enabled():
                kl = mvn_kl(self.variational_loc, S, mean_z, L)  # KL(q(u) || p(u))
                set_added_loss(self, "kl_divergence", self.kl_weight * kl)
        return as_coercible(dist, self.convert_to_tensor_fn)

    def extra_repr(self) -> str:
        mean = (
            "callable"
            if self.mean_fn is not None
            else "constant"
            if self.mean_constant is not None
            else "zero"
        )
        return (
            f"input_dim={self.input_dim}, num_inducing_points={self.num_inducing_points}, mean_fn={mean}, "
            f"jitter={self.jitter:.3g}, joint={self.joint}, kl_weight={float(self.kl_weight):.3g}"
        )
