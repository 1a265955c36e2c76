"""The ``problayers`` command line: ``train``, ``evaluate``, ``sample``, ``regression``.

Each subcommand is a function ``(args) -> int``. Every fault ends in one line on stderr and a
non-zero status, without a traceback (:mod:`problayers.errors`): 2 for user mistakes (bad
options, missing or foreign data, a damaged checkpoint or ``config.json``, a run directory in
use), 1 for the environment (disk full, permission denied) or a diverged run, 130/143 for
SIGINT/SIGTERM. ``--debug`` or ``PROBLAYERS_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]

#: What ``train --resume`` may be given besides the run (the rest is the run's config.json).
RESUME_OPTIONS = ("resume", "epochs", "lr", "device", "data_dir", "no_progress", "debug")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``problayers: error: argument --epochs: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"problayers: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


_positive = _int_at_least(1)


def _number(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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
                history = resume(args.resume, dist=dist, **_resume_overrides(args))
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
                    epochs=15 if args.epochs is None else args.epochs,
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


def _resume_overrides(args: argparse.Namespace) -> dict:
    """What ``--resume`` changes: only the options given on the command line, and only those of
    :data:`RESUME_OPTIONS` (any other one is refused, never silently ignored)."""
    given = getattr(args, "given", set())
    refused = sorted(given - set(RESUME_OPTIONS))
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise ValueError(
            f"--resume {args.resume}: {flags} cannot change on resume (the run's config.json fixes them); "
            "--epochs (the total), --lr (constant schedule), --device, --data-dir and --no-progress can"
        )
    overrides: dict = {"progress": not args.no_progress}
    for name in ("epochs", "lr", "device", "data_dir"):
        if name in given:
            overrides[name] = getattr(args, name)
    return overrides


def _given_options(argv: Sequence[str]) -> set[str]:
    """The destinations of the options actually on the command line (not defaulted)."""
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for action in sub._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "func"}


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
    from .rundir import check_output

    out = Path(args.run_dir) / "eval.json" if args.out is None else args.out
    out = check_output(out, args.run_dir, "--out")  # never over the run's own files
    if out.is_dir():
        raise ValueError(f"--out {out}: expected a JSON file path, got a directory")
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
    write_json(out, results)
    print(f"written {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import dataclasses

    from .experiment import load_run, load_test_images
    from .pictures import save_pictures
    from .rundir import check_output, prepare_run_dir

    out_dir = args.run_dir if args.out is None else args.out
    check_output(out_dir, args.run_dir, "--out")
    model, cfg, _ = load_run(args.run_dir, device=args.device, online=args.online_weights)
    cfg = dataclasses.replace(cfg, test_subset=args.n, data_dir=args.data_dir or cfg.data_dir)
    test_x = load_test_images(cfg, next(model.parameters()).device)
    metrics = Path(args.run_dir) / "metrics.jsonl"
    out_dir = prepare_run_dir(out_dir, "--out")
    for path in save_pictures(model, test_x, out_dir, n=args.n, seed=args.seed, metrics=metrics):
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
    parser = _Parser(prog="problayers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also: PROBLAYERS_DEBUG=1)"
    )

    p = sub.add_parser(
        "train", parents=[common], help="train a VAE on binarized MNIST (the seed model by default)"
    )
    p.add_argument("--out", default="runs/seed", help="run directory (default runs/seed)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument(
        "--epochs", type=_positive, default=None, help="epochs (default 15; with --resume: the total)"
    )
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--lr", type=_number, default=1e-3, help="(peak) learning rate; may change on --resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="seed", help="registered model name (default seed)")
    p.add_argument("--latent-size", type=_positive, default=16)
    p.add_argument("--base-depth", type=_positive, default=32, help="width of the conv layers")
    p.add_argument("--beta", type=_number, default=1.0, help="KL weight (beta-VAE)")
    p.add_argument("--exact-kl", action="store_true", help="analytic KL instead of Monte Carlo")
    p.add_argument(
        "--init",
        choices=["torch", "keras", "he"],
        default="torch",
        help="weight initialization: PyTorch's (default), Keras' (Glorot uniform, zero bias) as "
        "TFP's, or He's for the leaky ReLUs",
    )
    p.add_argument("--train-subset", type=_positive, default=None, help="use the first N training images")
    p.add_argument("--test-subset", type=_positive, default=None, help="use the first N test images")
    p.add_argument(
        "--synthetic",
        type=_int_at_least(0),
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

    p = sub.add_parser("evaluate", parents=[common], help="test -ELBO and the IWAE bound of a trained run")
    p.add_argument("run_dir")
    p.add_argument(
        "--iwae-samples", type=_int_at_least(0), default=5000, help="K of the IWAE bound (0: none)"
    )
    p.add_argument("--batch-size", type=_positive, default=100)
    p.add_argument("--chunk-size", type=_positive, default=500, help="IWAE samples per example at once")
    p.add_argument("--test-subset", type=_positive, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help="JSON output (default RUN_DIR/eval.json; never one of the run's own files)",
    )
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

    p = sub.add_parser(
        "sample", parents=[common], help="PNG grids: prior samples, reconstructions, loss curve"
    )
    p.add_argument("run_dir")
    p.add_argument("--n", type=_positive, default=10, help="images per row")
    _add_weights_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR)")
    _add_data_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "regression", parents=[common], help="the 1-D probabilistic regression demo (four PNGs)"
    )
    p.add_argument("--out", default="runs/regression")
    p.add_argument("--epochs", type=_positive, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_regression)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every error ends in one line on stderr and ``SystemExit`` with a
    non-zero status (see :mod:`problayers.errors`), or a traceback with ``--debug``."""
    from .errors import debug_requested, describe, sigterm_raises

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = _given_options(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with sigterm_raises():
            return func(args)
    except SystemExit:
        raise
    except BaseException as err:
        if debug_requested(args.debug):
            raise
        code, line = describe(err)
        parser.exit(code, line + "\n")


if __name__ == "__main__":
    sys.exit(main())
