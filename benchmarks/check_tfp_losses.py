"""How many times TFP's VAE example counts its KL term (tf_keras 2.18 + TFP 0.25): ``len(vae.losses)``.

Runs only in ``.tfp-venv`` (``python benchmarks/bench_train.py --setup-tfp``), from the repository root::

    TF_USE_LEGACY_KERAS=1 .tfp-venv/bin/python benchmarks/check_tfp_losses.py

Builds the example exactly as ``tfp_vae.build_vae`` does, calls it once on a small batch of
random binary images and prints ``len(vae.losses)``, which layer each added loss comes from,
their values, and the loss Keras optimizes and reports (``vae.compute_loss``: the compiled NLL
plus ``sum(vae.losses)`` of that same forward pass) against NLL + 1 KL and NLL + 2 KL.
``vae.evaluate`` on the same batch is printed too (it draws its own samples, so it matches
only approximately), and so is the encoder alone: its two losses against the batch mean of the
one-sample KL estimate computed by hand from the same output. Prints one line ``RESULT {json}``
at the end. CPU only; a few seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk
    from tfp_vae import build_vae

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(0)
    x = tf.constant((np.random.default_rng(0).random((8, 28, 28, 1)) < 0.3).astype(np.float32))

    vae = build_vae(tf, tfk, tfp)
    at_build = len(vae.losses)
    out = vae(x, training=False)
    losses = [float(v) for v in vae.losses]
    owners = []
    for layer in vae.submodules:
        if isinstance(layer, tfk.layers.Layer):
            mine = getattr(layer, "_losses", []) + getattr(layer, "_callable_losses", [])
            if mine or getattr(layer, "_activity_regularizer", None) is not None:
                owners.append(f"{layer.name} ({type(layer).__name__}): {len(layer.losses)} losses")
    nll = float(tf.reduce_mean(-out.log_prob(x)))
    total = float(vae.compute_loss(x, x, out))
    kl = losses[0] if losses else float("nan")
    evaluate = float(vae.evaluate(x, x, batch_size=8, verbose=0))

    # One of the two losses is the batch mean of the one-sample KL estimate, computed by hand here
    # on the encoder's output distribution (its cached sample is the regularizer's test point).
    mvn_at = next(
        i for i, layer in enumerate(vae.layers) if isinstance(layer, tfp.layers.MultivariateNormalTriL)
    )
    h = x
    for layer in vae.layers[:mvn_at]:
        if not isinstance(layer, tfk.layers.InputLayer):
            h = layer(h)
    q = vae.layers[mvn_at](h)  # called eagerly on its own: its losses are this call's
    z = tf.convert_to_tensor(q)
    prior = tfp.distributions.Independent(tfp.distributions.Normal(tf.zeros(16), 1.0), 1)
    kl_by_hand = float(tf.reduce_mean(q.log_prob(z) - prior.log_prob(z)))
    encoder_losses = [float(v) for v in vae.layers[mvn_at].losses]
    result = {
        "versions": {"tensorflow": tf.__version__, "tf_keras": tfk.__version__,
                     "tensorflow_probability": tfp.__version__},
        "len_vae_losses_after_build": at_build,
        "len_vae_losses_after_call": len(vae.losses),
        "losses": losses,
        "layers_with_losses": owners,
        "nll": nll,
        "compute_loss": total,
        "nll_plus_1_kl": nll + kl,
        "nll_plus_2_kl": nll + 2 * kl,
        "compute_loss_minus_nll_over_kl": (total - nll) / kl if kl else float("nan"),
        "evaluate": evaluate,
        "encoder_losses": encoder_losses,
        "encoder_batch_mean_one_sample_kl_by_hand": kl_by_hand,
    }  # fmt: skip
    for key, value in result.items():
        print(f"{key}: {value}")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
