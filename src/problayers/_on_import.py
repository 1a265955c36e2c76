"""Run a function once a module is imported, without importing it.

``problayers.kl`` registers :func:`~problayers.kl.mvn_kl` with ``torch.compiler.allow_in_graph``,
which imports ``torch._dynamo`` (seconds of start-up, about as long as ``import torch``). The
registration only matters once dynamo runs, so it waits for dynamo's import: done at once if the
module is already imported, else by a one-shot finder on ``sys.meta_path`` that removes itself at
that import and runs the function right after the module has executed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
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
        self.name, self.fn = name, fn

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; the other finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, self.fn)
        return spec


class _Loader(importlib.abc.Loader):
    """The module's own loader, then ``fn``; the module keeps its own loader afterwards."""

    def __init__(self, loader: Any, fn: Callable[[], Any]) -> None:
        self.loader, self.fn = loader, fn

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.fn()
