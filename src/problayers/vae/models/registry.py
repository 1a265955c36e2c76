"""Model configs and the registry that maps a config's ``name`` to a builder."""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ...layers.multivariate import TRIL_ORDERS
from ...train.trainerargs import plain_numbers
from ..objectives import OBJECTIVE_OPTIONS, OBJECTIVES, Objective
from .priors import PRIORS
from .vae import VAE

__all__ = [
    "INITS",
    "MODELS",
    "ModelConfig",
    "build_model",
    "make_objective",
    "model_skeleton",
    "register_model",
]

#: name -> builder ``ModelConfig -> VAE``.
MODELS: dict[str, Callable[[ModelConfig], VAE]] = {}
#: name -> the model's own defaults (``ModelConfig.for_model``), e.g. the MLP's 40 latents.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {}
#: name -> the ``ModelConfig`` fields its builder reads (the others must keep their defaults);
#: ``None``: not declared (a model registered without ``fields``), nothing is checked.
MODEL_FIELDS: dict[str, frozenset[str] | None] = {}
#: name -> the fields its builder reads only for the IAF posterior (``resnet``: ``hidden_size``,
#: its MADE's width); given with another posterior they are refused.
MODEL_IAF_FIELDS: dict[str, frozenset[str]] = {}
#: The most free bits (nats per latent dimension) a config takes: far above any KL a latent
#: dimension carries, and its floor times the latents stays a float32 number.
MAX_FREE_BITS = 1e4
#: Fields every model reads.
COMMON_FIELDS = frozenset({"name", "latent_size", "beta", "exact_kl", "init"})
#: The objective's fields (every builder passes them to ``make_objective``).
OBJECTIVE_FIELDS = frozenset({"objective", "num_samples", "kl_warmup_steps", "free_bits"})
#: Posterior families of the zoo: a Gaussian, or a Gaussian pushed through an IAF.
POSTERIORS = ("gaussian", "iaf")
#: How the command line imports a module that registers a model, prior or objective.
IMPORT_HINT = "problayers COMMAND --import MODULE"
#: Set while a saved config is read (:meth:`ModelConfig.from_dict`): a run trained before the
#: usage checks existed (an idle ``--flow-steps``, ``--objective iwae`` with one sample, which
#: trained the single-sample bound) loads, evaluates and resumes as it was trained.
_SAVED: contextvars.ContextVar[bool] = contextvars.ContextVar("problayers_saved_config", default=False)


#: The layers whose weights the initializers below set.
_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _keras_init(model: nn.Module) -> None:
    """Keras' defaults, as in TFP's example: Glorot-uniform weights, zero biases, for every
    convolution, transposed convolution and linear layer."""
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _he_init(model: nn.Module) -> None:
    """He et al. (2015): normal weights of variance ``gain**2 / fan_in``, zero biases, so that
    activations keep their scale through the depth. A layer followed (in an ``nn.Sequential``)
    by ``LeakyReLU(a)`` or ``ReLU`` gets ``torch.nn.init``'s gain for it, any other layer gain 1.
    ``fan_in`` is the number of inputs of each output: for a transposed convolution torch's
    ``fan_out`` of the weight (``in_channels * k * k``)."""
    slopes: dict[nn.Module, float] = {}  # layer -> negative slope of the activation after it
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for layer, nxt in itertools.pairwise(seq):
                if isinstance(nxt, (nn.LeakyReLU, nn.ReLU)):
                    slopes[layer] = getattr(nxt, "negative_slope", 0.0)
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            mode: Literal["fan_in", "fan_out"] = (
                "fan_out" if isinstance(module, nn.ConvTranspose2d) else "fan_in"
            )
            if module in slopes:
                nn.init.kaiming_normal_(module.weight, a=slopes[module], mode=mode, nonlinearity="leaky_relu")
            else:
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="linear")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


#: name -> ``model -> None`` (in place) run after the builder: ``"torch"`` keeps PyTorch's own
#: initialization of each layer, ``"keras"`` re-initializes as Keras (and so the TFP example) does,
#: ``"he"`` as He et al. for the model's (leaky) ReLUs.
INITS: dict[str, Callable[[nn.Module], None]] = {
    "torch": lambda model: None,
    "keras": _keras_init,
    "he": _he_init,
}


@dataclass(frozen=True)
class ModelConfig:
    """What defines a model's architecture and objective (saved with every checkpoint)."""

    name: str = "seed"
    latent_size: int = 16
    base_depth: int = 32
    beta: float = 1.0  # KL weight (beta-VAE)
    exact_kl: bool = False  # analytic KL instead of Monte Carlo at the sample
    init: str = "torch"  # a key of INITS
    #: how MultivariateNormalTriL reads its scale parameters (``layers.multivariate.TRIL_ORDERS``):
    #: TFP's order for new models; configs saved before the field existed mean ``"rows"``.
    tril_order: str = "tfp"
    # The zoo's choices (fields added later: a config saved before them means these defaults).
    hidden_size: int = 300  # width of an MLP model's hidden layers
    prior: str = "normal"  # a key of models.priors.PRIORS
    prior_components: int = 500  # mixture components / VampPrior pseudo-inputs
    posterior: str = "gaussian"  # one of POSTERIORS
    flow_steps: int = 2  # IAF steps on top of the Gaussian (posterior "iaf")
    objective: str = "elbo"  # a key of problayers.vae.objectives.OBJECTIVES
    num_samples: int = 1  # K of the IWAE / DReG objectives
    kl_warmup_steps: int = 0  # the KL weight rises linearly from 0 over this many steps
    free_bits: float = 0.0  # nats per latent dimension (ELBO only)

    @classmethod
    def for_model(cls, name: str, **given: Any) -> ModelConfig:
        """The config of model ``name``: its registered defaults, then ``given``. A field given
        that the config does not use (``flow_steps`` without an IAF posterior, ``hidden_size``
        for the seed model) is refused, even at its default value."""
        _check_name(name)
        config = cls(name=name, **{**MODEL_DEFAULTS[name], **given})
        for field in given:
            config._check_used(field)
            config._check_given(field)
        return config

    @classmethod
    def from_dict(cls, saved: dict) -> ModelConfig:
        """The config a saved ``dict`` (config.json, a checkpoint) describes. A config written
        before ``tril_order`` existed was trained with the row-by-row order, and keeps it."""
        if not isinstance(saved, dict):
            raise TypeError(f"model config: expected a dict, got {type(saved).__name__}")
        old = {"tril_order": "rows"} if saved.get("name", "seed") == "seed" else {}  # the zoo came later
        token = _SAVED.set(True)  # as it was trained: the usage checks are for new configs
        try:
            return cls(**{**old, **saved})
        finally:
            _SAVED.reset(token)

    def __post_init__(self) -> None:
        plain_numbers(self)
        _check_name(self.name)
        for field in ("latent_size", "base_depth"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}: expected a positive int, got {value!r}")
        beta = self.beta
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 <= beta < float("inf"):
            raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
        if not isinstance(self.exact_kl, bool):
            raise ValueError(f"exact_kl: expected true or false, got {self.exact_kl!r}")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {sorted(INITS)}, got {self.init!r}")
        if self.tril_order not in TRIL_ORDERS:
            raise ValueError(f"tril_order: expected one of {list(TRIL_ORDERS)}, got {self.tril_order!r}")
        self._check_zoo()

    def _check_zoo(self) -> None:
        for field in ("hidden_size", "prior_components", "flow_steps", "num_samples"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}: expected a positive int, got {value!r}")
        warm = self.kl_warmup_steps
        if not isinstance(warm, int) or isinstance(warm, bool) or not 0 <= warm < 2**63:
            raise ValueError(f"kl_warmup_steps: expected an int in 0..2**63 - 1, got {warm!r}")
        bits = self.free_bits
        if not isinstance(bits, (int, float)) or isinstance(bits, bool) or not 0 <= bits <= MAX_FREE_BITS:
            raise ValueError(
                f"free_bits: expected nats per latent dimension in [0, {MAX_FREE_BITS:g}], got {bits!r}"
            )
        for field, choices in (("prior", PRIORS), ("posterior", POSTERIORS), ("objective", OBJECTIVES)):
            if getattr(self, field) not in choices:
                own = (
                    ""
                    if choices is POSTERIORS
                    else f" (one of your own: import its module first; {IMPORT_HINT})"
                )
                raise ValueError(
                    f"{field}: expected one of {list(choices)}, got {getattr(self, field)!r}{own}"
                )
        if not self._objective_reads("num_samples") and self.num_samples != 1:
            raise ValueError(
                f"num_samples={self.num_samples}: needs objective {_readers('num_samples')}, "
                f"not {self.objective!r}"
            )
        if self.prior == "vamp" and self.posterior == "iaf":
            raise ValueError(
                "prior/posterior: 'vamp' with 'iaf': the VampPrior mixes Gaussian posteriors only"
            )
        if _SAVED.get():  # written before 2026-12-06, a run may hold an idle option or IWAE's K = 1
            return
        if self._objective_reads("num_samples", unlisted=False) and self.num_samples < 2:
            raise ValueError(
                f"num_samples: objective {self.objective!r} needs K >= 2 samples (with one it is the "
                f"ELBO), got {self.num_samples}"
            )
        if not self._objective_reads("free_bits") and self.free_bits:
            raise ValueError(
                f"free_bits={self.free_bits!r}: only the {_readers('free_bits')} objective uses it, "
                f"not {self.objective!r}"
            )
        for f in dataclasses.fields(ModelConfig):  # a field set away from its default must be used
            if getattr(self, f.name) != f.default:
                self._check_used(f.name)

    def _objective_reads(self, option: str, unlisted: bool = True) -> bool:
        """Whether the objective reads ``option`` (:data:`OBJECTIVE_OPTIONS`); ``unlisted`` for
        an objective not declared there (a user's own: nothing is refused)."""
        declared = OBJECTIVE_OPTIONS.get(self.objective)
        return unlisted if declared is None else option in declared

    def _check_used(self, field: str) -> None:
        """A one-line ``ValueError`` where this config does not use ``field`` (given, or set
        away from its default): not read by the model, or an option of a prior or posterior
        the config does not have."""
        value = getattr(self, field)
        reads = MODEL_FIELDS[self.name]
        if reads is not None and field not in reads:
            raise ValueError(
                f"{field}={value!r}: the {self.name!r} model does not use it "
                f"(its options: {sorted(reads - {'name'})})"
            )
        conditional = {
            "flow_steps": (self.posterior == "iaf", "only posterior 'iaf' uses it"),
            "prior_components": (self.prior != "normal", "only the priors 'mog' and 'vamp' use it"),
        }
        if field in conditional and not conditional[field][0]:
            raise ValueError(f"{field}={value!r}: {conditional[field][1]}")

    def _check_given(self, field: str) -> None:
        """A one-line ``ValueError`` for an option given that the config's other choices make
        idle where a model's registered default may set it (so a saved config is not refused:
        the zoo's ``exact_kl=True`` with the IWAE objective, ``resnet``'s ``hidden_size``)."""
        value = getattr(self, field)
        if field == "exact_kl" and not self._objective_reads("exact_kl"):
            raise ValueError(
                f"exact_kl={value!r}: only the {_readers('exact_kl')} objective uses it; "
                f"{self.objective!r} computes no KL term (evaluation's -ELBO takes the analytic KL "
                "where there is one)"
            )
        if field in MODEL_IAF_FIELDS.get(self.name, ()) and self.posterior != "iaf":
            raise ValueError(
                f"{field}={value!r}: the {self.name!r} model uses it only with posterior 'iaf' "
                f"(for the flow's network), not {self.posterior!r}"
            )


def _readers(option: str) -> str:
    """The objectives that read ``option``, for a message: ``'iwae' or 'dreg'``."""
    return " or ".join(repr(name) for name, reads in OBJECTIVE_OPTIONS.items() if option in reads)


def _check_name(name: Any) -> None:
    """A one-line ``ValueError`` for a model name not registered, with the closest name."""
    if name not in MODELS:
        close = difflib.get_close_matches(str(name).lower(), list(MODELS), n=1)
        # a model of one's own (register_model) exists only once its module is imported
        hint = (
            f" (did you mean {close[0]!r}?)"
            if close
            else f" (a model of your own: import its module first; {IMPORT_HINT})"
        )
        raise ValueError(
            f"name: expected a registered model ({', '.join(sorted(MODELS))}), got {name!r}{hint}"
        )


def register_model(
    name: str,
    fields: frozenset[str] | set[str] | None = None,
    iaf_fields: frozenset[str] | set[str] = frozenset(),
    **defaults: Any,
) -> Callable[[Callable[[ModelConfig], VAE]], Callable[[ModelConfig], VAE]]:
    """Decorator: make ``builder`` available as ``ModelConfig(name=name)``.

    Args:
        name: the model's name (``problayers train --model NAME``).
        fields: the ``ModelConfig`` fields the builder reads beyond :data:`COMMON_FIELDS` and
            the objective's; a config that sets another one is refused. Default ``None``: not
            declared, no field is refused.
        iaf_fields: those of ``fields`` read only with the IAF posterior (refused when given
            with another one).
        defaults: the model's own defaults (:meth:`ModelConfig.for_model`).

    A model has only ``ModelConfig``'s fields (``latent_size``, ``hidden_size``, ...); ``fields``
    and ``defaults`` naming another are refused. A run's ``config.json`` names its model, so the
    module that registers it must be imported before the run is loaded or resumed.
    """
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted((set(fields or ()) | set(iaf_fields) | set(defaults)) - known)
    if unknown:
        raise ValueError(
            f"register_model({name!r}): {unknown} are not ModelConfig fields; it has {sorted(known)}"
        )

    def wrap(builder: Callable[[ModelConfig], VAE]) -> Callable[[ModelConfig], VAE]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        MODEL_DEFAULTS[name] = dict(defaults)
        MODEL_IAF_FIELDS[name] = frozenset(iaf_fields)
        declared = None if fields is None else frozenset(fields) | frozenset(defaults)
        MODEL_FIELDS[name] = None if declared is None else COMMON_FIELDS | OBJECTIVE_FIELDS | declared
        return builder

    return wrap


def make_objective(cfg: ModelConfig) -> Objective:
    """The objective ``cfg`` names, with its KL weight, warm-up, free bits and samples."""
    return OBJECTIVES[cfg.objective](
        exact_kl=cfg.exact_kl,
        num_samples=cfg.num_samples,
        beta=cfg.beta,
        kl_warmup_steps=cfg.kl_warmup_steps,
        free_bits=cfg.free_bits,
    )


def model_skeleton(cfg: ModelConfig) -> nn.Module:
    """The model ``cfg`` describes on the meta device: its state dict's names and shapes, with
    no memory. A file's weights are checked against it before the model is built: a config of
    a few bytes (``latent_size`` 20000) can ask for terabytes. A user's builder that reads values
    while it builds (``.item()``: torch's orthogonal parametrization) cannot build there: its
    model is built for real, as before this check existed."""
    try:
        with torch.device("meta"):
            return MODELS[cfg.name](cfg)
    except Exception:  # .item(), .tolist(), .numpy() of a meta tensor; a real error recurs below
        return build_model(cfg)


def build_model(cfg: ModelConfig) -> VAE:
    """The model ``cfg`` describes (on the CPU, float32), initialized as ``cfg.init`` says."""
    model = MODELS[cfg.name](cfg)
    if not isinstance(model, VAE):
        raise TypeError(f"model {cfg.name!r}: its builder returned a {type(model).__name__}, expected a VAE")
    INITS[cfg.init](model)
    return model
