"""Final test -ELBO of 15-epoch runs, their mean and spread, and the slope over epochs 10-15.

Run from the repository root: ``python3 docs/results/summarize.py [metrics.jsonl ...]``; with no
arguments, the ten runs of the seed configuration as specified (docs/quality.md).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

SEED_CONFIG = [
    "docs/results/seed-gpu-run1/metrics.jsonl",
    "docs/results/seed-gpu/metrics.jsonl",
    "docs/results/fast-gpu/fast-cudagraphchannelslast-metrics.jsonl",
    "docs/results/fast-gpu/fast-cudagraphchannelslastprecisionbf16-metrics.jsonl",
    "docs/results/fast-gpu/fast-cli-metrics.jsonl",
    "docs/results/fast-gpu/init-torch-seed1-metrics.jsonl",
    "docs/results/seed-cpu/metrics.jsonl",
    "docs/results/seed-cpu-fast/metrics.jsonl",
    "docs/results/fast-gpu/init-keras-seed0-metrics.jsonl",
    "docs/results/fast-gpu/init-keras-seed1-metrics.jsonl",
]


def main(paths: list[str]) -> None:
    finals, slopes, rises = [], [], []
    for path in paths:
        curve = [json.loads(line)["test_neg_elbo"] for line in Path(path).read_text().splitlines()]
        finals.append(curve[-1])
        slopes.append((curve[-6] - curve[-1]) / 5)
        rises.append(max(b - a for a, b in itertools.pairwise(curve[-6:])))
        print(f"{curve[-1]:7.2f}  {path}")
    print(f"runs {len(finals)}  mean {statistics.mean(finals):.2f}", end="")
    if len(finals) > 1:
        print(f"  sd {statistics.stdev(finals):.2f}", end="")
    print(
        f"  range {min(finals):.2f}-{max(finals):.2f}  fall per epoch over the last 5: "
        f"{statistics.mean(slopes):.2f}  largest rise between epochs: {max(rises):.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:] or SEED_CONFIG)
