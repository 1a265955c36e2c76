"""Time of ``problayers evaluate``'s IWAE bound: ``problayers.vae.evaluation.evaluate`` with
``iwae_samples=K`` on ``N`` test images, as the CLI calls it: the same options by default
(``problayers.vae.evalsetup.prepare_evaluation``: on a CPU the probe's precision and layout, 4
images x 128 samples per decoder call (fewer where its activations are large), freed memory
kept; on a GPU bf16 where it has it, channels_last, 100 x 500), and the CLI's ``--no-fast``,
``--precision`` and ``--channels-last``.

The seed model is a fresh one (seed ``--seed``) or a trained run's (``--run-dir``): the time does
not depend on the weights. Test images: MNIST's first ``N`` (``--data-dir``) binarized with the
fixed test seed, or synthetic ones. Reports the seconds of each of ``--repeats`` timed calls
(after one untimed call with a small ``K`` that warms up the kernels) and, unless ``N`` and ``K``
are the targets, an extrapolation to ``--target-n`` x ``--target-k`` (default the issue's
10000 x 5000), labelled as such: the time is modelled as ``N * (a + b * K)`` (each importance
sample decodes one latent; ``a`` is the per-image cost of the ELBO pass and of the encoder),
with ``a + b`` measured at ``K = 1`` and ``b`` from the difference to ``K``.

Examples::

    python benchmarks/bench_iwae.py --device cpu --n 100 --k 100           # CPU: extrapolated
    python benchmarks/bench_iwae.py --device cpu --n 100 --k 100 --no-fast # fp32, NCHW
    python benchmarks/bench_iwae.py --device cpu --n 100 --k 1000 --profile # where the time goes
    python benchmarks/bench_iwae.py --device cuda --n 10000 --k 5000       # the GPU target, measured
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _test_images(args, device):
    from problayers.vae import data as mnist

    if args.data_dir:
        images, _ = mnist.load_mnist(args.data_dir, split="test", download=False)
        images = images[: args.n]
        if len(images) < args.n:
            raise SystemExit(f"--n {args.n}: the test set has {len(images)} images")
    else:
        images, _ = mnist.synthetic_mnist(args.n, seed=args.seed + 1)
    return mnist.binarize_fixed(images).to(device)  # (N, 1, 28, 28)


def _model(args, device):
    """The model and its run config (the probe's cache key), as ``problayers evaluate`` loads them."""
    import torch

    if args.run_dir:
        from problayers.vae.experiment import load_run

        model, cfg, _ = load_run(args.run_dir, device=str(device))
        return model, cfg
    from problayers.vae.models import build_model
    from problayers.vae.runconfig import RunConfig

    torch.manual_seed(args.seed)
    cfg = RunConfig()
    return build_model(cfg.model).to(device).eval(), cfg


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=100, help="test images (default 100)")
    p.add_argument("--k", type=int, default=200, help="IWAE samples per image (default 200)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="test images per decoder call (the CLI's: 4 on a CPU, else 100)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="samples per image per call (the CLI's: on a CPU 128, fewer for large activations; else 500)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--run-dir", default=None, help="a trained run (default: a fresh seed model)")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: synthetic test images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-n", type=int, default=10000)
    p.add_argument("--target-k", type=int, default=5000)
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="as `problayers evaluate --fast` (the default unless an option below is given); "
        "--no-fast: fp32, NCHW",
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="as `problayers evaluate`")
    p.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    p.add_argument("--channels-last", action="store_true", help="model in channels_last")
    p.add_argument(
        "--transposed-as-conv",
        action="store_true",
        help="the decoder's transposed convolutions on the "
        "convolution's passes (problayers.train.transposed)",
    )
    p.add_argument(
        "--narrow-conv-by-transposed",
        action="store_true",
        help="the decoder's one-channel last convolution as depthwise + channel sum "
        "(problayers.train.transposed.use_transposed_weight_gradient)",
    )
    p.add_argument(
        "--no-keep-memory",
        action="store_true",
        help="CPU: let glibc give freed blocks back (evaluate keeps them by default since 2026-12-05)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's operators of one more run, not timed (by self time)",
    )
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    for name in ("n", "k", "batch_size", "chunk_size", "repeats", "threads", "target_n", "target_k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive int")
    if args.bf16:
        if args.precision == "fp32":
            p.error("--bf16: expected no --precision fp32 beside it")
        args.precision = "bf16"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
    import torch

    from problayers.train.cpu import cpu_label
    from problayers.vae.evalsetup import prepare_evaluation
    from problayers.vae.evaluation import evaluate

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, cfg = _model(args, device)
    test_x = _test_images(args, device)
    # The CLI's choice; --transposed-as-conv, which the CLI does not offer, counts as an explicit option.
    setup = prepare_evaluation(
        model, cfg, test_x, fast=False if args.transposed_as_conv and args.fast is None else args.fast,
        precision=args.precision, channels_last=args.channels_last,
        narrow_conv_by_transposed=args.narrow_conv_by_transposed, batch_size=args.batch_size,
        chunk_size=args.chunk_size, keep_memory=not args.no_keep_memory,
    )  # fmt: skip
    for line in setup.report():
        print(f"# {line}", flush=True)
    if args.transposed_as_conv:
        from problayers.train.transposed import use_convolution_passes

        use_convolution_passes(model)

    def run(k: int) -> tuple[float, dict[str, Any]]:
        torch.manual_seed(args.seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with setup.autocast(model):
            out = evaluate(
                model.encode, model.decode, model.prior(), test_x, batch_size=setup.batch_size,
                iwae_samples=k, chunk_size=setup.chunk_size,
            )  # fmt: skip
        return time.perf_counter() - t0, out  # evaluate ends with a host transfer: synced

    run(min(args.k, 8))  # warm-up
    times, ones, out = [], [], {}
    for _ in range(args.repeats):
        seconds, out = run(args.k)
        times.append(seconds)
        if args.k > 1:
            ones.append(run(1)[0])
    profile_table = None
    if args.profile:  # one more run, apart from the timed ones (the profiler slows what it sees)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            run(args.k)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        profile_table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=40)
    med = statistics.median(times)
    med1 = statistics.median(ones) if ones else med
    per_sample_us = (med - med1) / (args.n * (args.k - 1)) * 1e6 if args.k > 1 else float("nan")
    per_image_us = med1 / args.n * 1e6 - per_sample_us  # a: the K-independent part
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cpu": cpu_label(),
        "threads": torch.get_num_threads(),
        "n": args.n,
        "k": args.k,
        **setup.options(),
        "bf16": setup.precision == "bf16",
        "transposed_as_conv": args.transposed_as_conv,
        "memory_kept": bool(setup.memory and setup.memory.applied),
        "step_choice": setup.step_choice.record() if setup.step_choice else None,
        "seconds": times,
        "median_seconds": med,
        "seconds_k1": ones,
        "us_per_image_sample": per_sample_us,
        "us_per_image_fixed": per_image_us,
        "iwae_nll": out["iwae_nll"],
        "profile": profile_table,
        "neg_elbo": out["neg_elbo"],
        "load_average": os.getloadavg(),
        "data": f"MNIST test images from {args.data_dir}" if args.data_dir else "synthetic test images",
        "model": args.run_dir or "fresh seed model (untrained)",
    }
    measured = (args.n, args.k) == (args.target_n, args.target_k)
    extrapolated = args.target_n * (per_image_us + per_sample_us * args.target_k) / 1e6
    result["target_seconds"] = med if measured else extrapolated
    result["target_is_extrapolated"] = not measured
    print(f"# {result['cpu']}; torch {result['torch']}, device {device}, threads {result['threads']}")
    print(f"# load average (1/5/15 min) {result['load_average']}")
    print(
        f"# {result['data']}; model: {result['model']}; {setup.precision}, channels_last "
        f"{setup.channels_last}, narrow convolutions depthwise {setup.narrow_conv_by_transposed}; "
        f"batch {setup.batch_size}, chunk {setup.chunk_size}"
    )
    print(
        f"IWAE K={args.k} on N={args.n}: median {med:.3f} s over {args.repeats} runs "
        f"({', '.join(f'{t:.3f}' for t in times)}); K=1: {med1:.3f} s; "
        f"{per_sample_us:.1f} us per image-sample + {per_image_us:.1f} us per image; "
        f"IWAE NLL {out['iwae_nll']:.2f} nats, -ELBO {out['neg_elbo']:.2f}"
    )
    if profile_table:
        print(f"# torch.profiler, one more run of K={args.k} on N={args.n}:\n{profile_table}")
    label = "measured" if measured else "EXTRAPOLATED as N * (a + b * K) from the measurements above"
    print(f"N={args.target_n}, K={args.target_k}: {result['target_seconds']:.1f} s ({label})")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
