"""Keras' Adam on torch's: the update tf_keras 2.x computes, step for step, for ported recipes.

torch's Adam steps ``lr * m_hat / (sqrt(v_hat) + eps)`` with ``eps = 1e-8``; tf_keras' (its
``adaptive_epsilon`` off, the default) steps ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) +
epsilon)`` with ``epsilon = 1e-7``: the epsilon is added *before* the bias correction, so in
torch's terms it is ``epsilon / sqrt(1 - b2^t)``: 3.2e-6 at the first step, 1.3e-7 at step 1000.
For parameters whose gradients are small that is a smaller step early in training
(``benchmarks/adam_eps_check.py`` measures it on the seed VAE). :class:`KerasAdam` is torch's
Adam with its ``eps`` set to that value before every step, so every other feature (foreach and
fused kernels, ``amsgrad``, ``maximize``, checkpoints) is torch's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["ADAMS", "KerasAdam"]


class KerasAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` with Keras' placement of epsilon (and its default 1e-7).

    Args:
        params, lr, betas, weight_decay, amsgrad and the keyword options: as for
            :class:`torch.optim.Adam` (``lr``, ``betas`` default to Keras' 1e-3, (0.9, 0.999)).
        eps: Keras' ``epsilon``, added to ``sqrt(v)`` before the bias correction (default 1e-7).

    Each parameter group counts its steps (``"iterations"``, as Keras' optimizer does; saved in
    ``state_dict``) and keeps ``eps`` in ``"keras_eps"``; ``step()`` first sets its ``"eps"`` to
    that step's value in torch's terms (``keras_eps / sqrt(1 - beta2^t)``), so between steps it
    holds the last step's (``keras_eps`` before the first). ``capturable=True`` is refused: a
    captured CUDA graph would keep the first step's epsilon.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("capturable"):
            raise ValueError(
                "capturable: KerasAdam changes eps every step, which a captured graph would not see"
            )
        super().__init__(params, lr=lr, betas=betas, eps=eps, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("keras_eps", group["eps"])
        group.setdefault("iterations", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if any(p.grad is not None for p in group["params"]):
                group["iterations"] += 1
                bias_correction2 = 1 - float(group["betas"][1]) ** group["iterations"]
                group["eps"] = group["keras_eps"] / math.sqrt(bias_correction2)
        super().step()
        return loss


#: The Adam updates a run can take by name (``RunConfig.adam``, ``problayers train --adam``).
ADAMS: dict[str, type[torch.optim.Adam]] = {"torch": torch.optim.Adam, "keras": KerasAdam}
