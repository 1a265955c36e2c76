"""Model configs and the registry that maps a config's ``name`` to a builder."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ...layers.multivariate import TRIL_ORDERS
from .vae import VAE

__all__ = ["INITS", "MODELS", "ModelConfig", "build_model", "register_model"]

#: name -> builder ``ModelConfig -> VAE``.
MODELS: dict[str, Callable[[ModelConfig], VAE]] = {}


def _keras_init(model: nn.Module) -> None:
    """Keras' defaults, as in TFP's example: Glorot-uniform weights, zero biases, for every
    convolution, transposed convolution and linear layer."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


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

    @classmethod
    def from_dict(cls, saved: dict) -> ModelConfig:
        """The config a saved ``dict`` (config.json, a checkpoint) describes. A config written
        before ``tril_order`` existed was trained with the row-by-row order, and keeps it."""
        if not isinstance(saved, dict):
            raise TypeError(f"model config: expected a dict, got {type(saved).__name__}")
        return cls(**{"tril_order": "rows", **saved})

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"model name: expected one of {sorted(MODELS)}, got {self.name!r}")
        for field in ("latent_size", "base_depth"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}: expected a positive int, got {value!r}")
        if not isinstance(self.beta, (int, float)) or isinstance(self.beta, bool) or self.beta < 0:
            raise ValueError(f"beta: expected a number >= 0, got {self.beta!r}")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {sorted(INITS)}, got {self.init!r}")
        if self.tril_order not in TRIL_ORDERS:
            raise ValueError(f"tril_order: expected one of {list(TRIL_ORDERS)}, got {self.tril_order!r}")


def register_model(name: str) -> Callable[[Callable[[ModelConfig], VAE]], Callable[[ModelConfig], VAE]]:
    """Decorator: make ``builder`` available as ``ModelConfig(name=name)``."""

    def wrap(builder: Callable[[ModelConfig], VAE]) -> Callable[[ModelConfig], VAE]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return wrap


def build_model(cfg: ModelConfig) -> VAE:
    """The model ``cfg`` describes (on the CPU, float32), initialized as ``cfg.init`` says."""
    model = MODELS[cfg.name](cfg)
    INITS[cfg.init](model)
    return model
