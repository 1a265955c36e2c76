"""``--import MODULE``: a model, prior and objective of the user's own, registered by a module in
the current directory, trained, resumed and evaluated from the command line."""

from __future__ import annotations

import os
import sys

import pytest

from problayers.cli import main
from problayers.vae.models import registry
from problayers.vae.models.priors import PRIORS
from problayers.vae.objectives import OBJECTIVES

USER_MODULE = """
from torch import nn

import problayers as pl
from problayers.vae.models import VAE, register_model
from problayers.vae.models.priors import PRIORS
from problayers.vae.models.registry import make_objective
from problayers.vae.objectives import ELBO, OBJECTIVES

PRIORS["normal-mine"] = PRIORS["normal"]
OBJECTIVES["elbo-mine"] = lambda exact_kl, num_samples, **kw: ELBO(exact_kl=exact_kl, **kw)


@register_model("tiny-mine", latent_size=2)
def tiny(cfg):
    d = cfg.latent_size
    size = pl.IndependentNormal.params_size(d)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, size), pl.IndependentNormal(d))
    decoder = nn.Sequential(nn.Linear(d, 784), pl.IndependentBernoulli((1, 28, 28)))
    prior = PRIORS[cfg.prior](d, cfg.prior_components, encoder, (1, 28, 28))
    return VAE(encoder, decoder, prior=prior, objective=make_objective(cfg))
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory holding the user's module, as the current directory; sys.path without it
    (the ``problayers`` script's own directory comes first there), and every registry restored."""
    (tmp_path / "mine_models.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    saved = [(d, dict(d)) for d in (*_registries(), PRIORS, OBJECTIVES)]
    yield tmp_path
    for table, contents in saved:
        table.clear()
        table.update(contents)
    sys.modules.pop("mine_models", None)


def _registries():
    return registry.MODELS, registry.MODEL_DEFAULTS, registry.MODEL_FIELDS, registry.MODEL_IAF_FIELDS


def test_a_users_model_prior_and_objective_from_the_command_line(user_dir, capsys):
    own = ["--model", "tiny-mine", "--prior", "normal-mine", "--objective", "elbo-mine"]
    data = ["--synthetic", "64", "--batch-size", "32", "--no-progress"]
    run = str(user_dir / "run")
    assert main(["train", "--import", "mine_models", *own, *data, "--epochs", "1", "--out", run]) == 0
    assert main(["train", "--resume", run, "--epochs", "2", "--import", "mine_models"]) == 0
    assert main(["evaluate", run, "--import", "mine_models", "--iwae-samples", "2", "--no-progress"]) == 0
    capsys.readouterr()
    sys.modules.pop("mine_models")
    registry.MODELS.pop("tiny-mine")  # a fresh process, without --import
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", run, "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "got 'tiny-mine' (a model of your own" in err
    assert "problayers COMMAND --import MODULE)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("no_such_module", "--import no_such_module: no module named 'no_such_module' (searched from"),
        ("broken_models", "--import broken_models: ModuleNotFoundError: No module named 'not_installed'"),
        ("raising_models", "--import raising_models: ValueError: a bug of the user's"),
        (
            "./mine_models.py",
            "--import ./mine_models.py: expected a module's name ('mine_models'), not a file's",
        ),
    ],
)
def test_a_module_that_cannot_be_imported_is_one_line(user_dir, capsys, module, line):
    (user_dir / "broken_models.py").write_text("import not_installed\n")
    (user_dir / "raising_models.py").write_text('raise ValueError("a bug of the user\'s")\n')
    with pytest.raises(SystemExit) as exc:
        main(["train", "--import", module, "--synthetic", "64", "--out", str(user_dir / "run")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"problayers: error: {line}"), err
    assert len(err.strip().splitlines()) == 1 and not (user_dir / "run").exists()


def test_an_unregistered_prior_is_refused_by_the_registry(user_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "mlp", "--prior", "normal-mine", "--synthetic", "64", "--out", "run"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("problayers: error: --prior: expected one of ["), err
    assert "got 'normal-mine' (one of your own: import its module first; problayers COMMAND --import" in err
