"""TFP's ``tfp.layers`` VAE example trained to the end, then its *true* test -ELBO: a worker of
``tfp_quality.py``, run in ``.tfp-venv``.

tf_keras 2.18 + TFP 0.25 put a ``DistributionLambda``'s activity regularizer into
``model.losses`` twice (``check_tfp_losses.py``), so the example as written trains with the KL
counted twice (a beta=2 VAE) and reports NLL + 2 KL. Here the regularizer's weight is
``1 / len(vae.losses)`` (checked after building: 0.5), so the loss Keras minimizes is the
example's -ELBO with the KL counted once. Everything else is the example's: architecture,
Adam 1e-3, batch 256 (the last partial batch kept), ``map(binarize).batch().prefetch()
.shuffle(10000)`` (batches shuffled, not images), 15 epochs.

After training the test set (a ``.npy`` of {0, 1} images, binarized once by problayers'
fixed-seed protocol, so both libraries are scored on the same pixels) is scored as problayers
scores it, mirrored as the example's binarization is (see below): ``recon = -log p(x|z)`` at
one ``z ~ q(z|x)`` plus the exact ``KL(q(z|x) || p(z))`` (the prior N(0, I) written as
``MultivariateNormalDiag``: TFP has no formula against ``Independent(Normal)``), averaged over
the images.

Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="MNIST IDX directory (training images)")
    p.add_argument("--test-npy", required=True, help="binarized test images, (N, 28, 28) of {0, 1}")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-images", type=int, default=60000, help="the first N (smoke tests)")
    p.add_argument(
        "--as-written",
        action="store_true",
        help="keep the example's regularizer weight (1: the KL counted twice in the loss)",
    )
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk
    from bench_data import load_images
    from tfp_vae import build_vae

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)  # python, numpy and TF seeds

    tfd = tfp.distributions
    images = load_images(args.data_dir, args.train_images)[..., None]  # (60000, 28, 28, 1) uint8

    def _preprocess(image):  # the example's dynamic binarization
        image = tf.cast(image, tf.float32) / 255.0
        image = image < tf.random.uniform(tf.shape(image))
        return image, image

    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .map(_preprocess)
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .shuffle(int(10e3))
    )
    # How many times Keras counts the regularizer (2 with tf_keras 2.18 + TFP 0.25), then the
    # model again with weight 1 / that: TFP bakes the weight into the regularizer at construction.
    copies = len(build_vae(tf, tfk, tfp).losses)
    tf.keras.utils.set_random_seed(args.seed)  # the same initial weights as without the probe
    weight = None if args.as_written else 1.0 / copies
    vae, encoder, decoder = build_vae(tf, tfk, tfp, parts=True, kl_weight=weight)

    start = time.perf_counter()
    history = vae.fit(dataset, epochs=args.epochs, verbose=0)
    train_s = time.perf_counter() - start

    # The example binarizes with ``pixel < uniform``: ink is 0 and background 1, the mirror of
    # problayers' (and the usual) convention. A mirror of the same model family (negate the
    # first and last convolutions), so TFP's model is scored on the mirrored test pixels.
    test = 1.0 - np.load(args.test_npy).astype(np.float32)[..., None]  # (N, 28, 28, 1)
    # The example's prior N(0, I) as an MVN: TFP has no KL(MVNTriL || Independent(Normal)).
    prior = tfd.MultivariateNormalDiag(loc=tf.zeros(16), scale_diag=tf.ones(16))
    recon_sum = kl_sum = 0.0
    for s in range(0, len(test), 500):
        x = tf.constant(test[s : s + 500])
        q = encoder(x, training=False)
        z = q.sample()
        recon_sum += float(tf.reduce_sum(-decoder(z, training=False).log_prob(x)))
        kl_sum += float(tf.reduce_sum(tfd.kl_divergence(q, prior)))
    n = len(test)
    result = {
        "library": "tfp.layers",
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "losses_per_forward": copies,
        "kl_weight": 1.0 if weight is None else weight,
        "kl_times_in_loss": copies * (1.0 if weight is None else weight),
        "train_loss_last_epoch": float(history.history["loss"][-1]),
        "test_neg_elbo": (recon_sum + kl_sum) / n,
        "test_recon": recon_sum / n,
        "test_kl": kl_sum / n,
        "test_images": n,
        "train_seconds": train_s,
        "versions": {"tensorflow": tf.__version__, "tf_keras": tfk.__version__,
                     "tensorflow_probability": tfp.__version__},
        "threads": args.threads,
    }  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
