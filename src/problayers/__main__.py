"""``python -m problayers`` (and ``torchrun -m problayers``): the command line."""

import sys

from .cli import main

sys.exit(main())
