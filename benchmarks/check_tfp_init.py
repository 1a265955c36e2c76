"""Whether TFP's weight layers start from the same numbers (tf_keras 2.18 + TFP 0.25).

Runs only in ``.tfp-venv`` (``python benchmarks/bench_train.py --setup-tfp``), from the repository root::

    .tfp-venv/bin/python benchmarks/check_tfp_init.py

``tfp.layers.default_mean_field_normal_fn()`` is the default value of every weight layer's
``kernel_posterior_fn``: it is called once, when TFP is imported, so every layer built with the
default shares its two Keras initializers (``RandomNormal(stddev=0.1)`` for the posterior's
loc, ``RandomNormal(mean=-3, stddev=0.1)`` for its untransformed scale). tf_keras 2.18 makes an
unseeded initializer return the same values each time it is called (it warns so). This builds
two ``DenseFlipout(30)`` layers on 20 inputs and two ``Convolution2DFlipout(6, 5)`` layers on
one channel, first without a global seed, then after ``tf_keras.utils.set_random_seed(0)``,
and prints whether the two layers' posteriors start with the same locs and scales. Prints one
line ``RESULT {json}``. CPU; seconds.
"""

from __future__ import annotations

import json
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _starts(tfp, seed_fn) -> dict:
    import numpy as np

    seed_fn()
    out = {}
    for name, make, shape in (
        ("dense", lambda: tfp.layers.DenseFlipout(30), (None, 20)),
        ("conv", lambda: tfp.layers.Convolution2DFlipout(6, kernel_size=5), (None, 28, 28, 1)),
    ):
        pair = [make(), make()]
        for layer in pair:
            layer.build(shape)
        q0, q1 = (layer.kernel_posterior.distribution for layer in pair)
        out[f"{name}_same_loc"] = bool(np.array_equal(q0.loc.numpy(), q1.loc.numpy()))
        out[f"{name}_same_scale"] = bool(np.array_equal(q0.scale.numpy(), q1.scale.numpy()))
        out[f"{name}_loc_std"] = float(q0.loc.numpy().std())
        out[f"{name}_scale_mean"] = float(q0.scale.numpy().mean())
    return out


def main() -> int:
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf_keras' warning about the unseeded initializer
        result = {
            "unseeded": _starts(tfp, lambda: None),  # first: nothing has seeded TF yet
            "seeded": _starts(tfp, lambda: tfk.utils.set_random_seed(0)),
            "versions": {"tensorflow": tf.__version__, "tensorflow_probability": tfp.__version__},
        }
    for name in ("unseeded", "seeded"):
        r = result[name]
        print(
            f"{name}: two DenseFlipout(30) start with the same loc / scale: {r['dense_same_loc']} / "
            f"{r['dense_same_scale']}; two Convolution2DFlipout(6, 5): {r['conv_same_loc']} / "
            f"{r['conv_same_scale']}"
        )
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
