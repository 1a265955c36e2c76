"""TFP's Bayesian MNIST example (LeNet-5 of Flipout layers) and its problayers port, side by side.

    python benchmarks/tfp_bnn.py --data-dir ../shared/data/mnist --seeds 0,1 --epochs 10 \\
        --out docs/results/tfp-bnn-cpu

TFP's ``examples/bayesian_neural_network.py`` (its TF2 version) trains LeNet-5 with
``Convolution2DFlipout`` and ``DenseFlipout`` layers on MNIST: every kernel has a mean-field
normal posterior (TFP's defaults), a standard-normal prior and the divergence
``lambda q, p, _: kl_divergence(q, p) / 60000``; the loss is the categorical cross-entropy of the
softmax output plus ``sum(model.losses)`` (the negative ELBO per example); Adam 1e-3, batch 128,
the 60000 training images in order (``2 * x / 255 - 1``), 10 epochs. This script runs that
program (``--worker tfp``, in ``.tfp-venv``) and the same program written with problayers
(``--worker problayers``): ``pl.Conv2dFlipout``/``pl.DenseFlipout`` with the same divergence
function, ``KerasAdam`` (Keras' epsilon), the cross-entropy of the logits. One process at a time
(each uses the cores it is given), one after another for each seed. ``--libraries`` may add
``tfp-onednn``: TFP with ``TF_ENABLE_ONEDNN_OPTS=1`` (TensorFlow turns its oneDNN kernels on by
default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX), and ``problayers-compile``:
the port's forward and loss under ``torch.compile`` (inductor).

Each worker reports, as one ``RESULT {json}`` line: at the start, the KL term (``sum of the
layers' KL / 60000``, exact, so the two initializations can be compared) and the cross-entropy of
the first batch; per epoch, the mean loss and accuracy of its batches (what the example prints),
the KL term at its end, its training seconds and the test accuracy of one weight draw; at the
end, over ``--mc-draws`` weight draws of the 10000 test images: the accuracy of the mean predictive
probabilities, the labels' negative log-likelihood under them (nats), and the example's own
"held-out nats" (the mean log of *all* ten mean probabilities, not only the label's). The
orchestrator writes ``<out>/<library>-seed<N>.json`` atomically, with the CPU and the date.
Needs ``.tfp-venv`` for TFP (``python benchmarks/bench_train.py --setup-tfp``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TFP_PYTHON = HERE.parent / ".tfp-venv" / "bin" / "python"
NUM_TRAIN = 60000  # the example's NUM_TRAIN_EXAMPLES: the KL's divisor
#: tfp: TensorFlow's default kernels on this CPU; problayers-compile: the loss under torch.compile
LIBRARIES = ("tfp", "tfp-onednn", "problayers", "problayers-compile")


def _data(args):
    """The example's data: ``2 * x / 255 - 1`` NHWC float32, integer labels; numpy only."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bench_data import load_split

    (xtr, ytr), (xte, yte) = load_split(args.data_dir, "train"), load_split(args.data_dir, "test")
    n, m = args.train_images, args.test_images

    def prep(x):
        return (2.0 * (x.astype(np.float32) / 255.0) - 1.0)[..., None]  # (N, 28, 28, 1)

    return prep(xtr[:n]), ytr[:n], prep(xte[:m]), yte[:m]


def _summary(labels, p):
    """Scores of the mean predictive probabilities ``p`` ``(N, 10)`` (numpy)."""
    import numpy as np

    return {
        "test_accuracy": float((p.argmax(1) == labels).mean()),
        "test_nll": float(-np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-30)).mean()),
        "example_heldout_nats": float(np.log(np.maximum(p, 1e-30)).mean()),
    }


# ------------------------------------------------------------------------------------------------ models
def tfp_model(tf, tfp, tfk):
    """The example's LeNet-5 (tf_keras), each layer's KL divided by 60000; built for NHWC 28x28x1."""

    def kl_fn(q, p, _):  # the example's kl_divergence_function
        return tfp.distributions.kl_divergence(q, p) / tf.cast(NUM_TRAIN, dtype=tf.float32)

    relu, conv = tf.nn.relu, tfp.layers.Convolution2DFlipout
    model = tfk.Sequential([
        conv(6, kernel_size=5, padding="SAME", kernel_divergence_fn=kl_fn, activation=relu),
        tfk.layers.MaxPooling2D(pool_size=[2, 2], strides=[2, 2], padding="SAME"),
        conv(16, kernel_size=5, padding="SAME", kernel_divergence_fn=kl_fn, activation=relu),
        tfk.layers.MaxPooling2D(pool_size=[2, 2], strides=[2, 2], padding="SAME"),
        conv(120, kernel_size=5, padding="SAME", kernel_divergence_fn=kl_fn, activation=relu),
        tfk.layers.Flatten(),
        tfp.layers.DenseFlipout(84, kernel_divergence_fn=kl_fn, activation=relu),
        tfp.layers.DenseFlipout(10, kernel_divergence_fn=kl_fn, activation=tf.nn.softmax),
    ])  # fmt: skip
    model.build(input_shape=[None, 28, 28, 1])
    return model


def problayers_model():
    """The port: the same LeNet-5 of problayers layers (NCHW), ending in logits."""
    import torch
    import torch.distributions as D
    from torch import nn

    import problayers as pl

    def kl_fn(q, p, _):  # the example's kl_divergence_function, as written
        return D.kl_divergence(q, p) / NUM_TRAIN

    relu = torch.relu
    return nn.Sequential(
        pl.Conv2dFlipout(1, 6, 5, padding="same", kernel_divergence_fn=kl_fn, activation=relu),
        nn.MaxPool2d(2),
        pl.Conv2dFlipout(6, 16, 5, padding="same", kernel_divergence_fn=kl_fn, activation=relu),
        nn.MaxPool2d(2),
        pl.Conv2dFlipout(16, 120, 5, padding="same", kernel_divergence_fn=kl_fn, activation=relu),
        nn.Flatten(),
        pl.DenseFlipout(120 * 7 * 7, 84, kernel_divergence_fn=kl_fn, activation=relu),
        pl.DenseFlipout(84, 10, kernel_divergence_fn=kl_fn),  # logits: the softmax is in the loss
    )


# -------------------------------------------------------------------------------------------- TFP worker
def _tfp_worker(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tfk.utils.set_random_seed(args.seed)
    xtr, ytr, xte, yte = _data(args)
    model = tfp_model(tf, tfp, tfk)
    model.compile(
        tfk.optimizers.Adam(learning_rate=args.lr), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    onehot = tfk.utils.to_categorical(ytr, 10)

    def kl_term() -> float:  # exact KLs: the same for any input
        model(xtr[:2])
        return float(tf.add_n(model.losses))

    def probs(x) -> np.ndarray:
        return model.predict(x, batch_size=args.eval_batch, verbose=0)

    p0 = probs(xtr[: args.batch_size])
    init = {"kl": kl_term(), "ce": float(-np.log(p0[np.arange(len(p0)), ytr[: args.batch_size]]).mean())}
    epochs = []
    for epoch in range(args.epochs):
        losses, accs = [], []
        t0 = time.perf_counter()
        for i in range(0, len(xtr), args.batch_size):
            loss, acc = model.train_on_batch(xtr[i : i + args.batch_size], onehot[i : i + args.batch_size])
            losses.append(float(loss))
            accs.append(float(acc))
        seconds = time.perf_counter() - t0
        one = probs(xte)
        epochs.append(_epoch(epoch, losses, accs, kl_term(), seconds, float((one.argmax(1) == yte).mean())))
    t0 = time.perf_counter()
    mean = np.mean([probs(xte) for _ in range(args.mc_draws)], axis=0)
    final = {**_summary(yte, mean), "eval_seconds": time.perf_counter() - t0}
    versions = {
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "tf_keras": tfk.__version__,
    }
    from tfp_vae import _onednn_enabled  # benchmarks/ is on sys.path (_data)

    versions["tf_onednn"] = _onednn_enabled()
    return {
        "init": init,
        "epochs": epochs,
        "final": final,
        "n_losses": len(model.losses),
        "versions": versions,
    }


def _epoch(epoch, losses, accs, kl, seconds, one_draw_acc) -> dict:
    return {
        "epoch": epoch + 1,
        "loss": sum(losses) / len(losses),
        "accuracy": sum(accs) / len(accs),
        "kl": kl,
        "train_seconds": seconds,
        "steps": len(losses),
        "test_accuracy_one_draw": one_draw_acc,
    }


# ------------------------------------------------------------------------------------- problayers worker
def _problayers_worker(args) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import problayers as pl
    from problayers.train import KerasAdam

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in _data(args))
    xtr, xte = xtr.permute(0, 3, 1, 2).contiguous(), xte.permute(0, 3, 1, 2).contiguous()  # NCHW
    net = problayers_model()
    opt = KerasAdam(net.parameters(), lr=args.lr)

    def kl_term() -> float:
        with torch.no_grad():
            net(xtr[:2])
        return float(pl.collect_losses(net, clear=True))

    @torch.no_grad()
    def probs(x) -> np.ndarray:
        out = torch.cat([net(c).softmax(-1) for c in x.split(args.eval_batch)])
        pl.clear_losses(net)
        return out.numpy()

    p0 = probs(xtr[: args.batch_size])
    init = {
        "kl": kl_term(),
        "ce": float(-np.log(p0[np.arange(len(p0)), ytr[: args.batch_size].numpy()]).mean()),
    }

    def loss_fn(x, y):  # the negative ELBO per example, and the logits
        logits = net(x)
        return F.cross_entropy(logits, y) + pl.collect_losses(net, clear=True), logits

    step_loss = torch.compile(loss_fn) if args.compile else loss_fn
    epochs = []
    for epoch in range(args.epochs):
        losses, accs = [], []
        t0 = time.perf_counter()
        for x, y in zip(xtr.split(args.batch_size), ytr.split(args.batch_size), strict=True):
            loss, logits = step_loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            accs.append(float((logits.detach().argmax(1) == y).float().mean()))
        seconds = time.perf_counter() - t0
        one = probs(xte)
        epochs.append(
            _epoch(epoch, losses, accs, kl_term(), seconds, float((one.argmax(1) == yte.numpy()).mean()))
        )
    t0 = time.perf_counter()
    mean = np.mean([probs(xte) for _ in range(args.mc_draws)], axis=0)
    final = {**_summary(yte.numpy(), mean), "eval_seconds": time.perf_counter() - t0}
    with torch.no_grad():  # as TF's len(model.losses): the layers that recorded a term in a forward
        net(xtr[:2])
    n_losses = sum(1 for m in net if float(pl.collect_losses(m, clear=True)) > 0)
    return {
        "init": init,
        "epochs": epochs,
        "final": final,
        "n_losses": n_losses,
        "versions": {"torch": torch.__version__},
        "compiled": bool(args.compile),
    }


# ------------------------------------------------------------------------------------------ orchestrator
def _worker_args(args, seed: int) -> list[str]:
    return [
        "--data-dir", args.data_dir, "--seed", str(seed), "--epochs", str(args.epochs),
        "--threads", str(args.threads), "--mc-draws", str(args.mc_draws), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--eval-batch", str(args.eval_batch),
        "--train-images", str(args.train_images), "--test-images", str(args.test_images),
    ]  # fmt: skip


def run_worker(name: str, cmd: list[str], env: dict[str, str] | None = None):
    """A worker process's last ``RESULT {json}`` value, or None after printing why there is none."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{name}: the worker failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def _run(args, argv: list[str]) -> int:
    libraries = [s.strip() for s in args.libraries.split(",")]
    unknown = [lib for lib in libraries if lib not in LIBRARIES]
    if unknown:
        print(f"--libraries: expected some of {','.join(LIBRARIES)}, got {','.join(unknown)}")
        return 2
    if any(not lib.startswith("problayers") for lib in libraries) and not TFP_PYTHON.is_file():
        print(f"{TFP_PYTHON}: not found; create it with `python benchmarks/bench_train.py --setup-tfp`")
        return 2
    from problayers.train.cpu import cpu_label

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for lib in libraries:
            ours = lib.startswith("problayers")
            python, worker = (sys.executable, "problayers") if ours else (str(TFP_PYTHON), "tfp")
            env = {**os.environ, **({"TF_ENABLE_ONEDNN_OPTS": "1"} if lib == "tfp-onednn" else {})}
            cmd = [python, str(Path(__file__).resolve()), "--worker", worker, *_worker_args(args, seed)]
            cmd += ["--compile"] if lib == "problayers-compile" else []
            result = run_worker(f"{lib} seed {seed}", cmd, env)
            if result is None:
                return 1
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            command = " ".join(["python", "benchmarks/tfp_bnn.py", *argv])
            result.update(library=lib, seed=seed, cpu=cpu_label(), date=now, command=command)
            path = out / f"{lib}-seed{seed}.json"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, path)
            e, final = result["epochs"], result["final"]
            print(
                f"{lib:10s} seed {seed}: KL term at start {result['init']['kl']:.3f}, after {len(e)} epochs "
                f"{e[-1]['kl']:.3f}; loss {e[-1]['loss']:.3f}; test accuracy {final['test_accuracy']:.4f}, "
                f"NLL {final['test_nll']:.4f} ({args.mc_draws} draws); {_median_ms(e):.1f} ms/step",
                flush=True,
            )
    return 0


def _median_ms(epochs: list[dict]) -> float:
    """The median epoch's training time per step (what the log line and the table report)."""
    return statistics.median_high(1e3 * e["train_seconds"] / e["steps"] for e in epochs)


def _table(paths: list[Path]) -> str:
    """One Markdown row per result file: the KL term along training, the last epoch's loss,
    the test scores, the median training time of a step over the epochs, the evaluation's time."""
    rows = [
        "| library | seed | KL term: start, epoch 1, 5, last | loss, last epoch | test accuracy: 1 draw, "
        "all draws | test NLL (nats) | the example's held-out nats | ms/step (median epoch) | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        r = json.loads(path.read_text())
        e, f = r["epochs"], r["final"]
        kls = ", ".join(
            f"{v:.2f}" for v in (r["init"]["kl"], e[0]["kl"], e[min(4, len(e) - 1)]["kl"], e[-1]["kl"])
        )
        cells = [
            r["library"],
            r["seed"],
            kls,
            f"{e[-1]['loss']:.3f}",
            f"{e[-1]['test_accuracy_one_draw']:.4f}, {f['test_accuracy']:.4f}",
            f"{f['test_nll']:.4f}",
            f"{f['example_heldout_nats']:.2f}",
            f"{_median_ms(e):.0f}",
            f"{f['eval_seconds']:.0f}",
        ]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="MNIST IDX directory")
    p.add_argument("--out", help="where the results go (orchestrator)")
    p.add_argument("--table", metavar="DIR", help="print the Markdown table of DIR's results instead")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--libraries", default="tfp,problayers")
    p.add_argument("--worker", choices=("tfp", "problayers"), help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mc-draws", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--train-images", type=int, default=NUM_TRAIN, help="the first N (smoke tests)")
    p.add_argument("--test-images", type=int, default=10000)
    args = p.parse_args(argv)
    if args.table:
        paths = sorted(Path(args.table).glob("*-seed*.json"))
        print(_table(paths) if paths else f"--table {args.table}: no results (*-seed*.json) there")
        return 0 if paths else 2
    if not args.data_dir:
        p.error("--data-dir is required")
    if args.worker:
        worker = _tfp_worker if args.worker == "tfp" else _problayers_worker
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    if not args.out:
        p.error("--out is required")
    return _run(args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
