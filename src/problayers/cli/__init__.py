"""The ``problayers`` command line: ``train``, ``evaluate``, ``sample``, ``export``, ``regression``.

Each subcommand is a function ``(args) -> int``. Every fault ends in one line on stderr and a
non-zero status, without a traceback (:mod:`problayers.cli.errors`): 2 for user mistakes (bad
options, missing or foreign data, a damaged checkpoint or ``config.json``, a run directory in
use), 1 for the environment (disk full, permission denied) or a diverged run, 130/143 for
SIGINT/SIGTERM. ``--debug`` or ``PROBLAYERS_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .parser import build_parser

__all__ = ["build_parser", "main"]

#: What ``train --resume`` may be given besides the run (the rest is the run's config.json).
RESUME_OPTIONS = ("resume", "epochs", "lr", "device", "data_dir", "progress", "debug", "imports")


#: ``train`` options that are ModelConfig fields (None: the model's default).
_MODEL_OPTIONS = (
    "latent_size", "base_depth", "hidden_size", "beta", "exact_kl", "init", "prior",
    "prior_components", "posterior", "flow_steps", "objective", "num_samples",
    "kl_warmup_steps", "free_bits",
)  # fmt: skip


def _model_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in _MODEL_OPTIONS if getattr(args, name) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or ``--resume``); under ``torchrun`` data-parallel with DDP, ``--batch-size`` global.

    Data-parallel, rank 0 alone prints; an error rank 0 reports for every rank (a NaN loss, a bad
    option or run directory checked on rank 0) ends the other ranks silently with the same status.
    """
    from ..train import distributed
    from ..train.divergence import NonFiniteLossError
    from ..vae.experiment import RunConfig, resume, train
    from ..vae.models import ModelConfig
    from .errors import describe

    rank = 0
    try:
        with distributed.launch() as dist:
            rank = 0 if dist is None else dist.rank
            if args.resume is not None:
                history = resume(args.resume, dist=dist, **_resume_overrides(args))
                run_dir = args.resume
            else:
                model = ModelConfig.for_model(args.model, **_model_options(args))
                data_parallel = dist is not None and dist.world_size > 1
                fast = _fast_options(args, data_parallel=data_parallel)
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
                    progress=args.progress is not False,
                    lr_schedule=args.lr_schedule,
                    adam=args.adam,
                    ema_decay=args.ema_decay,
                    logger=args.logger,
                    **fast,
                )
                if not cfg.auto_step and rank == 0:  # a probe prints its own line
                    print(_step_line(cfg, args, data_parallel), flush=True)
                history = train(cfg, args.out, dist=dist)
                run_dir = args.out
    except (NonFiniteLossError, distributed.RankZeroError) as err:
        if rank == 0:
            raise
        if isinstance(err, NonFiniteLossError):
            return 1  # rank 0 reports it
        return 2 if err.error is None else describe(err.error)[0]  # rank 0's status
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
    given: set[str] = getattr(args, "given", set())
    refused = sorted(given - set(RESUME_OPTIONS))
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise ValueError(
            f"--resume {args.resume}: {flags} cannot change on resume (the run's config.json fixes them); "
            "--epochs (the total), --lr (constant), --device, --data-dir, --[no-]progress, --import can"
        )
    overrides: dict = {} if args.progress is None else {"progress": args.progress}  # else the run's
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
    return set(vars(parser.parse_args(argv))) - {"command"}


def _fast_options(args: argparse.Namespace, data_parallel: bool) -> dict:
    """RunConfig's step options. ``--fast`` (the default when no step flag is given and the run is
    single-process): the device's fastest defaults (``problayers.train.fastpath.fastest_defaults``, and
    fused Adam on CUDA and the CPU), to which explicit flags add. With step flags but no ``--fast``: those
    flags alone. ``--no-fast`` or a data-parallel run: the plain eager step plus explicit flags."""
    from ..vae.experiment import step_options

    explicit = _explicit(args)
    if data_parallel and args.fast:  # named as typed (the experiment would name what it sets)
        raise ValueError(
            "--fast: the fast step is single-process for now; drop it for data-parallel training"
        )
    fast = args.fast if args.fast is not None else not (explicit or data_parallel)
    opts = step_options(fast, args.device)
    if args.compile:
        opts["compile"] = True
    if args.compile_mode is not None:
        opts["compile"], opts["compile_mode"] = True, args.compile_mode
    if args.precision is not None:
        opts["precision"] = args.precision
    opts["channels_last"] = opts["channels_last"] or args.channels_last
    opts["transposed_as_conv"] = opts["transposed_as_conv"] or args.transposed_as_conv
    opts["narrow_conv_by_transposed"] = opts["narrow_conv_by_transposed"] or args.narrow_conv_by_transposed
    opts["fused_adam"] = opts["fused_adam"] or args.fused_adam
    opts["cuda_graph"] = opts["cuda_graph"] or args.cuda_graph
    opts["auto_step"] = opts["auto_step"] and not explicit  # given flags are not measured over
    if args.adam == "keras" and not args.cuda_graph:  # its eps changes every step: no graph
        opts["cuda_graph"] = False
    return opts


def _step_line(cfg: Any, args: argparse.Namespace, data_parallel: bool) -> str:
    """The one line that says which step options a run uses and why (a CPU probe says its own)."""
    names = (
        "compile",
        "channels_last",
        "transposed_as_conv",
        "narrow_conv_by_transposed",
        "fused_adam",
        "cuda_graph",
    )
    on = [name for name in names if getattr(cfg, name)]
    what = ", ".join([cfg.precision, *on])
    if data_parallel:
        why = "data-parallel: the eager step"
    elif args.fast is False:
        why = "--no-fast: the eager step" + (" and the options given" if on or _explicit(args) else "")
    elif args.fast is None and not on and cfg.precision == "fp32":
        why = "the eager step"
    elif args.fast is None:
        why = "the options given"
    else:
        why = "the device's fastest defaults" + (
            " and the options given" if args.fast and _explicit(args) else ""
        )
    return f"step: {what} ({why})"


def _explicit(args: argparse.Namespace) -> bool:
    flags = (
        args.compile,
        args.compile_mode,
        args.precision,
        args.channels_last,
        args.transposed_as_conv,
        args.narrow_conv_by_transposed,
        args.fused_adam,
        args.cuda_graph,
    )
    return any(flag not in (None, False) for flag in flags)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    import torch

    from ..train.checkpoint import write_json
    from ..vae.evalsetup import prepare_evaluation
    from ..vae.evaluation import evaluate, format_table, non_finite_bounds
    from ..vae.experiment import load_run, load_test_images
    from ..vae.rundir import check_output, check_writable

    out = Path(args.run_dir) / "eval.json" if args.out is None else args.out
    out = check_output(out, args.run_dir, "--out")  # never over the run's own files
    check_writable(out, "--out")  # before the evaluation, not after it
    model, cfg, info = load_run(args.run_dir, device=args.device, online=args.online_weights)
    if args.data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
    # all the test images unless --test-subset: the run's own subset sped up its epochs' reports
    cfg = dataclasses.replace(cfg, test_subset=args.test_subset)
    device = next(model.parameters()).device
    test_x = load_test_images(cfg, device)
    # --fast (the default) or explicit --precision / --channels-last: see vae/evalsetup.py
    setup = prepare_evaluation(
        model,
        cfg,
        test_x,
        fast=args.fast,
        precision=args.precision,
        channels_last=args.channels_last,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
    )
    for line in setup.report():
        print(line, flush=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with setup.autocast(model), torch.no_grad():  # no graph kept for a trained prior (VampPrior)
        results = evaluate(
            model.encode,
            model.decode,
            model.prior(),
            test_x,
            batch_size=setup.batch_size,
            iwae_samples=args.iwae_samples,
            chunk_size=setup.chunk_size,
            progress=not args.no_progress,
        )
    results.update(
        epoch=info["epoch"],
        weights="online" if args.online_weights or cfg.ema_decay is None else f"ema {cfg.ema_decay}",
        seed=args.seed,
        device=str(next(model.parameters()).device),
        **setup.options(),
        seconds=time.perf_counter() - start,
    )
    if setup.memory is not None:
        results["memory"] = setup.memory.record()
    if setup.step_choice is not None:
        results["step_choice"] = setup.step_choice.record()
    print(format_table(results))
    write_json(out, results)
    print(f"written {out}")
    bad = non_finite_bounds(results)
    if bad:  # recorded, but not a result a script may take (status 1, as for a diverged run)
        line = f"problayers: error: {', '.join(bad)}: not finite (a diverged or damaged model)"
        print(line, file=sys.stderr)
        return 1
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import dataclasses

    from ..vae.experiment import load_run, load_test_images
    from ..vae.pictures import save_pictures
    from ..vae.rundir import check_output, made_dir

    out_dir = args.run_dir if args.out is None else args.out
    check_output(out_dir, args.run_dir, "--out")
    model, cfg, _ = load_run(args.run_dir, device=args.device, online=args.online_weights)
    cfg = dataclasses.replace(cfg, test_subset=None, data_dir=args.data_dir or cfg.data_dir)
    test_x = load_test_images(cfg, next(model.parameters()).device)  # fixed per image: a prefix is a subset
    if args.n > len(test_x):
        raise ValueError(f"--n: expected at most the {len(test_x)} test images, got {args.n}")
    test_x = test_x[: args.n]
    metrics = Path(args.run_dir) / "metrics.jsonl"
    with made_dir(out_dir, "--out") as out:
        for path in save_pictures(model, test_x, out, n=args.n, seed=args.seed, metrics=metrics):
            print(f"written {path}")
    if not metrics.is_file():
        print(f"no loss curve: {metrics} is missing")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..vae.experiment import load_run
    from ..vae.pretrained import check_out_dir, save_pretrained

    check_out_dir(args.out_dir, force=args.force, run_dir=args.run_dir)  # before the run is read
    model, cfg, _ = load_run(args.run_dir, device="cpu", online=args.online_weights)
    for path in save_pretrained(model, cfg.model, args.out_dir, force=args.force, run_dir=args.run_dir):
        print(f"written {path}")
    return 0


def cmd_regression(args: argparse.Namespace) -> int:
    from ..demos import regression
    from ..vae.rundir import made_dir

    with made_dir(args.out, "--out"):  # "" is refused, not taken as the current directory
        results = regression.run(
            args.out, epochs=args.epochs, seed=args.seed, show_progress=not args.no_progress
        )
    for name, value in results.items():
        print(f"{name}: {value}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "export": cmd_export,
    "regression": cmd_regression,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every error ends in one line on stderr and ``SystemExit`` with a
    non-zero status (see :mod:`problayers.cli.errors`), or a traceback with ``--debug``."""
    from ..train.errors import sigterm_raises
    from .errors import debug_requested, describe
    from .plugins import import_modules

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's parser: its --help lists what it takes
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.given = _given_options(argv)
    func: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        with sigterm_raises():
            import_modules(args.imports)
            return func(args)
    except SystemExit:
        raise
    except BaseException as err:
        if debug_requested(args.debug):
            raise
        code, line = describe(err)
        parser.exit(code, _as_options(line, parser.commands[args.command], args) + "\n")


def entry_point() -> None:
    """``problayers`` and ``python -m problayers``: :func:`main`, then the exit with its status.
    Once the command's outcome is settled (its files written, its last line printed), a SIGINT
    or SIGTERM is ignored: arriving while Python and torch shut down, it printed a traceback or
    ended a finished command silently with 130/143."""
    try:
        code = main()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


def _as_options(line: str, command: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``line`` with a leading field name (``batch_size:``, ``flow_steps=3:``, ``compile/channels_last:``)
    written as the command's option (``--batch-size:``, ``--flow-steps 3:``, ``--compile/--channels-last:``):
    what the user typed."""
    match = re.match(r"(problayers: error: )([a-z_]+(?:/[a-z_]+)*)(?:=(\S+))?:", line)
    if match is None:
        return line
    fields = match.group(2).split("/")
    actions = {a.dest: a for a in command._actions if a.option_strings}
    flags = {dest: a.option_strings[0] for dest, a in actions.items()}
    value = match.group(3)
    if (
        len(fields) == 1
        and value in ("True", "False")
        and getattr(actions.get(fields[0]), "nargs", None) == 0
    ):
        strings = actions[fields[0]].option_strings  # a flag: --exact-kl or --no-exact-kl, no value
        negative = [o for o in strings if o.startswith("--no-")]
        flags[fields[0]] = negative[0] if value == "False" and negative else strings[0]
        value = None
    if args.command == "train":
        flags["run_dir"] = "--resume" if args.resume else "--out"
        flags["name"] = "--model"  # ModelConfig's field
    if not all(field in flags for field in fields) or (len(fields) > 1 and value is not None):
        return line
    shown = f" {value}" if value is not None else ""
    return f"{match.group(1)}{'/'.join(flags[f] for f in fields)}{shown}:{line[match.end() :]}"


if __name__ == "__main__":
    entry_point()
