"""The ``problayers`` command line: ``train``, ``evaluate``, ``sample``, ``regression``.

Each subcommand is a function ``(args) -> int`` in the ``COMMANDS`` table. User mistakes
(bad options, missing data, a foreign checkpoint) print one line ``problayers: error: ...`` and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four MNIST IDX files (.gz or raw); default: "
        "$PROBLAYERS_MNIST_DIR, then ~/.cache/problayers/mnist, then a download",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or ``--resume``); under ``torchrun`` data-parallel with DDP, ``--batch-size`` global.

    Data-parallel, rank 0 alone prints; an error rank 0 reports for every rank (a NaN loss, a bad
    option or run directory checked on rank 0) ends the other ranks silently with the same status.
    """
    from . import distributed
    from .experiment import RunConfig, resume, train
    from .models import ModelConfig
    from .training import NonFiniteLossError

    rank = 0
    try:
        with distributed.launch() as dist:
            rank = 0 if dist is None else dist.rank
            if args.resume:
                overrides = {"progress": not args.no_progress}
                if args.epochs is not None:
                    overrides["epochs"] = args.epochs
                if args.device != "auto":
                    overrides["device"] = args.device
                history = resume(args.resume, dist=dist, **overrides)
                run_dir = args.resume
            else:
                model = ModelConfig(
                    name=args.model,
                    latent_size=args.latent_size,
                    base_depth=args.base_depth,
                    beta=args.beta,
                    exact_kl=args.exact_kl,
                    init=args.init,
                )
                fast = _fast_options(args, data_parallel=dist is not None and dist.world_size > 1)
                cfg = RunConfig(
                    model=model,
                    epochs=args.epochs or 15,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=args.seed,
                    device=args.device,
                    data_dir=args.data_dir,
                    synthetic=args.synthetic,
                    train_subset=args.train_subset,
                    test_subset=args.test_subset,
                    progress=not args.no_progress,
                    lr_schedule=args.lr_schedule,
                    ema_decay=args.ema_decay,
                    **fast,
                )
                history = train(cfg, args.out, dist=dist)
                run_dir = args.out
    except (NonFiniteLossError, distributed.RankZeroError) as err:
        if rank == 0:
            raise
        return 1 if isinstance(err, NonFiniteLossError) else 2  # rank 0 reports it
    if history and rank == 0:
        last = history[-1]
        print(
            f"epoch {last['epoch']}: test -ELBO {last['test_neg_elbo']:.2f} nats "
            f"(recon {last['test_recon']:.2f}, KL {last['test_kl']:.2f}); run in {run_dir}"
        )
    return 0


def _fast_options(args: argparse.Namespace, data_parallel: bool) -> dict:
    """RunConfig's step options. ``--fast`` (the default when no step flag is given and the run is
    single-process): the device's fastest defaults (``problayers.fastpath.fastest_defaults``; on
    CUDA also fused Adam), to which explicit flags add. With step flags but no ``--fast``: those
    flags alone. ``--no-fast`` or a data-parallel run: the plain eager step plus explicit flags."""
    from .experiment import step_options

    flags = (
        args.compile,
        args.compile_mode,
        args.precision,
        args.channels_last,
        args.fused_adam,
        args.cuda_graph,
    )
    explicit = any(flag not in (None, False) for flag in flags)
    fast = args.fast if args.fast is not None else not (explicit or data_parallel)
    opts = step_options(fast, args.device)
    if args.compile:
        opts["compile"] = True
    if args.compile_mode is not None:
        opts["compile"], opts["compile_mode"] = True, args.compile_mode
    if args.precision is not None:
        opts["precision"] = args.precision
    opts["channels_last"] = opts["channels_last"] or args.channels_last
    opts["fused_adam"] = opts["fused_adam"] or args.fused_adam
    opts["cuda_graph"] = opts["cuda_graph"] or args.cuda_graph
    return opts


def cmd_evaluate(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses
    import time

    import torch

    from .checkpoint import write_json
    from .evaluation import evaluate, format_table
    from .experiment import load_run, load_test_images

    model, cfg, info = load_run(args.run_dir, device=args.device, online=args.online_weights)
    if args.data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
    if args.test_subset is not None:
        cfg = dataclasses.replace(cfg, test_subset=args.test_subset)
    device = next(model.parameters()).device
    test_x = load_test_images(cfg, device)
    # --fast (the default): channels_last, and bf16 on a GPU that has it (measured: the IWAE
    # bound agreed with fp32 to 0.01 nats, 2.9x faster on an H100; bf16 is slower on a CPU
    # without AMX). Explicit --precision / --channels-last replace it.
    explicit = args.precision is not None or args.channels_last
    fast = args.fast if args.fast is not None else not explicit
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    args.precision = args.precision or ("bf16" if fast and bf16_ok else "fp32")
    args.channels_last = args.channels_last or fast
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    precision = contextlib.nullcontext()
    if args.precision == "bf16":
        from .fastpath import bf16_autocast

        precision = bf16_autocast(model)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with precision:
        results = evaluate(
            model.encode,
            model.decode,
            model.prior(),
            test_x,
            batch_size=args.batch_size,
            iwae_samples=args.iwae_samples,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
        )
    results.update(
        epoch=info["epoch"],
        weights="online" if args.online_weights or cfg.ema_decay is None else f"ema {cfg.ema_decay}",
        seed=args.seed,
        device=str(next(model.parameters()).device),
        precision=args.precision,
        channels_last=args.channels_last,
        seconds=time.perf_counter() - start,
    )
    print(format_table(results))
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval.json"
    write_json(out, results)
    print(f"written {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import dataclasses

    from .experiment import load_run, load_test_images
    from .pictures import save_pictures

    model, cfg, _ = load_run(args.run_dir, device=args.device, online=args.online_weights)
    cfg = dataclasses.replace(cfg, test_subset=args.n, data_dir=args.data_dir or cfg.data_dir)
    test_x = load_test_images(cfg, next(model.parameters()).device)
    metrics = Path(args.run_dir) / "metrics.jsonl"
    for path in save_pictures(
        model, test_x, args.out or args.run_dir, n=args.n, seed=args.seed, metrics=metrics
    ):
        print(f"written {path}")
    return 0


def _add_weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--online-weights",
        action="store_true",
        help="a run trained with --ema-decay: use its last weights instead of their average",
    )


def cmd_regression(args: argparse.Namespace) -> int:
    from .demos import regression

    results = regression.run(args.out, epochs=args.epochs, seed=args.seed, show_progress=not args.no_progress)
    for name, value in results.items():
        print(f"{name}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="problayers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VAE on binarized MNIST (the seed model by default)")
    p.add_argument("--out", default="runs/seed", help="run directory (default runs/seed)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 15; with --resume: total)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="seed", help="registered model name (default seed)")
    p.add_argument("--latent-size", type=int, default=16)
    p.add_argument("--base-depth", type=int, default=32, help="width of the conv layers")
    p.add_argument("--beta", type=float, default=1.0, help="KL weight (beta-VAE)")
    p.add_argument("--exact-kl", action="store_true", help="analytic KL instead of Monte Carlo")
    p.add_argument(
        "--init",
        choices=["torch", "keras", "he"],
        default="torch",
        help="weight initialization: PyTorch's (default), Keras' (Glorot uniform, zero bias) as "
        "TFP's, or He's for the leaky ReLUs",
    )
    p.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="use the first N test images")
    p.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="train on N generated digits instead of MNIST (smoke tests)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine", "onecycle", "wsd"],
        default="constant",
        help="learning-rate schedule over the run, peak --lr (default constant)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        metavar="D",
        help="also keep an exponential moving average of the weights (decay D, e.g. 0.998) and "
        "report, evaluate and sample with it (default: none, the last weights)",
    )
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the device's fastest step options (problayers.fastpath.fastest_defaults: on a GPU the "
        "whole step as one CUDA graph + channels_last + bf16 + fused Adam, on a CPU channels_last); "
        "the default unless a step flag below is given or the run is data-parallel; --no-fast: the "
        "plain eager step",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        default=None,
        help="torch.compile mode (implies --compile; reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="bf16: autocast convolutions (distribution maths stay fp32); default fp32",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC convolutions (measured +13%% images/s on the CPU, docs/benchmarks.md)",
    )
    p.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True) (CUDA)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the whole step as one CUDA graph (CUDA; not with --compile)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_data_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test -ELBO and the IWAE bound of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--iwae-samples", type=int, default=5000, help="K of the IWAE bound (0: none)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=500, help="IWAE samples per example at once")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output (default RUN_DIR/eval.json)")
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last, and bf16 on a GPU (the default unless --precision or --channels-last "
        "is given); --no-fast: fp32, the layout as trained",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="bf16: autocast convolutions (distribution maths stay fp32)",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions")
    _add_weights_option(p)
    p.add_argument("--no-progress", action="store_true")
    _add_data_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="PNG grids: prior samples, reconstructions, loss curve")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=10, help="images per row")
    _add_weights_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR)")
    _add_data_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("regression", help="the 1-D probabilistic regression demo (four PNGs)")
    p.add_argument("--out", default="runs/regression")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_regression)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import MNISTError
    from .training import NonFiniteLossError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except NonFiniteLossError as err:
        print(f"problayers: {err}", file=sys.stderr)
        return 1
    except (ValueError, MNISTError) as err:
        # User mistakes (bad option values, missing or corrupt data, a foreign checkpoint).
        parser.exit(2, f"problayers: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "problayers: interrupted\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
