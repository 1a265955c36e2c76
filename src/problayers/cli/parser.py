"""The command line's options (:func:`build_parser`): argparse with one-line errors and typed,
range-checked values, so a bad option fails before anything runs, naming the option."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

__all__ = ["DESCRIPTION", "build_parser"]

DESCRIPTION = (
    "Probabilistic layers for PyTorch and a VAE toolkit: train, evaluate, sample and export VAEs on "
    "binarized MNIST, and fit the regression demo. 'problayers COMMAND --help' for each command."
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``problayers: error: argument --epochs: ...``.
    ``commands``: the subcommands' parsers by name (on the top-level parser)."""

    commands: Mapping[str, argparse.ArgumentParser]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"problayers: error: {' '.join(message.split())} (see {self.prog} --help)\n")


#: The largest integer an option takes: torch's int64 (a seed, a step count above it overflows).
MAX_INT = 2**63 - 1
#: The most epochs a run takes (``problayers.vae.runconfig.MAX_EPOCHS``; not imported: the parser
#: is built before torch is).
MAX_EPOCHS = 100_000


def _int_at_least(minimum: int, maximum: int = MAX_INT) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        if value > maximum:
            most = "2**63 - 1" if maximum == MAX_INT else str(maximum)
            raise argparse.ArgumentTypeError(f"expected an integer <= {most}, got {text!r}")
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


def _directory(text: str) -> str:
    """A directory option's text; an empty one (an unset shell variable) is refused rather than
    taken for the option's absence."""
    if text == "":
        raise argparse.ArgumentTypeError("expected a directory, got an empty path")
    return text


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=_directory,
        default=None,
        help="directory with the four MNIST IDX files (.gz or raw); default: "
        "$PROBLAYERS_MNIST_DIR, then ~/.cache/problayers/mnist, then a download",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")


def _add_weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--online-weights",
        action="store_true",
        help="a run trained with --ema-decay: use its last weights instead of their average",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("problayers")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "(not installed)"


def build_parser() -> _Parser:
    parser = _Parser(prog="problayers", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"problayers {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices
    common = _Parser(add_help=False)  # the subparsers' class: their parents= must be of it too
    common.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also: PROBLAYERS_DEBUG=1)"
    )
    common.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, e.g. one that registers models, priors or objectives of your own "
        "(docs/zoo.md); repeatable; the current directory is searched first (default: none)",
    )

    p = sub.add_parser(
        "train", parents=[common], help="train a VAE on binarized MNIST (the seed model by default)"
    )
    p.add_argument("--out", default="runs/seed", help="run directory (default runs/seed)")
    p.add_argument(
        "--resume", type=_directory, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint"
    )
    p.add_argument(
        "--epochs",
        type=_int_at_least(1, MAX_EPOCHS),
        default=None,
        help="epochs (default 15; with --resume: the total)",
    )
    p.add_argument("--batch-size", type=_positive, default=256, help="images per step (default 256)")
    p.add_argument("--lr", type=_number, default=1e-3, help="(peak) learning rate; may change on --resume")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the run (default 0)")
    p.add_argument(
        "--model",
        default="seed",
        help="registered model name: seed (default; TFP's conv VAE), mlp (784-300-300-40), hvae "
        "(two latent levels), resnet (a wider residual conv VAE, for the GPU); docs/zoo.md",
    )
    # Model options default to None: the model's own default (ModelConfig.for_model).
    p.add_argument("--latent-size", type=_positive, default=None, help="latents (seed 16, mlp 40)")
    p.add_argument("--base-depth", type=_positive, default=None, help="width of the seed's conv layers (32)")
    p.add_argument("--hidden-size", type=_positive, default=None, help="width of an MLP model's layers (300)")
    p.add_argument("--beta", type=_number, default=None, help="KL weight (beta-VAE; default 1)")
    p.add_argument(
        "--exact-kl",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="analytic KL where torch has a formula, else Monte Carlo (default: seed no, zoo yes)",
    )
    p.add_argument(
        "--init",
        choices=["torch", "keras", "he"],
        default=None,
        help="weight initialization: PyTorch's (default), Keras' (Glorot uniform, zero bias) as "
        "TFP's, or He's for the leaky ReLUs",
    )
    p.add_argument(  # no choices: the registry decides (an --import module may add to it)
        "--prior",
        default=None,
        help="p(z): normal, N(0, I) (default), mog, a learned mixture of Gaussians, or vamp, the "
        "VampPrior (zoo models); or one an --import module registers",
    )
    p.add_argument(
        "--prior-components", type=_positive, default=None, help="mixture components / pseudo-inputs (500)"
    )
    p.add_argument(
        "--posterior",
        choices=["gaussian", "iaf"],
        default=None,
        help="q(z|x): a diagonal Gaussian (default) or one pushed through inverse autoregressive flows",
    )
    p.add_argument("--flow-steps", type=_positive, default=None, help="IAF steps (2)")
    p.add_argument(
        "--objective",
        default=None,
        help="elbo (default), iwae: the importance-weighted bound with --num-samples K, or dreg: "
        "the same bound with the DReG gradient; or one an --import module registers",
    )
    p.add_argument(
        "--num-samples",
        type=_positive,
        default=None,
        help="K of --objective iwae/dreg (2 or more, no default); with elbo 1 (the default)",
    )
    p.add_argument(
        "--kl-warmup-steps",
        type=_int_at_least(0),
        default=None,
        help="the KL weight rises linearly from 0 to --beta over this many steps (default 0)",
    )
    p.add_argument(
        "--free-bits", type=_number, default=None, help="KL floor in nats per latent dimension (ELBO)"
    )
    p.add_argument("--train-subset", type=_positive, default=None, help="use the first N training images")
    p.add_argument("--test-subset", type=_positive, default=None, help="use the first N test images")
    p.add_argument(
        "--synthetic",
        type=_positive,  # 0 is the config's "off": as an argument it started an MNIST run
        default=0,
        metavar="N",
        help="train on N generated digits instead of MNIST (smoke tests)",
    )
    p.add_argument(
        "--adam",
        choices=["torch", "keras"],
        default="torch",
        help="torch's Adam (eps 1e-8, default) or tf_keras' update (eps 1e-7 before the bias "
        "correction), for recipes ported from Keras",
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
        help="the device's fastest step options (on a GPU the whole step as one CUDA graph + "
        "channels_last + bf16 + fused Adam; on a CPU what a few measured steps of this model choose: "
        "precision, channels_last, transposed convolutions; cached per machine); "
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
        help="bf16: autocast convolutions (distribution maths stay fp32); given, it replaces the "
        "--fast choice (which may be bf16 on a CPU with native bf16); fp32 with --no-fast",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC convolutions (measured +13%% images/s on the CPU, docs/benchmarks.md)",
    )
    p.add_argument(
        "--transposed-as-conv",
        action="store_true",
        help="transposed convolutions on the convolution's passes, as TensorFlow computes them "
        "(problayers.train.transposed)",
    )
    p.add_argument(
        "--narrow-conv-by-transposed",
        action="store_true",
        help="convolutions with < 16 output channels take the transposed convolution's weight "
        "gradient (problayers.train.transposed)",
    )
    p.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True) (CUDA or CPU)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the whole step as one CUDA graph (CUDA; not with --compile)",
    )
    p.add_argument(
        "--logger",
        choices=["none", "tensorboard"],
        default="none",
        help="tensorboard: scalars (per log step and epoch) and the pictures of every epoch into "
        "RUN_DIR/tensorboard/ (default none)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default on; with --resume: the run's setting, changed where given)",
    )
    _add_data_options(p)

    p = sub.add_parser("evaluate", parents=[common], help="test -ELBO and the IWAE bound of a trained run")
    p.add_argument("run_dir", type=_directory)
    p.add_argument(
        "--iwae-samples",
        type=_int_at_least(0),
        default=5000,
        help="K of the IWAE bound (default 5000; 0: none)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="test images at once (default 4 on a CPU, else 100)",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive,
        default=None,
        help="IWAE samples per image at once (default on a CPU 128, fewer where the decoder's "
        "activations are large; else 500)",
    )
    p.add_argument(
        "--test-subset",
        type=_positive,
        default=None,
        help="the first N test images (default: all of them, whatever the run used while training)",
    )
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the sampling (default 0)")
    p.add_argument(
        "--out",
        default=None,
        help="JSON output (default RUN_DIR/eval.json; never one of the run's own files)",
    )
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the device's fast options (the default unless --precision or --channels-last is "
        "given): on a GPU channels_last and bf16 where it has it, on a CPU the training probe's "
        "choice (given with --precision: that precision, channels_last); --no-fast: fp32, contiguous",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="bf16: autocast the network's layers (distribution maths stay fp32)",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions")
    _add_weights_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_data_options(p)

    p = sub.add_parser(
        "sample", parents=[common], help="PNG grids: prior samples, reconstructions, loss curve"
    )
    p.add_argument("run_dir", type=_directory)
    p.add_argument("--n", type=_positive, default=10, help="images per row")
    _add_weights_option(p)
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the sampling (default 0)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR)")
    _add_data_options(p)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="the trained weights as OUT_DIR/model.safetensors + config.json (the Hugging Face Hub layout)",
    )
    p.add_argument("run_dir", type=_directory)
    p.add_argument("out_dir", help="a new or empty directory (not the run directory)")
    p.add_argument(
        "--force", action="store_true", help="write into a non-empty OUT_DIR (replacing its two files)"
    )
    _add_weights_option(p)

    p = sub.add_parser(
        "regression", parents=[common], help="the 1-D probabilistic regression demo (four PNGs)"
    )
    p.add_argument("--out", default="runs/regression", help="output directory (default runs/regression)")
    p.add_argument(
        "--epochs", type=_positive, default=None, help="epochs of each model (default: the demo's)"
    )
    # the demo seeds its models with seed * 1000 + i: the seed times 1000 must stay an int64
    p.add_argument(
        "--seed", type=_int_at_least(0, MAX_INT // 1000 - 1000), default=0, help="seed (default 0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser
