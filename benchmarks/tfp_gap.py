"""Final test -ELBO of groups of 15-epoch runs, and each group against the first (Welch's t).

    python benchmarks/tfp_gap.py \
        "TFP=docs/results/tfp-quality-cpu/seed0.json,docs/results/tfp-quality-cpu/seed1.json" \
        "problayers=docs/results/seed-cpu-fast-tril-tfp,docs/results/cpu-amd-bf16/fp32-seed1"

A group is ``NAME=PATH,PATH,...``; a path is a TFP result (``tfp_quality.py``'s ``.json``, its
``test_neg_elbo``) or a ``problayers train`` run directory or its ``metrics.jsonl`` (the last
epoch's ``test_neg_elbo``). Prints a Markdown table: each group's values, mean and standard
deviation, and for every group after the first the difference of its mean from the first's
with a 95% confidence interval and the two-sided p-value of Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``: the groups' variances are not assumed equal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def final_neg_elbo(path: Path) -> float:
    """The test -ELBO a run ended with (a TFP result file, a run directory or its metrics)."""
    if path.is_dir():
        path = path / "metrics.jsonl"
    if path.suffix == ".jsonl":
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        return float(json.loads(lines[-1])["test_neg_elbo"])
    return float(json.loads(path.read_text())["test_neg_elbo"])


def parse_group(text: str) -> tuple[str, list[float]]:
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths:
        raise SystemExit(f"group: expected NAME=PATH,PATH,..., got {text!r}")
    values = []
    for p in paths.split(","):
        path = Path(p)
        if not path.exists():
            raise SystemExit(f"{path}: not found")
        values.append(final_neg_elbo(path))
    return name, values


def main(argv: list[str] | None = None) -> int:
    from scipy import stats

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("groups", nargs="+", help="NAME=PATH,PATH,...")
    args = p.parse_args(argv)
    groups = [parse_group(g) for g in args.groups]
    ref_name, ref = groups[0]
    print(f"| runs | n | test -ELBO of each | mean | sd | mean minus {ref_name}'s (95% CI) | Welch p |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, values) in enumerate(groups):
        sd = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"
        row = f"| {name} | {len(values)} | {', '.join(f'{v:.2f}' for v in values)} | "
        row += f"{statistics.mean(values):.2f} | {sd} |"
        if i == 0 or len(values) < 2 or len(ref) < 2:
            print(row + " - | - |")
            continue
        test = stats.ttest_ind(values, ref, equal_var=False)
        ci = test.confidence_interval(0.95)
        diff = statistics.mean(values) - statistics.mean(ref)
        print(row + f" {diff:+.2f} ({ci.low:+.2f} to {ci.high:+.2f}) | {test.pvalue:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
