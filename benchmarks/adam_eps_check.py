"""Does Keras' Adam epsilon change the seed VAE's updates? Measured on real optimizer states.

torch's Adam steps ``lr * m_hat / (sqrt(v_hat) + 1e-8)``; tf_keras 2.18's (``adaptive_epsilon``
off, its default) steps ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + 1e-7)``, which is
``lr * m_hat / (sqrt(v_hat) + 1e-7 / sqrt(1 - b2^t))``: an epsilon of 3.2e-6 at the first step,
1.3e-7 at step 1000, 1.0e-7 at the end of 15 epochs. For each optimizer state given (the first
step of the seed model from its initial weights on one training batch, and each checkpoint's
Adam moments at its step), this prints the relative difference between the two updates,
``||u_keras - u_torch|| / ||u_torch||`` over all parameters, and how many entries change by more
than 1%::

    python benchmarks/adam_eps_check.py --data-dir ../shared/data/mnist runs/fp32-seed2/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json

import torch

from problayers.train.checkpoint import load_checkpoint
from problayers.vae.data import binarize, load_mnist
from problayers.vae.models import ModelConfig, build_model, vae_loss

BETA1, BETA2, LR = 0.9, 0.999, 1e-3
TORCH_EPS, KERAS_EPS = 1e-8, 1e-7


def compare(step: int, exp_avg: list[torch.Tensor], exp_avg_sq: list[torch.Tensor]) -> dict[str, float]:
    """The two updates from the same moments ``m``, ``v`` (flattened over all parameters) at ``step``."""
    m = torch.cat([t.flatten() for t in exp_avg]).double()  # (P,)
    v = torch.cat([t.flatten() for t in exp_avg_sq]).double()  # (P,)
    bc1, bc2 = 1 - BETA1**step, 1 - BETA2**step
    u_torch = LR * (m / bc1) / ((v / bc2).sqrt() + TORCH_EPS)
    u_keras = LR * bc2**0.5 / bc1 * m / (v.sqrt() + KERAS_EPS)
    rel = (u_keras - u_torch).abs() / u_torch.abs().clamp_min(1e-300)
    moving = m != 0
    sizes = (v / bc2).sqrt()[moving][:16_000_000]  # torch.quantile's input size limit
    levels = torch.tensor([0.001, 0.01, 0.5], dtype=torch.float64)
    return {
        "step": step,
        "keras_eps_in_torch_terms": KERAS_EPS / bc2**0.5,
        "sqrt_v_hat_quantiles_0.001_0.01_0.5": torch.quantile(sizes, levels).tolist(),
        "update_rel_diff": float((u_keras - u_torch).norm() / u_torch.norm()),
        "entries_over_1pct": float((rel[moving] > 0.01).double().mean()),
        "parameters": int(m.numel()),
    }


def first_step(data_dir: str, seed: int) -> dict[str, float]:
    """Adam's first step from the seed model's initial weights: ``m = (1 - b1) g``, ``v = (1 - b2) g^2``."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig())
    x = binarize(load_mnist(data_dir, "train")[0][:256])  # (256, 1, 28, 28) of {0, 1}
    vae_loss(model, x)[0].backward()  # (loss, metrics)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return compare(1, [(1 - BETA1) * g for g in grads], [(1 - BETA2) * g * g for g in grads])


def from_checkpoint(path: str) -> dict[str, float]:
    state = load_checkpoint(path)["optimizer"]["state"]
    entries = [state[k] for k in sorted(state)]
    step = int(float(entries[0]["step"]))
    return compare(step, [e["exp_avg"] for e in entries], [e["exp_avg_sq"] for e in entries])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", help="problayers checkpoints (Adam states)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(json.dumps({"source": "initial weights, one batch", **first_step(args.data_dir, args.seed)}))
    for path in args.checkpoints:
        print(json.dumps({"source": path, **from_checkpoint(path)}))


if __name__ == "__main__":
    main()
