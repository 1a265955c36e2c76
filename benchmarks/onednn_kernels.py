"""Which oneDNN kernels a CPU training step of the seed VAE runs, and their share of its time.

Runs ``make_train_step(precision=P, channels_last=True)`` at batch 256 in a subprocess with
``ONEDNN_VERBOSE=1`` (3 warm-up steps, then 2 logged) and sums oneDNN's own per-primitive times
by (primitive, implementation, propagation kind); ``--library tfp`` does the same for TFP's
example (``tfp_vae.py``, ``train_on_batch`` in ``.tfp-venv``, whose TensorFlow runs its
convolutions and matrix products through oneDNN on x86). The wall time of the logged steps is
printed too: the rest of the step is what runs outside oneDNN. ``--by-shape`` also gives each
(de)convolution pass's arithmetic rate, GFLOP/s from its problem's multiply-adds (the taps
that fall on the zero padding not counted), to set against the CPU's peak::

    python benchmarks/onednn_kernels.py --precision bf16
    python benchmarks/onednn_kernels.py --precision fp32 --top 8
    python benchmarks/onednn_kernels.py --library tfp --top 8
    python benchmarks/onednn_kernels.py --library tfp --inter-op 1   # one op at a time, as torch runs
    python benchmarks/onednn_kernels.py --precision fp32 --by-shape --steps 10 --top 30
    python benchmarks/onednn_kernels.py --evaluate runs/RUN --narrow-conv-by-transposed --by-shape  # the IWAE

The step keeps freed memory as ``problayers train``'s does (``retain_memory``); before
2026-12-05 06:00 UTC this script let glibc give it back, so the kernels that write large
outputs (data gradients) were timed with their page faults.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MARK = "=== logged steps ==="
STEPS = 2
HERE = Path(__file__).resolve().parent
TFP_PYTHON = HERE.parent / ".tfp-venv" / "bin" / "python"


def worker(precision: str, transposed_as_conv: bool, narrow: bool, keep_memory: bool) -> None:
    import torch

    from problayers.train.allocator import retain_freed_memory
    from problayers.train.fastpath import make_train_step
    from problayers.vae.models import ModelConfig, build_model, vae_loss

    if keep_memory:  # as `problayers train` does on a CPU
        retain_freed_memory()

    torch.manual_seed(0)
    model = build_model(ModelConfig())
    step = make_train_step(
        model,
        torch.optim.Adam(model.parameters(), 1e-3),
        vae_loss,
        precision=precision,
        channels_last=True,
        transposed_as_conv=transposed_as_conv,
        narrow_conv_by_transposed=narrow,
    )
    x = (torch.rand(256, 1, 28, 28) < 0.3).float()
    for _ in range(3):
        step(x)
    print(MARK, flush=True)
    start = time.perf_counter()
    for _ in range(STEPS):
        step(x)
    print(f"WALL {(time.perf_counter() - start) / STEPS * 1e3:.1f}", flush=True)


def worker_evaluate(run_dir: str, data_dir: str | None, n: int, k: int, narrow: bool) -> None:
    """``problayers evaluate``'s IWAE on a CPU as its defaults run it (bf16 autocast, channels_last,
    4 images x 128 samples per decoder call, freed memory kept), on ``n`` test images x ``k``."""
    import torch

    from problayers.train.allocator import retain_freed_memory
    from problayers.train.fastpath import bf16_autocast
    from problayers.train.transposed import use_transposed_weight_gradient
    from problayers.vae.evaluation import evaluate
    from problayers.vae.experiment import load_run

    sys.path.insert(0, str(HERE))
    from bench_iwae import _test_images  # the same images as bench_iwae.py's

    retain_freed_memory()
    model, _, _ = load_run(run_dir, device="cpu")
    model.to(memory_format=torch.channels_last)
    if narrow:
        use_transposed_weight_gradient(model)
    x = _test_images(argparse.Namespace(data_dir=data_dir, n=n, seed=0), torch.device("cpu"))

    def run(samples: int) -> None:
        with bf16_autocast(model):
            evaluate(
                model.encode,
                model.decode,
                model.prior(),
                x,
                batch_size=4,
                iwae_samples=samples,
                chunk_size=128,
            )

    run(8)
    print(MARK, flush=True)
    start = time.perf_counter()
    run(k)
    print(f"WALL {(time.perf_counter() - start) * 1e3:.1f}", flush=True)


def worker_tfp(inter_op: int | None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(HERE))
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk
    from tfp_vae import build_vae

    tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
    if inter_op is not None:  # TensorFlow's default runs independent ops side by side
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    tf.keras.utils.set_random_seed(0)
    vae = build_vae(tf, tfk, tfp)
    x = (np.random.default_rng(0).random((256, 28, 28, 1)) < 0.3).astype(np.float32)
    for _ in range(3):
        vae.train_on_batch(x, x)
    print(MARK, flush=True)
    start = time.perf_counter()
    for _ in range(STEPS):
        vae.train_on_batch(x, x)
    print(f"WALL {(time.perf_counter() - start) / STEPS * 1e3:.1f}", flush=True)


def _taps(small: int, large: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
    """The (pixel, tap) pairs of one spatial axis that fall inside the image: a convolution's
    output pixel o reads input o*stride + k*(dilation+1) - pad (small = outputs, large = inputs);
    a transposed convolution's input pixel i writes output i*stride + ... (small = inputs)."""
    return sum(
        0 <= o * stride + k * (dilation + 1) - pad < large for o in range(small) for k in range(kernel)
    )


def gflop(primitive: str, problem: str) -> float | None:
    """2 x the multiply-adds of one (de)convolution pass from oneDNN's problem descriptor (e.g.
    ``mb256_ic32oc32_ih28oh28kh5sh1dh0ph2_iw28ow28kw5sw1dw0pw2``; ``g`` for groups), counting only
    the taps inside the image, the work a pass cannot avoid (a 5x5 kernel with 'same' padding on
    a 7x7 image has 69% of its nominal taps inside); each of the three passes does as many.
    None for other primitives."""
    if primitive not in ("convolution", "deconvolution"):
        return None
    dims = {k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", problem.replace("_", ""))}
    try:
        mb, ic, oc = dims["mb"], dims["ic"], dims["oc"]
        pairs = 1
        for axis in "dhw":
            if "k" + axis not in dims:
                continue  # a 1-D or 2-D problem has no depth (or height)
            io = (dims["o" + axis], dims["i" + axis])
            small, large = io if primitive == "convolution" else io[::-1]
            args = (dims["k" + axis], dims["s" + axis], dims["d" + axis], dims["p" + axis])
            pairs *= _taps(small, large, *args)
    except KeyError:
        return None
    return 2 * mb * oc * ic // dims.get("g", 1) * pairs / 1e9


def summarize(log: str, top: int, by_shape: bool = False) -> None:
    totals: dict[tuple[str, ...], list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for line in log.split(MARK, 1)[1].splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        i = fields.index("exec")
        key: tuple[str, ...] = (
            fields[i + 2],
            fields[i + 3],
            fields[i + 4],
        )  # primitive, implementation, propagation
        if by_shape:  # and the problem (e.g. mb256_ic32oc32_ih28oh28kh5sh1...)
            key = (*key, fields[-2])
        totals[key][0] += 1
        totals[key][1] += float(fields[-1])
    whole = sum(t for _, t in totals.values())
    wall = [line.split()[1] for line in log.splitlines() if line.startswith("WALL ")]
    print(f"oneDNN time per step: {whole / STEPS:.1f} ms; wall time per step: {wall[0] if wall else '?'} ms")
    header = ("primitive", "implementation", "propagation", "n/step", "ms/step", "share")
    row = "{:14s} {:52s} {:18s} {:>6s} {:>8s} {:>6s}".format(*header)
    print(row + (" GFLOP/s problem" if by_shape else ""))
    for (kind, impl, prop, *shape), (n, t) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]:
        line = f"{kind:14s} {impl:52s} {prop:18s} {n // STEPS:6d} {t / STEPS:8.1f} {100 * t / whole:5.1f}%"
        if by_shape:  # the arithmetic rate of the pass
            flop = gflop(kind, shape[0])
            line += f" {1e3 * flop * n / t:7.0f}" if flop and t > 0 else f" {'-':>7s}"
        print(" ".join([line, *shape]))


def main() -> None:
    global STEPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", choices=["problayers", "tfp"], default="problayers")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="problayers only")
    parser.add_argument(
        "--inter-op",
        type=int,
        default=None,
        help="tfp only: TensorFlow's inter-op threads (default: its own)",
    )
    parser.add_argument("--steps", type=int, default=STEPS, help="logged steps (after 3 warm-up ones)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument(
        "--transposed-as-conv", action="store_true", help="problayers only: the step option of that name"
    )
    parser.add_argument(
        "--narrow-conv-by-transposed", action="store_true", help="problayers only: the step option"
    )
    parser.add_argument(
        "--no-keep-memory",
        action="store_true",
        help="problayers only: let glibc give freed blocks back (the step keeps them by default; "
        "given back, a large output is page-faulted in afresh inside the kernel that writes it)",
    )
    parser.add_argument("--by-shape", action="store_true", help="one row per problem shape too")
    parser.add_argument(
        "--evaluate",
        metavar="RUN_DIR",
        default=None,
        help="problayers only: instead of a training step, one IWAE evaluation of RUN_DIR's model "
        "(evaluate's CPU defaults, bf16) on --n test images x --k samples",
    )
    parser.add_argument("--n", type=int, default=8, help="--evaluate: test images")
    parser.add_argument("--k", type=int, default=1024, help="--evaluate: IWAE samples per image")
    parser.add_argument("--data-dir", default=None, help="--evaluate: MNIST directory (default synthetic)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    STEPS = args.steps
    if args.worker and args.evaluate:
        worker_evaluate(args.evaluate, args.data_dir, args.n, args.k, args.narrow_conv_by_transposed)
        return
    if args.worker:
        worker_tfp(args.inter_op) if args.library == "tfp" else worker(
            args.precision, args.transposed_as_conv, args.narrow_conv_by_transposed, not args.no_keep_memory
        )
        return
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_ENABLE_ONEDNN_OPTS="1")
    python = sys.executable
    if args.library == "tfp":
        if not TFP_PYTHON.is_file():
            sys.exit(
                f"{TFP_PYTHON}: not found; create it with `python benchmarks/bench_train.py --setup-tfp`"
            )
        python = str(TFP_PYTHON)
    cmd = [python, __file__, "--worker", "--library", args.library, "--precision", args.precision]
    cmd += ["--steps", str(args.steps)] + (["--transposed-as-conv"] if args.transposed_as_conv else [])
    cmd += ["--no-keep-memory"] if args.no_keep_memory else []
    cmd += ["--narrow-conv-by-transposed"] if args.narrow_conv_by_transposed else []
    if args.inter_op is not None:
        cmd += ["--inter-op", str(args.inter_op)]
    if args.evaluate:
        cmd += ["--evaluate", args.evaluate, "--n", str(args.n), "--k", str(args.k)]
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        STEPS = 1  # one evaluation is logged
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    summarize(out, args.top, args.by_shape)


if __name__ == "__main__":
    main()
