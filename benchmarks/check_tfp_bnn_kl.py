"""The Bayesian MNIST example trained on its KL term alone, in TFP and in the port: the same steps.

    python benchmarks/check_tfp_bnn_kl.py --steps 500

Left without its data term, the loss of TFP's Bayesian MNIST example (``tfp_bnn.py``) is the
sum of its five layers' ``KL(q || p) / 60000``: exact KLs, nothing sampled, so training on it is
deterministic given the start. Both programs (TFP 0.25 with tf_keras 2.18 in ``.tfp-venv``; the
problayers port here) take ``--steps`` steps of Keras' Adam (1e-3; ``KerasAdam`` in the port: at
gradients of ~1e-6, Keras' epsilon of 1e-7 is a few percent of each step) on that loss, each
from its own random start (one distribution), one thread each, and report the KL term every
100 steps. What must agree is how far each falls from its start: that checks the two
parameterizations of the posterior (softplus scale), the KL formulas, their division by 60000
and the optimizer together. Prints both curves, their falls and the largest difference of the
falls, then one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tfp_bnn import TFP_PYTHON, problayers_model, run_worker, tfp_model  # noqa: E402

EVERY = 100


def _tfp(steps: int) -> list[float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tfk.utils.set_random_seed(0)
    model, opt = tfp_model(tf, tfp, tfk), tfk.optimizers.Adam(learning_rate=1e-3)
    x = np.zeros((1, 28, 28, 1), np.float32)  # the KLs do not depend on it
    curve = []
    for step in range(steps + 1):
        with tf.GradientTape() as tape:
            model(x)
            loss = tf.add_n(model.losses)
        if step % EVERY == 0 or step == steps:
            curve.append(float(loss))
        if step < steps:
            pairs = zip(
                tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True
            )
            opt.apply_gradients([(g, v) for g, v in pairs if g is not None])  # the biases: no KL
    return curve


def _problayers(steps: int) -> list[float]:
    import torch

    import problayers as pl
    from problayers.train import KerasAdam

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = problayers_model()
    opt = KerasAdam(net.parameters(), lr=1e-3)
    x = torch.zeros(1, 1, 28, 28)
    curve = []
    for step in range(steps + 1):
        net(x)
        loss = pl.collect_losses(net, clear=True)
        if step % EVERY == 0 or step == steps:
            curve.append(float(loss.detach()))
        if step < steps:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--worker", choices=("tfp", "problayers"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        curve = (_tfp if args.worker == "tfp" else _problayers)(args.steps)
        print("RESULT " + json.dumps(curve), flush=True)
        return 0
    if not TFP_PYTHON.is_file():
        print(f"{TFP_PYTHON}: not found; create it with `python benchmarks/bench_train.py --setup-tfp`")
        return 2
    curves = {}
    for lib, python in (("tfp", str(TFP_PYTHON)), ("problayers", sys.executable)):
        cmd = [python, str(Path(__file__).resolve()), "--worker", lib, "--steps", str(args.steps)]
        curves[lib] = run_worker(lib, cmd)
        if curves[lib] is None:
            return 1
    tfp_c, ours = curves["tfp"], curves["problayers"]
    print("step  KL term: TFP   problayers   fall: TFP   problayers   difference")
    worst = 0.0
    for i, (a, b) in enumerate(zip(tfp_c, ours, strict=True)):
        fall_a, fall_b = tfp_c[0] - a, ours[0] - b
        worst = max(worst, abs(fall_a - fall_b))
        step = min(i * EVERY, args.steps)
        print(f"{step:4d}  {a:13.5f}  {b:11.5f}  {fall_a:10.5f}  {fall_b:11.5f}  {fall_b - fall_a:+.2e}")
    print(f"largest difference of the falls: {worst:.2e}")
    print(
        "RESULT "
        + json.dumps({"steps": args.steps, "every": EVERY, **curves, "largest_fall_difference": worst})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
