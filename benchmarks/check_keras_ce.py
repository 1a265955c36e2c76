"""Which cross-entropy Keras computes for TFP's Bayesian MNIST example: from the softmax's logits
or from its clipped probabilities.

The example ends in ``DenseFlipout(10, activation=tf.nn.softmax)`` and compiles with
``loss="categorical_crossentropy"``. tf_keras computes that loss from the logits when the output
tensor is made by a ``Softmax`` op (``backend._get_logits``), and otherwise from the probabilities
clipped to ``[1e-7, 1 - 1e-7]``, whose gradient vanishes on a confident example. The port uses
``F.cross_entropy`` on logits; this script runs one ``train_on_batch`` of a layer like the
example's last one with that lookup watched and prints which branch Keras took; as a control,
the same layer followed by ``tf.identity`` must take the other (exit status 0 when both hold).

    TF_USE_LEGACY_KERAS=1 .tfp-venv/bin/python benchmarks/check_keras_ce.py
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk
    from tf_keras.src import backend

    branches: list[tuple[str, bool]] = []
    lookup = backend._get_logits

    def watched(output, from_logits, op_type, fn_name):
        out, logits = lookup(output, from_logits, op_type, fn_name)
        branches.append((getattr(getattr(output, "op", None), "type", "eager"), logits))
        return out, logits

    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 84)).astype("float32")
    y = tfk.utils.to_categorical(rng.integers(0, 10, 64), 10)

    def branch_of(*tail) -> str:
        branches.clear()
        model = tfk.Sequential(
            [tfk.Input((84,)), tfp.layers.DenseFlipout(10, activation=tf.nn.softmax), *tail]
        )
        model.compile(tfk.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        backend._get_logits = watched
        try:
            model.train_on_batch(x, y)
        finally:
            backend._get_logits = lookup
        ops = sorted({op for op, _ in branches})
        logits = bool(branches) and all(took for _, took in branches)
        return f"{'logits' if logits else 'clipped probabilities'} (output op {', '.join(ops)})"

    example = branch_of()
    # Control: the same softmax behind one more op, which hides it from the lookup.
    control = branch_of(tfk.layers.Lambda(tf.identity))
    print(f"tf_keras {tfk.__version__}, TFP {tfp.__version__}")
    print(f"the example's output: {example}")
    print(f"control, softmax then tf.identity: {control}")
    print("RESULT " + example)
    return 0 if example.startswith("logits") and control.startswith("clipped") else 1


if __name__ == "__main__":
    sys.exit(main())
