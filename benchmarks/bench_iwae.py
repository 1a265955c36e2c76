"""Time of ``problayers evaluate``'s IWAE bound: ``problayers.vae.evaluation.evaluate`` with
``iwae_samples=K`` on ``N`` test images, as the CLI calls it.

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
    python benchmarks/bench_iwae.py --device cuda --n 10000 --k 5000       # the GPU target, measured
"""

from __future__ import annotations

import argparse
import contextlib
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
    import torch

    if args.run_dir:
        from problayers.vae.experiment import load_run

        model, _, _ = load_run(args.run_dir, device=str(device))
        return model
    from problayers.vae.models import ModelConfig, build_model

    torch.manual_seed(args.seed)
    return build_model(ModelConfig()).to(device).eval()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=100, help="test images (default 100)")
    p.add_argument("--k", type=int, default=200, help="IWAE samples per image (default 200)")
    p.add_argument("--batch-size", type=int, default=100, help="evaluate's batch size (CLI default 100)")
    p.add_argument(
        "--chunk-size", type=int, default=500, help="samples per example at once (CLI default 500)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--run-dir", default=None, help="a trained run (default: a fresh seed model)")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: synthetic test images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-n", type=int, default=10000)
    p.add_argument("--target-k", type=int, default=5000)
    p.add_argument("--bf16", action="store_true", help="experimental: fastpath.bf16_autocast around evaluate")
    p.add_argument("--channels-last", action="store_true", help="experimental: model in channels_last")
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
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    for name in ("n", "k", "batch_size", "chunk_size", "repeats", "threads", "target_n", "target_k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive int")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
    import torch

    from problayers.train.cpu import cpu_label
    from problayers.train.fastpath import bf16_autocast
    from problayers.vae.evaluation import evaluate

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.no_keep_memory:  # as `problayers evaluate` on a CPU
        from problayers.train.allocator import retain_freed_memory

        print(f"# memory: {retain_freed_memory().reason}", flush=True)
    model = _model(args, device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.transposed_as_conv:
        from problayers.train.transposed import use_convolution_passes

        use_convolution_passes(model)
    if args.narrow_conv_by_transposed:
        from problayers.train.transposed import use_transposed_weight_gradient

        use_transposed_weight_gradient(model)
    test_x = _test_images(args, device)

    def run(k: int) -> tuple[float, dict[str, Any]]:
        ctx = bf16_autocast(model) if args.bf16 else contextlib.nullcontext()
        torch.manual_seed(args.seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with ctx:
            out = evaluate(
                model.encode, model.decode, model.prior(), test_x, batch_size=args.batch_size,
                iwae_samples=k, chunk_size=args.chunk_size,
            )  # fmt: skip
        return time.perf_counter() - t0, out  # evaluate ends with a host transfer: synced

    run(min(args.k, 8))  # warm-up
    times, ones, out = [], [], {}
    for _ in range(args.repeats):
        seconds, out = run(args.k)
        times.append(seconds)
        if args.k > 1:
            ones.append(run(1)[0])
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
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "transposed_as_conv": args.transposed_as_conv,
        "narrow_conv_by_transposed": args.narrow_conv_by_transposed,
        "seconds": times,
        "median_seconds": med,
        "seconds_k1": ones,
        "us_per_image_sample": per_sample_us,
        "us_per_image_fixed": per_image_us,
        "iwae_nll": out["iwae_nll"],
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
    print(f"# {result['data']}; model: {result['model']}; batch {args.batch_size}, chunk {args.chunk_size}")
    print(
        f"IWAE K={args.k} on N={args.n}: median {med:.3f} s over {args.repeats} runs "
        f"({', '.join(f'{t:.3f}' for t in times)}); K=1: {med1:.3f} s; "
        f"{per_sample_us:.1f} us per image-sample + {per_image_us:.1f} us per image; "
        f"IWAE NLL {out['iwae_nll']:.2f} nats, -ELBO {out['neg_elbo']:.2f}"
    )
    label = "measured" if measured else "EXTRAPOLATED as N * (a + b * K) from the measurements above"
    print(f"N={args.target_n}, K={args.target_k}: {result['target_seconds']:.1f} s ({label})")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
