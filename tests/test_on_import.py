"""problayers._on_import: a function run when a module is imported, without importing it (what
registers the exact MVN KL with dynamo only once dynamo is imported)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

from conftest import fresh_python
from problayers._on_import import when_imported


@pytest.fixture
def module(tmp_path, monkeypatch):
    """A fresh module name on sys.path, not imported yet."""
    name = f"problayers_on_import_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = list(sys.meta_path)
    yield name
    sys.modules.pop(name, None)
    sys.meta_path[:] = before


def test_runs_after_the_import_once_and_leaves_no_finder(module):
    calls = []
    when_imported(module, lambda: calls.append(sys.modules[module].VALUE))
    assert calls == [] and module not in sys.modules
    assert importlib.util.find_spec(module) is not None and calls == []  # a check is no import
    imported = importlib.import_module(module)
    assert calls == [42] and imported.__spec__.loader is imported.__loader__
    assert type(imported.__loader__).__module__ != "problayers._on_import"  # its own loader again
    assert not any(getattr(f, "name", None) == module for f in sys.meta_path)  # removed once done


def test_runs_at_once_for_a_module_already_imported():
    calls = []
    when_imported("json", lambda: calls.append(1))
    assert calls == [1]


def test_a_failing_function_is_a_warning_and_the_import_goes_on(module):
    when_imported(module, lambda: 1 / 0)
    with pytest.warns(RuntimeWarning, match=f"after importing {module}: ZeroDivisionError"):
        imported = importlib.import_module(module)
    assert imported.VALUE == 42


def test_mvn_kl_is_registered_with_dynamo_after_an_availability_check_too():
    code = (
        "import importlib.util, sys, problayers\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "importlib.util.find_spec('torch._dynamo')\n"
        "import torch._dynamo.trace_rules as rules\n"
        "print(id(problayers.kl.mvn_kl) in rules._allowed_callable_ids)\n"
    )
    assert fresh_python(code) == "True"
