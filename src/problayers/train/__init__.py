"""The model-agnostic trainer (it knows nothing about VAEs): :class:`Trainer` and :func:`fit`,
atomic checkpoints, learning-rate schedules, weight averaging, data parallelism, the fast
training step and Keras' Adam update (for ported recipes). Depends on torch and the library;
the VAE toolkit (:mod:`problayers.vae`) is built on it."""

from .averaging import EMA
from .divergence import NonFiniteLossError
from .fastpath import fastest_defaults, make_train_step
from .keras_adam import KerasAdam
from .schedules import LR_SCHEDULES, make_scheduler
from .trainer import Trainer, TrainerConfig, fit

__all__ = [
    "EMA",
    "LR_SCHEDULES",
    "KerasAdam",
    "NonFiniteLossError",
    "Trainer",
    "TrainerConfig",
    "fastest_defaults",
    "fit",
    "make_scheduler",
    "make_train_step",
]
