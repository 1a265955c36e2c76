"""The VAE toolkit: model configs and the registry of architectures (:mod:`problayers.vae.models`),
MNIST (:mod:`~problayers.vae.data`), evaluation (ELBO, IWAE), pictures and the training job
(:mod:`~problayers.vae.experiment`). Built on the library and on :mod:`problayers.train`."""

from .evaluation import evaluate, iwae_log_likelihood
from .models import MODELS, VAE, ModelConfig, build_model, register_model, vae_loss

__all__ = [
    "MODELS",
    "VAE",
    "ModelConfig",
    "build_model",
    "evaluate",
    "iwae_log_likelihood",
    "register_model",
    "vae_loss",
]
