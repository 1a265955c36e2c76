"""TFP's example trained with the KL counted once, scored on problayers' test binarization.

    python benchmarks/tfp_quality.py --data-dir ../shared/data/mnist --seeds 0,1,2 \
        --out docs/results/tfp-quality-cpu

Writes the fixed-seed binarized MNIST test set (``problayers.vae.data.binarize_fixed``, the
one every ``problayers`` run is scored on) to a temporary ``.npy``, runs ``tfp_train.py`` in
``.tfp-venv`` once per seed (one after another: each uses both cores) and writes each
``RESULT`` as ``<out>/seed<N>.json`` (atomically), with the CPU model and the date. Needs
``.tfp-venv`` (``python benchmarks/bench_train.py --setup-tfp``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TFP_PYTHON = HERE.parent / ".tfp-venv" / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2, help="TF threads per run (1: two runs side by side)")
    p.add_argument("--as-written", action="store_true", help="the example's weight: KL counted twice")
    args = p.parse_args(argv)
    if not TFP_PYTHON.is_file():
        print(f"{TFP_PYTHON}: not found; create it with `python benchmarks/bench_train.py --setup-tfp`")
        return 2
    from problayers.train.cpu import cpu_label
    from problayers.vae import data as mnist

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = mnist.binarize_fixed(mnist.load_mnist(args.data_dir, "test")[0])  # (N, 1, 28, 28)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "test.npy"
        np.save(npy, test[:, 0].numpy().astype(np.uint8))
        for seed in (int(s) for s in args.seeds.split(",")):
            cmd = [str(TFP_PYTHON), str(HERE / "tfp_train.py"), "--data-dir", args.data_dir,
                   "--test-npy", str(npy), "--epochs", str(args.epochs), "--seed", str(seed),
                   "--threads", str(args.threads),
                   *(["--as-written"] if args.as_written else [])]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"seed {seed}: the TFP worker failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                return 1
            result = json.loads(lines[-1][len("RESULT ") :])
            result["cpu"] = cpu_label()
            result["date"] = datetime.date.today().isoformat()
            result["command"] = " ".join(["python", "benchmarks/tfp_quality.py", *sys.argv[1:]])
            path = out / f"{'as-written-' if args.as_written else ''}seed{seed}.json"
            tmp_path = path.with_suffix(".json.tmp")
            tmp_path.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp_path, path)
            print(
                f"seed {seed}: test -ELBO {result['test_neg_elbo']:.2f} (recon {result['test_recon']:.2f} "
                f"+ KL {result['test_kl']:.2f}), {result['train_seconds']:.0f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
