"""Experiment loggers for the :class:`~problayers.train.trainer.Trainer`: the interface it calls
and a TensorBoard one.

A logger is any object with ``log_scalars(step, scalars)``, ``log_epoch(epoch, record)`` and
``close()`` (:class:`Logger`). The trainer calls them on rank 0 only: ``log_scalars`` every
``log_every`` optimizer steps (and once more for an epoch's last steps) with the mean of the
training metrics over those steps, tagged ``train/<name>``, at the global step (counted over
the run's epochs, so a resumed run continues the count); ``log_epoch`` after each epoch's
checkpoint with its record (test metrics, seconds, ...); ``close`` when ``fit`` returns or
raises. A job adds what the trainer cannot know (e.g. pictures) from its ``on_epoch_end``
through the logger's own methods (:meth:`TensorBoardLogger.log_images`).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["LOGGERS", "Logger", "TensorBoardLogger", "check_available", "numeric_fields"]

#: The loggers a run can choose by name (``"none"``: no logger).
LOGGERS = ("none", "tensorboard")
#: What to install for each logger (named in the error when it is missing).
REQUIREMENTS = {"tensorboard": "tensorboard>=2.14"}


@runtime_checkable
class Logger(Protocol):
    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def numeric_fields(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of an epoch record but ``epoch`` itself (booleans are not numbers here)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "epoch" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def _summary_writer(what: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            f"{what}: needs the tensorboard package, which is not installed "
            f"(pip install '{REQUIREMENTS['tensorboard']}', or the extra: pip install 'problayers[vae]')"
        ) from None
    return SummaryWriter


def check_available(name: str, what: str | None = None) -> None:
    """Raise a one-line ``ValueError`` (naming ``what``, default ``logger {name!r}``) unless
    the logger ``name`` is known and its package importable."""
    what = what or f"logger {name!r}"
    if name not in LOGGERS:
        raise ValueError(f"{what}: expected one of {list(LOGGERS)}, got {name!r}")
    if name == "tensorboard":
        _summary_writer(what)


class TensorBoardLogger:
    """Writes TensorBoard event files into ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``).

    Scalars per log step under ``train/<name>`` at the global step; every numeric field of an
    epoch record under ``epoch/<field>`` at the epoch (1, 2, ...); images under the tags given.
    ``purge_step``: a run resumed after the optimizer step ``purge_step - 1`` hides the events
    a killed run wrote from that step on (those after its last checkpoint; TensorBoard's
    ``purge_step``), so its curves have no doubled tail.
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None, what: str | None = None):
        writer = _summary_writer(what or "TensorBoardLogger")
        self.log_dir = Path(log_dir)
        self.writer = writer(str(self.log_dir), purge_step=purge_step)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        for key, value in numeric_fields(record).items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def log_images(self, step: int, images: dict[str, Any]) -> None:
        """``images``: ``{tag: array}``, each ``(H, W)`` or ``(H, W, C)``, uint8 or floats in [0, 1]."""
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
