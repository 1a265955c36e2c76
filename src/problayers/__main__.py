"""``python -m problayers`` (and ``torchrun -m problayers``): the command line."""

from .cli import entry_point

entry_point()
