"""TFP's ``tfp.layers`` VAE example (tf_keras + tfp.layers), timed: a worker of ``bench_train.py``.

Runs only in the separate virtualenv ``.tfp-venv`` (``python benchmarks/bench_train.py
--setup-tfp`` creates it: tensorflow-cpu 2.18, tf-keras 2.18, tensorflow-probability 0.25).
The model, loss and optimizer are the example's (encoder -> MultivariateNormalTriL(16) with a
KLDivergenceRegularizer to N(0, I); decoder -> IndependentBernoulli; loss ``-rv_x.log_prob(x)``;
Adam 1e-3; ``vae.fit``), and so is the input pipeline (``map(binarize).batch(256).prefetch()
.shuffle()``), fed from in-memory uint8 images instead of tensorflow_datasets.

Prints one line ``RESULT {json}``: images/s of each timed window of ``--steps`` steps after
``--warmup`` steps, the peak RSS, versions and thread settings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_vae(tf, tfk, tfp, encoded_size=16, base_depth=32, parts=False, kl_weight=None):
    """TFP's example, as published (tf.nn.leaky_relu has slope 0.2); with ``parts`` also its
    encoder and decoder: ``(vae, encoder, decoder)``; ``kl_weight``: the regularizer's
    ``weight`` (TFP bakes it in at construction; default ``None``, the example's)."""
    tfkl, tfpl, tfd = tfk.layers, tfp.layers, tfp.distributions
    input_shape = (28, 28, 1)
    prior = tfd.Independent(tfd.Normal(loc=tf.zeros(encoded_size), scale=1), reinterpreted_batch_ndims=1)
    kl = tfpl.KLDivergenceRegularizer(prior, weight=kl_weight)
    encoder = tfk.Sequential([
        tfkl.InputLayer(input_shape=input_shape),
        tfkl.Lambda(lambda x: tf.cast(x, tf.float32) - 0.5),
        tfkl.Conv2D(base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(2 * base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(2 * base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(4 * encoded_size, 7, strides=1, padding="valid", activation=tf.nn.leaky_relu),
        tfkl.Flatten(),
        tfkl.Dense(tfpl.MultivariateNormalTriL.params_size(encoded_size), activation=None),
        tfpl.MultivariateNormalTriL(encoded_size, activity_regularizer=kl),
    ])  # fmt: skip
    decoder = tfk.Sequential([
        tfkl.InputLayer(input_shape=[encoded_size]),
        tfkl.Reshape([1, 1, encoded_size]),
        tfkl.Conv2DTranspose(2 * base_depth, 7, strides=1, padding="valid", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(2 * base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(2 * base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(filters=1, kernel_size=5, strides=1, padding="same", activation=None),
        tfkl.Flatten(),
        tfpl.IndependentBernoulli(input_shape, tfd.Bernoulli.logits),
    ])  # fmt: skip
    vae = tfk.Model(inputs=encoder.inputs, outputs=decoder(encoder.outputs[0]))

    def negloglik(x, rv_x):
        return -rv_x.log_prob(x)

    vae.compile(optimizer=tfk.optimizers.Adam(learning_rate=1e-3), loss=negloglik)
    return (vae, encoder, decoder) if parts else vae


def _onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels (on by default only on some CPUs;
    ``TF_ENABLE_ONEDNN_OPTS`` overrides), or ``None`` where this TensorFlow cannot say."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="TF intra- and inter-op threads")
    p.add_argument("--inter-op", type=int, default=None, help="TF inter-op threads (default: --threads)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num-images", type=int, default=60000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk
    from bench_data import load_images

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    inter_op = args.threads if args.inter_op is None else args.inter_op
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    tf.random.set_seed(args.seed)

    images = load_images(args.data_dir, args.num_images, args.seed)[..., None]  # (N, 28, 28, 1) uint8

    def _preprocess(image):  # the example's: dynamic binarization; (input, target) = (x, x)
        image = tf.cast(image, tf.float32) / 255.0
        image = image < tf.random.uniform(tf.shape(image))
        return image, image

    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .map(_preprocess)
        .batch(args.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .shuffle(int(10e3))
        .repeat()
    )
    vae = build_vae(tf, tfk, tfp)
    rss_before = _rss_mib()

    stamps: list[float] = []

    class Timer(tfk.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    total = args.warmup + args.windows * args.steps
    start = time.perf_counter()
    history = vae.fit(dataset, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Timer()])
    warmup_s = stamps[args.warmup - 1] - start
    rates = []
    for w in range(args.windows):
        t0 = stamps[args.warmup - 1 + w * args.steps]
        t1 = stamps[args.warmup - 1 + (w + 1) * args.steps]
        rates.append(args.steps * args.batch_size / (t1 - t0))
    result = {
        "config": "tfp",
        "images_per_s": rates,
        "warmup_s": warmup_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mib": rss_before,
        "final_loss": float(history.history["loss"][-1]),
        "versions": {"tensorflow": tf.__version__, "tf_keras": tfk.__version__,
                     "tensorflow_probability": tfp.__version__},
        "threads": {"intra_op": args.threads, "inter_op": inter_op},
        "device": "cpu",
        "tf_onednn": _onednn_enabled(),
    }  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
