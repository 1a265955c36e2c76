"""The VAE toolkit: model configs and the registry of architectures (:mod:`problayers.vae.models`),
MNIST (:mod:`~problayers.vae.data`), evaluation (ELBO, IWAE), pictures, the training job
(:mod:`~problayers.vae.experiment`) and shareable weights (:func:`save_pretrained`,
:func:`load_pretrained`). Built on the
library and on :mod:`problayers.train`."""

from .evaluation import evaluate, iwae_log_likelihood
from .models import MODELS, VAE, ModelConfig, build_model, register_model, vae_loss
from .pretrained import load_pretrained, save_pretrained

__all__ = [
    "MODELS",
    "VAE",
    "ModelConfig",
    "build_model",
    "evaluate",
    "iwae_log_likelihood",
    "load_pretrained",
    "register_model",
    "save_pretrained",
    "vae_loss",
]
