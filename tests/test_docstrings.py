"""Docstrings of the public layers: each documents its arguments, its input and output shapes and
has a runnable example; and every example in the layers' modules runs (``doctest``).

The examples use ``torch``, ``nn`` (``torch.nn``), ``D`` (``torch.distributions``) and ``pl``
(``problayers``) without importing them, as doctest globals (added to the module's own names,
as ``doctest.testmod(extraglobs=...)`` does). They print shapes, or numbers that need no seed.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
import problayers.layers

#: Modules whose docstring examples run here: every module of the layers package, and these.
DOCTEST_MODULES = [
    *(f"problayers.layers.{info.name}" for info in pkgutil.iter_modules(problayers.layers.__path__)),
    "problayers.regularizers",
    "problayers.coercible",
    "problayers.exporting",
    "problayers.numerics",
]

GLOBS = {"torch": torch, "nn": nn, "D": D, "pl": pl}

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: The public layers at the time the rule was set; new ones are covered through ``__all__``.
KNOWN = {
    "AutoregressiveNetwork",
    "AutoregressiveTransform",
    "CategoricalMixtureOfOneHotCategorical",
    "Conv2dFlipout",
    "Conv2dReparameterization",
    "DenseFlipout",
    "DenseLocalReparameterization",
    "DenseReparameterization",
    "DenseVariational",
    "DistributionLambda",
    "DistributionParams",
    "IndependentBernoulli",
    "IndependentLogistic",
    "IndependentNormal",
    "IndependentPoisson",
    "KLDivergenceAddLoss",
    "KLDivergenceRegularizer",
    "Logistic",
    "MaskedAutoregressiveTransform",
    "MeanFieldNormal",
    "MixtureLogistic",
    "MixtureNormal",
    "MixtureSameFamily",
    "MultivariateNormalTriL",
    "OneHotCategorical",
    "StandardNormal",
    "VariableLayer",
    "posterior_mean_field",
    "prior_standard_normal",
    "prior_trainable",
}


def _is_module_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _public_names() -> list[str]:
    """The ``nn.Module`` classes of ``problayers.__all__`` and everything in the layers package's."""
    names = {name for name in pl.__all__ if _is_module_class(getattr(pl, name))}
    names |= set(problayers.layers.__all__)
    return sorted(names)


PUBLIC = _public_names()


def _own_doc(obj) -> str:
    """``obj``'s own docstring (not one inherited from a base class), dedented."""
    return inspect.cleandoc(obj.__doc__ or "")


def _section(doc: str, title: str) -> list[str]:
    """The lines of the Google-style section ``title`` (``"Args"``): up to the next line that is
    not indented (or the end)."""
    lines = doc.splitlines()
    try:
        start = lines.index(f"{title}:") + 1
    except ValueError:
        return []
    body = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    return body


_ENTRY = re.compile(r"^    (\*{0,2}\w+(?:, \*{0,2}\w+)*):")


def _documented_args(doc: str) -> set[str]:
    """Argument names of the ``Args:`` entries (``    name: ...``; ``*args, **kwargs: ...``)."""
    names = set()
    for line in _section(doc, "Args"):
        match = _ENTRY.match(line)
        if match:
            names |= {name.lstrip("*") for name in match.group(1).split(", ")}
    return names


def _parameters(obj) -> list[str]:
    return list(inspect.signature(obj).parameters)


def test_public_names_include_the_known_layers():
    assert set(PUBLIC) >= KNOWN


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_has_args_shapes_and_example(name):
    obj = getattr(pl, name)
    doc = _own_doc(obj)
    assert doc, f"{name}: no docstring of its own"
    assert "\n" not in doc.split("\n\n")[0], f"{name}: the summary is not one line"
    params = _parameters(obj)
    if params:
        assert "Args:" in doc, f"{name}: no 'Args:' section (it takes {params})"
        missing = [p for p in params if p not in _documented_args(doc)]
        assert not missing, f"{name}: arguments not documented under 'Args:': {missing}"
    if _is_module_class(obj):
        assert "Input:" in doc, f"{name}: no 'Input:' (the input's shape)"
        assert "Output:" in doc, f"{name}: no 'Output:' (the output's shape)"
    elif inspect.isfunction(obj):
        assert "Returns:" in doc, f"{name}: no 'Returns:' section"
    if isinstance(obj, type) and issubclass(obj, pl.DistributionLambda):
        for word in ("batch_shape", "event_shape"):
            assert word in doc, f"{name}: the output's {word} is not documented"
    assert "Example::" in doc and ">>>" in doc, f"{name}: no 'Example::' with a '>>>' example"


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    tests = []
    for module_name in DOCTEST_MODULES:
        module = importlib.import_module(module_name)
        tests.extend(t for t in finder.find(module, extraglobs=GLOBS) if t.examples)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


def test_every_public_example_is_collected():
    names = {t.name for t in DOCTESTS}
    for name in PUBLIC:
        obj = getattr(pl, name)
        assert f"{obj.__module__}.{obj.__qualname__}" in names, f"{name}: its example is not run here"


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name.removeprefix("problayers."))
def test_example_runs(test: doctest.DocTest):
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    fresh = doctest.DocTest(
        test.examples, dict(test.globs), test.name, test.filename, test.lineno, test.docstring
    )
    report: list[str] = []
    with torch.random.fork_rng(devices=[]):  # an example's draws leave the global RNG as it was
        result = runner.run(fresh, out=report.append)
    assert result.failed == 0, f"{test.name}: example failed\n" + "".join(report)
