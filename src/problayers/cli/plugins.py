"""``--import MODULE``: modules of the user's own, imported before a command runs, so that the
models, priors and objectives they register (``register_model``, ``PRIORS``, ``OBJECTIVES``)
can be named on the command line and a run trained with them can be resumed, evaluated,
sampled and exported."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from ..train.errors import ProblayersError

__all__ = ["PluginError", "import_modules"]


class PluginError(ProblayersError):
    """A module named by ``--import`` could not be found or raised while imported."""


def import_modules(names: Sequence[str]) -> None:
    """Import each module of ``names`` in order, the current directory first on ``sys.path``
    (as ``python -m`` has it; the ``problayers`` script's own directory is not the user's).

    Raises:
        PluginError: one line naming the module: not found, or the error its import raised
            (chained, for ``--debug``).
    """
    if not names:
        return
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        if name.endswith(".py") or os.sep in name or "/" in name:
            module = os.path.splitext(os.path.basename(name))[0]
            raise PluginError(f"--import {name}: expected a module's name ({module!r}), not a file's path")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
                raise PluginError(
                    f"--import {name}: no module named {err.name!r} (searched from the current "
                    f"directory {cwd} and the installed packages)"
                ) from None
            raise PluginError(f"--import {name}: {type(err).__name__}: {err}") from err
        except Exception as err:  # the module's own fault, said in one line
            raise PluginError(f"--import {name}: {type(err).__name__}: {err}") from err
