"""What TFP's two KL layers put in the loss, as a multiple of the batch mean of the KL
(tf_keras 2.18 + TFP 0.25), for docs/porting.md's reduction rows.

Runs only in ``.tfp-venv`` (``python benchmarks/bench_train.py --setup-tfp``), from the repository root::

    TF_USE_LEGACY_KERAS=1 .tfp-venv/bin/python benchmarks/check_tfp_kl_reductions.py

For a batch of 8 ``IndependentNormal(2)`` posteriors against a standard normal prior, each of
``KLDivergenceRegularizer`` (as an activity regularizer, where Keras divides by the batch size)
and ``KLDivergenceAddLoss`` runs with the default Monte Carlo estimate, ``use_exact_kl=True`` and
``test_points_reduce_axis=None``; the script prints the first added loss over the batch mean of
the same estimate computed by hand (1: the batch mean; 8: the sum; 0.125: the mean / 8). problayers
records the batch mean in every case.

Then a ``Normal`` over ``(8, 2)`` without ``Independent`` (batch shape ``(8, 2)``, as in TFP code
that slices ``t[..., :d]``): the same ratios against the mean over the 8 rows of the KL summed
over the 2 latents, which is what problayers records (averaging all 16 terms would halve it).
Then a prior with batch shape ``(2, 8)``: the ratio to the KL's sum over ``(2, 8)`` divided by
the 8 rows, what problayers records. CPU only; seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

BATCH = 8


def main() -> None:
    tfd, tfpl = tfp.distributions, tfp.layers
    params = np.random.default_rng(0).normal(size=(BATCH, 4)).astype(np.float32)
    prior = tfd.Independent(tfd.Normal(tf.zeros(2), 1.0), 1)
    options = {"Monte Carlo": {}, "use_exact_kl=True": {"use_exact_kl": True}}
    options["test_points_reduce_axis=None"] = {"test_points_reduce_axis": None}

    def batch_mean(q, exact: bool) -> float:
        z = tf.convert_to_tensor(q)
        per = tfd.kl_divergence(q, prior) if exact else q.log_prob(z) - prior.log_prob(z)
        return float(tf.reduce_mean(per))

    for name, kwargs in options.items():
        exact = kwargs.get("use_exact_kl", False)
        inputs = tf_keras.Input([4])
        regularizer = tfpl.KLDivergenceRegularizer(prior, **kwargs)
        model = tf_keras.Model(inputs, tfpl.IndependentNormal(2, activity_regularizer=regularizer)(inputs))
        q = model(params)
        ratio = float(model.losses[0]) / batch_mean(q, exact)
        print(f"KLDivergenceRegularizer  {name:30s} {ratio:6.3f} x the batch mean")
        layer = tfpl.KLDivergenceAddLoss(prior, **kwargs)
        q = tfpl.IndependentNormal(2)(params)
        layer(q)
        ratio = float(layer.losses[0]) / batch_mean(q, exact)
        print(f"KLDivergenceAddLoss      {name:30s} {ratio:6.3f} x the batch mean")

    scalar_prior = tfd.Normal(0.0, 1.0)

    def row_mean(q, exact: bool) -> float:  # mean over the rows of the sum over the latents
        z = tf.convert_to_tensor(q)
        per = tfd.kl_divergence(q, scalar_prior) if exact else q.log_prob(z) - scalar_prior.log_prob(z)
        return float(tf.reduce_mean(tf.reduce_sum(per, axis=-1)))

    def normal(t):
        return tfd.Normal(t[..., :2], tf.nn.softplus(t[..., 2:]))

    for name, kwargs in list(options.items())[:2]:
        exact = kwargs.get("use_exact_kl", False)
        inputs = tf_keras.Input([4])
        regularizer = tfpl.KLDivergenceRegularizer(scalar_prior, **kwargs)
        output = tfpl.DistributionLambda(normal, activity_regularizer=regularizer)(inputs)
        model = tf_keras.Model(inputs, output)
        q = model(params)
        ratio = float(model.losses[0]) / row_mean(q, exact)
        print(f"Normal (8, 2) regularizer {name:29s} {ratio:6.3f} x the row mean of the per-row sum")

    # A prior whose batch shape has an axis more than the posterior's, (2, 8) against (8,): the
    # KL broadcasts to (2, 8), and Keras divides its sum by the 8 rows of the output.
    wide_prior = tfd.Independent(tfd.Normal(tf.zeros([2, BATCH, 2]), 1.0), 1)
    for name, kwargs in list(options.items())[:2]:
        exact = kwargs.get("use_exact_kl", False)
        inputs = tf_keras.Input([4])
        regularizer = tfpl.KLDivergenceRegularizer(wide_prior, **kwargs)
        model = tf_keras.Model(inputs, tfpl.IndependentNormal(2, activity_regularizer=regularizer)(inputs))
        q = model(params)
        z = tf.convert_to_tensor(q)
        per = tfd.kl_divergence(q, wide_prior) if exact else q.log_prob(z) - wide_prior.log_prob(z)
        ratio = float(model.losses[0]) / (float(tf.reduce_sum(per)) / BATCH)
        print(f"prior batch (2, 8)        {name:29s} {ratio:6.3f} x the sum over (2, 8) / 8")


if __name__ == "__main__":
    main()
