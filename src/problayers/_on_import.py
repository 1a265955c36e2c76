"""Run a function once a module is imported, without importing it.

``problayers.kl`` registers :func:`~problayers.kl.mvn_kl` with ``torch.compiler.allow_in_graph``,
which imports ``torch._dynamo`` (seconds of start-up, about as long as ``import torch``). The
registration only matters once dynamo runs, so it waits for dynamo's import: done at once if the
module is already imported, else by a finder on ``sys.meta_path`` that wraps the module's loader
and removes itself when the module has executed (a mere ``importlib.util.find_spec`` of it, an
availability check, leaves it in place). A function that fails is reported as a warning: the
module's import goes on.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]


def when_imported(name: str, fn: Callable[[], Any]) -> None:
    """Call ``fn()`` now if module ``name`` is imported, else right after its import."""
    if name in sys.modules:
        fn()
    else:
        sys.meta_path.insert(0, _Finder(name, fn))


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self.name, self.fn, self.busy = name, fn, False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != self.name or self.busy:
            return None
        self.busy = True  # the search below asks the finders again, this one included
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, self)
        return spec

    def run(self) -> None:
        with contextlib.suppress(ValueError):  # once: the module has executed
            sys.meta_path.remove(self)
        try:
            self.fn()
        except Exception as exc:  # the module is imported all the same
            warnings.warn(f"problayers: after importing {self.name}: {exc!r}", RuntimeWarning, stacklevel=2)


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the finder's function; the module keeps its own loader."""

    def __init__(self, loader: Any, finder: _Finder) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.finder.run()
