"""VAE models: the container, the registry, and the registered architectures."""

from . import hierarchical as _hierarchical  # registers "hvae"
from . import mlp as _mlp  # registers "mlp"
from . import resnet as _resnet  # registers "resnet"
from . import seed as _seed  # registers "seed"
from .registry import MODELS, ModelConfig, build_model, model_skeleton, register_model
from .vae import VAE, vae_loss

del _hierarchical, _mlp, _resnet, _seed

__all__ = ["MODELS", "VAE", "ModelConfig", "build_model", "model_skeleton", "register_model", "vae_loss"]
