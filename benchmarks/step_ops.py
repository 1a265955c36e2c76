"""How many ATen operations one training step of a model runs (forward, backward, Adam),
counted on the CPU: about the number of kernels an eager GPU step launches, which bounds an
eager step of a small model by the host (see ``problayers.train.cudagraph``)::

    python benchmarks/step_ops.py --model hvae --prior vamp --objective iwae --num-samples 5 --batch-size 250

The optimizer here is ``Adam(foreach=True)``, as on a CPU; on a GPU ``problayers train`` uses
the fused Adam, a few kernels for all parameters. The counts do not depend on the batch size
or the device (nothing in a model branches on them).
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from problayers.vae.models import ModelConfig, build_model, vae_loss


class _Count(TorchDispatchMode):
    """Counts the ops that compute (a kernel each on a GPU), not the views (metadata only)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view or func.__name__.split(".")[0] in ("detach", "_unsafe_view"):
            self.views += 1
        else:
            self.ops[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("::")[0])
    parser.add_argument("--model", default="seed")
    parser.add_argument("--prior")
    parser.add_argument("--posterior")
    parser.add_argument("--objective")
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--top", type=int, default=8, help="list the most frequent ops")
    args = parser.parse_args()
    given = {k: getattr(args, k) for k in ("prior", "posterior", "objective", "num_samples")}
    cfg = ModelConfig.for_model(args.model, **{k: v for k, v in given.items() if v is not None})
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, foreach=True)
    x = (torch.rand(args.batch_size, 1, 28, 28) < 0.3).float()  # (B, 1, 28, 28)
    for _ in range(2):  # optimizer state created, a KL warm-up past its first step
        optimizer.zero_grad(set_to_none=True)
        vae_loss(model, x)[0].backward()
        optimizer.step()
    counts = []
    with _Count() as count:
        optimizer.zero_grad(set_to_none=True)
        loss = vae_loss(model, x)[0]
        counts.append(count.ops.total())
        loss.backward()
        counts.append(count.ops.total())
        optimizer.step()
        counts.append(count.ops.total())
    fwd, bwd, opt = counts[0], counts[1] - counts[0], counts[2] - counts[1]
    params = sum(p.numel() for p in model.parameters())
    what = f"{args.model} {cfg.prior}/{cfg.posterior}/{cfg.objective} K={cfg.num_samples}"
    print(f"{what}, batch {args.batch_size}, {params / 1e6:.2f} M parameters")
    print(
        f"ATen ops per step (views not counted: {count.views}): forward {fwd}, backward {bwd}, "
        f"forward + backward {fwd + bwd}; Adam (foreach) {opt}"
    )
    print("most frequent:", ", ".join(f"{name} {n}" for name, n in count.ops.most_common(args.top)))


if __name__ == "__main__":
    main()
