"""Parity with TFP 0.25's ``tfp.layers``: ``Layer.new(params, ...)`` against recorded numbers.

``fixtures/tfp_parity.json`` holds fixed float64 parameter vectors, evaluation points and what
TFP 0.25 computed from them (``log_prob``, ``mean``, ``stddev``, ``variance``, ``entropy``,
``covariance``/``scale_tril``, ``kl_divergence``, ``params_size``); ``fixtures/make_tfp_parity.py``
made it (in ``.tfp-venv``; its header has the command and versions). No TensorFlow is needed
here: the same distributions are built with problayers and compared at ``rtol = atol = 1e-6``.

Known differences are ``xfail(strict=True)`` with the reason, so a fix shows up as an XPASS
failure and the mark is then removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributions as D

import problayers as pl

FIXTURE = json.loads((Path(__file__).resolve().parent / "fixtures" / "tfp_parity.json").read_text())
CASES: dict = FIXTURE["cases"]
KL: dict = FIXTURE["kl"]
FILL_TRIANGULAR: dict = FIXTURE["fill_triangular"]
TOL = {"rtol": 1e-6, "atol": 1e-6}
QUANTITIES = ("log_prob", "mean", "stddev", "variance", "entropy", "covariance", "scale_tril")


def _f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _rows_order(spec: dict) -> dict:
    """A MultivariateNormalTriL spec with its scale parameters moved from TFP's fill_triangular
    order to the row-by-row (``torch.tril_indices``) order of ``tril_order="rows"``."""
    d = spec["args"]["event_size"]
    index = torch.tensor(FILL_TRIANGULAR[str(d)]["tfp_index_at_tril_indices"])
    params = _f64(spec["params"])
    loc, raw = params[..., :d], params[..., d:]
    return {**spec, "params": torch.cat([loc, raw[..., index]], dim=-1).tolist()}


def build(spec: dict, tril_order: str = "tfp") -> D.Distribution:
    """The problayers distribution for a fixture spec, made as a port of the TFP call would."""
    layer, args = spec["layer"], spec["args"]
    if layer == "standard_normal_mvn":
        d = args["event_size"]
        return D.MultivariateNormal(torch.zeros(d, dtype=torch.float64), scale_tril=torch.eye(d).double())
    if layer == "standard_normal_independent":
        d = args["event_size"]
        return D.Independent(D.Normal(torch.zeros(d, dtype=torch.float64), 1.0), 1)
    params = _f64(spec["params"])
    if layer in ("IndependentBernoulli", "IndependentNormal", "IndependentLogistic", "IndependentPoisson"):
        return getattr(pl, layer).new(params, tuple(args["event_shape"]))
    if layer == "MultivariateNormalTriL":
        return pl.MultivariateNormalTriL.new(params, args["event_size"], tril_order=tril_order)
    if layer == "OneHotCategorical":
        return pl.OneHotCategorical.new(params, args["event_size"])
    if layer == "CategoricalMixtureOfOneHotCategorical":
        return pl.CategoricalMixtureOfOneHotCategorical.new(
            params, args["event_size"], args["num_components"]
        )
    if layer == "MixtureSameFamily":  # tfpl.MixtureSameFamily.new(params, K, tfpl.IndependentNormal(E))
        component = pl.IndependentNormal(tuple(args["event_shape"]))
        return pl.MixtureSameFamily.new(params, args["num_components"], component)
    if layer in ("MixtureNormal", "MixtureLogistic"):
        return getattr(pl, layer).new(params, args["num_components"], tuple(args["event_shape"]))
    raise ValueError(f"unknown layer in the fixture: {layer}")


def params_size(layer: str, args: dict) -> int:
    if layer in ("IndependentBernoulli", "IndependentNormal", "IndependentLogistic", "IndependentPoisson"):
        return getattr(pl, layer).params_size(tuple(args["event_shape"]))
    if layer in ("MultivariateNormalTriL", "OneHotCategorical"):
        return getattr(pl, layer).params_size(args["event_size"])
    if layer == "CategoricalMixtureOfOneHotCategorical":
        return pl.CategoricalMixtureOfOneHotCategorical.params_size(
            args["event_size"], args["num_components"]
        )
    if layer == "MixtureSameFamily":
        component = pl.IndependentNormal.params_size(tuple(args["event_shape"]))
        return pl.MixtureSameFamily.params_size(args["num_components"], component)
    return getattr(pl, layer).params_size(args["num_components"], tuple(args["event_shape"]))


def quantity(dist: D.Distribution, name: str, case: dict) -> torch.Tensor:
    if name == "log_prob":
        return dist.log_prob(_f64(case["points"]))
    if name == "entropy":
        return dist.entropy()
    if name == "covariance":
        return dist.covariance_matrix
    return getattr(dist, name)  # mean, stddev, variance, scale_tril: properties in torch


def _quantity_params():
    for case_name, case in CASES.items():
        for name in QUANTITIES:
            if name in case:
                yield pytest.param(case_name, name, id=f"{case_name}-{name}")


def test_fixture_header():
    header = FIXTURE["header"]
    assert header["tensorflow_probability"].startswith("0.25.")
    assert header["dtype"] == "float64"
    assert (Path(__file__).resolve().parents[1] / header["generator"]).is_file()


@pytest.mark.parametrize("case_name", list(CASES))
def test_params_size(case_name):
    case = CASES[case_name]
    assert params_size(case["layer"], case["args"]) == case["params_size"]


@pytest.mark.parametrize("case_name", list(CASES))
def test_shapes(case_name):
    case = CASES[case_name]
    dist = build(case)
    assert tuple(dist.batch_shape) == tuple(case["batch_shape"])
    assert tuple(dist.event_shape) == tuple(case["event_shape"])


@pytest.mark.parametrize(("case_name", "name"), list(_quantity_params()))
def test_quantity(case_name, name):
    case = CASES[case_name]
    torch.testing.assert_close(quantity(build(case), name, case), _f64(case[name]), **TOL)


def _mvn_tfp_order_params():
    for case_name, case in CASES.items():
        if case["layer"] == "MultivariateNormalTriL":
            for name in QUANTITIES:
                if name in case:
                    yield pytest.param(case_name, name, id=f"{case_name}-{name}")


@pytest.mark.parametrize(("case_name", "name"), list(_mvn_tfp_order_params()))
def test_mvn_tril_rows_order_is_the_same_family_reordered(case_name, name):
    """``tril_order="rows"`` (problayers 0.1) is TFP's order with the parameters permuted."""
    case = CASES[case_name]
    dist = build(_rows_order(case), tril_order="rows")
    torch.testing.assert_close(quantity(dist, name, case), _f64(case[name]), **TOL)


@pytest.mark.parametrize("d", sorted(FILL_TRIANGULAR, key=int))
def test_fill_triangular_record_is_a_permutation(d):
    record = FILL_TRIANGULAR[d]
    n = int(d) * (int(d) + 1) // 2
    assert sorted(record["tfp_index_at_tril_indices"]) == list(range(n))
    rows, cols = torch.tril_indices(int(d), int(d))
    matrix = torch.tensor(record["matrix"])
    assert matrix[rows, cols].tolist() == record["tfp_index_at_tril_indices"]
    filled = pl.layers.multivariate.fill_triangular(torch.arange(n, dtype=torch.float64), int(d))
    assert filled[rows, cols].tolist() == record["tfp_index_at_tril_indices"]  # TFP's layout


def _involves_mvn(entry: dict) -> bool:
    return "MultivariateNormalTriL" in (entry["p"]["layer"], entry["q"]["layer"])


def _kl_params():
    for name, entry in KL.items():
        yield pytest.param(name, None, id=name)
        if entry["q"]["layer"] == "standard_normal_mvn":  # the VAE's prior, Independent(Normal(0, 1), 1)
            q = {**entry["q"], "layer": "standard_normal_independent"}
            yield pytest.param(name, q, id=f"{name}-prior_as_Independent_Normal")


@pytest.mark.parametrize(("name", "q_spec"), list(_kl_params()))
def test_kl_divergence(name, q_spec):
    entry = KL[name]
    kl = D.kl_divergence(build(entry["p"]), build(q_spec or entry["q"]))
    torch.testing.assert_close(kl, _f64(entry["kl"]), **TOL)


@pytest.mark.parametrize("name", [name for name, entry in KL.items() if _involves_mvn(entry)])
def test_kl_divergence_mvn_tril_rows_order_reordered(name):
    entry = KL[name]
    p, q = (_rows_order(s) if s["layer"] == "MultivariateNormalTriL" else s for s in (entry["p"], entry["q"]))
    kl = D.kl_divergence(build(p, tril_order="rows"), build(q, tril_order="rows"))
    torch.testing.assert_close(kl, _f64(entry["kl"]), **TOL)
