"""One number of groups of runs (by default the final test -ELBO), each group against the first
(Welch's t).

    python benchmarks/tfp_gap.py \
        "TFP=docs/results/tfp-quality-cpu/seed0.json,docs/results/tfp-quality-cpu/seed1.json" \
        "problayers=docs/results/seed-cpu-fast-tril-tfp,docs/results/cpu-amd-bf16/fp32-seed1"

A group is ``NAME=PATH,PATH,...``; a path is a TFP result (``tfp_quality.py``'s ``.json``, its
``test_neg_elbo``) or a ``problayers train`` run directory or its ``metrics.jsonl`` (the last
epoch's ``test_neg_elbo``). ``--metric`` picks another number of a result file by its key path
(``final.test_nll``; an integer indexes a list: ``epochs.-1.kl``), for ``tfp_bnn.py``'s results:

    python benchmarks/tfp_gap.py --metric epochs.-1.kl --digits 3 \
        "TFP=DIR/tfp-seed0.json,DIR/tfp-seed1.json" "problayers=DIR/problayers-seed0.json,..."

Prints a Markdown table: each group's values, mean and standard deviation, and for every group
after the first the difference of its mean from the first's with a 95% confidence interval and
the two-sided p-value of Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``: the groups' variances are not assumed equal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def metric_value(path: Path, metric: str = "test_neg_elbo") -> float:
    """The number at key path ``metric`` of a result file, of a run directory's last epoch or
    of a ``metrics.jsonl``'s last line (by default the test -ELBO the run ended with)."""
    if path.is_dir():
        path = path / "metrics.jsonl"
    text = path.read_text()
    if path.suffix == ".jsonl":  # the last record
        text = ([ln for ln in text.splitlines() if ln.strip()] or [""])[-1]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: expected a JSON result, got {err.msg} at character {err.pos}") from None
    for key in metric.split("."):
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise SystemExit(f"{path}: --metric {metric}: no {key!r} there") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SystemExit(f"{path}: --metric {metric}: expected a number, got {type(value).__name__}")
    return float(value)


def parse_group(text: str, metric: str = "test_neg_elbo") -> tuple[str, list[float]]:
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths:
        raise SystemExit(f"group: expected NAME=PATH,PATH,..., got {text!r}")
    values = []
    for p in paths.split(","):
        path = Path(p)
        if not path.exists():
            raise SystemExit(f"{path}: not found")
        values.append(metric_value(path, metric))
    return name, values


def main(argv: list[str] | None = None) -> int:
    from scipy import stats

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("groups", nargs="+", help="NAME=PATH,PATH,...")
    p.add_argument("--metric", default="test_neg_elbo", help="key path of the number in a result")
    p.add_argument("--digits", type=int, default=2, help="decimals printed")
    args = p.parse_args(argv)
    if not 0 <= args.digits <= 10:
        p.error(f"--digits: expected 0 to 10, got {args.digits}")
    groups = [parse_group(g, args.metric) for g in args.groups]
    ref_name, ref = groups[0]
    d = args.digits
    what = "test -ELBO" if args.metric == "test_neg_elbo" else f"`{args.metric}`"
    print(f"| runs | n | {what} of each | mean | sd | mean minus {ref_name}'s (95% CI) | Welch p |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, values) in enumerate(groups):
        sd = f"{statistics.stdev(values):.{d}f}" if len(values) > 1 else "-"
        row = f"| {name} | {len(values)} | {', '.join(f'{v:.{d}f}' for v in values)} | "
        row += f"{statistics.mean(values):.{d}f} | {sd} |"
        if i == 0 or len(values) < 2 or len(ref) < 2:
            print(row + " - | - |")
            continue
        test = stats.ttest_ind(values, ref, equal_var=False)
        ci = test.confidence_interval(0.95)
        diff = statistics.mean(values) - statistics.mean(ref)
        print(row + f" {diff:+.{d}f} ({ci.low:+.{d}f} to {ci.high:+.{d}f}) | {test.pvalue:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
