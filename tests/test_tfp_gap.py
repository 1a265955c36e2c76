"""benchmarks/tfp_gap.py: groups of runs compared on one number (Welch's t)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from scipy import stats

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("_tfp_gap", BENCH / "tfp_gap.py")
assert _spec is not None and _spec.loader is not None
tfp_gap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tfp_gap)


def _bnn_result(path: Path, kl: float, nll: float) -> Path:
    """A file shaped like tfp_bnn.py's results: per-epoch records and the final scores."""
    path.write_text(json.dumps({"epochs": [{"kl": 9.0}, {"kl": kl}], "final": {"test_nll": nll}}))
    return path


def test_default_reads_the_final_neg_elbo_of_files_runs_and_metrics(tmp_path):
    (tmp_path / "tfp.json").write_text(json.dumps({"test_neg_elbo": 99.5}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"test_neg_elbo": 101.0}\n{"test_neg_elbo": 98.25}\n\n')
    assert tfp_gap.metric_value(tmp_path / "tfp.json") == 99.5
    assert tfp_gap.metric_value(run) == 98.25
    assert tfp_gap.metric_value(run / "metrics.jsonl") == 98.25


def test_metric_key_path_indexes_dicts_and_lists(tmp_path):
    path = _bnn_result(tmp_path / "r.json", kl=5.25, nll=0.037)
    assert tfp_gap.metric_value(path, "epochs.-1.kl") == 5.25
    assert tfp_gap.metric_value(path, "epochs.0.kl") == 9.0
    assert tfp_gap.metric_value(path, "final.test_nll") == 0.037


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ("final.accuracy", r"--metric final\.accuracy: no 'accuracy' there"),
        ("epochs.7.kl", r"--metric epochs\.7\.kl: no '7' there"),
        ("epochs.last.kl", r"--metric epochs\.last\.kl: no 'last' there"),
        ("final", r"--metric final: expected a number, got dict"),
    ],
)
def test_a_metric_that_is_not_a_number_there_is_one_line(tmp_path, metric, message):
    path = _bnn_result(tmp_path / "r.json", kl=5.25, nll=0.037)
    with pytest.raises(SystemExit, match=rf"^.*r\.json: {message}$"):
        tfp_gap.metric_value(path, metric)


def test_table_has_each_groups_values_and_welch_against_the_first(tmp_path, capsys):
    a = [5.26, 5.17, 5.30]
    b = [5.35, 5.33, 5.40]
    paths = {
        name: ",".join(str(_bnn_result(tmp_path / f"{name}{i}.json", kl, 0.03)) for i, kl in enumerate(v))
        for name, v in (("tfp", a), ("port", b))
    }
    argv = ["--metric", "epochs.-1.kl", "--digits", "3", f"TFP={paths['tfp']}", f"us={paths['port']}"]
    assert tfp_gap.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| runs | n | `epochs.-1.kl` of each |")
    assert lines[2].startswith("| TFP | 3 | 5.260, 5.170, 5.300 | 5.243 |")
    test = stats.ttest_ind(b, a, equal_var=False)
    assert lines[3].startswith("| us | 3 | 5.350, 5.330, 5.400 | 5.360 |")
    assert lines[3].endswith(f"| {test.pvalue:.2f} |")
    ci = test.confidence_interval(0.95)
    assert f"+0.117 ({ci.low:+.3f} to {ci.high:+.3f})" in lines[3]


def test_bad_group_and_missing_file_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^group: expected NAME=PATH,PATH,\.\.\., got 'nogroup'$"):
        tfp_gap.main(["nogroup"])
    with pytest.raises(SystemExit, match=r"absent\.json: not found$"):
        tfp_gap.main([f"a={tmp_path / 'absent.json'}"])


def test_a_file_that_is_not_a_result_is_one_line(tmp_path):
    (tmp_path / "cut.json").write_text('{"test_neg_elbo": 9')
    with pytest.raises(SystemExit, match=r"cut\.json: expected a JSON result, got Expecting "):
        tfp_gap.metric_value(tmp_path / "cut.json")
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(
        SystemExit, match=r"metrics\.jsonl: expected a JSON result, got Expecting value at character 0$"
    ):
        tfp_gap.metric_value(tmp_path / "metrics.jsonl")
