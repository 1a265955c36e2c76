"""A whole training step as one CUDA graph: ``make_train_step(..., cuda_graph=True)``.

At batch 256 the seed VAE's step is bound by the host, not the GPU: an eager step launches
about 280 kernels, and on an H100 their GPU time (about 4 ms fp32, 2 ms bf16 + channels_last)
is less than the Python and launch time that issues them (see ``docs/benchmarks.md``, profile).
Capturing the step (``zero_grad``, forward, backward, ``optimizer.step()``) with
``torch.cuda.graph`` and replaying it removes that cost: the host only copies the batch into
the graph's input and launches the graph. This is torch's "whole-network capture"
(torch.cuda.graphs documentation):

* the first ``warmup_steps`` steps run as ordinary steps on a side stream (cuDNN picks its
  algorithms, the optimizer creates its state), then the next step is captured and replayed;
* random draws (the posterior's ``rsample``) come from torch's CUDA generator, which is
  graph-safe: each replay draws new numbers;
* the optimizer must be capturable (``Adam(params, fused=True, capturable=True)``). The graph
  reads each parameter group's learning rate from a 0-dim device tensor that is refreshed from
  ``group["lr"]`` before every replay, so learning-rate schedulers keep working (the groups
  keep their own values, floats in checkpoints); the other hyperparameters (betas, eps, weight
  decay) are fixed at capture;
* a batch of another shape or dtype than the captured one runs the ordinary step;
* the returned loss and metrics live in the graph's memory and are overwritten by the next
  replay: read or clone them before the next call (the trainer adds them to its sums at once);
* nothing in the step may read a device value back on the host (``.item()``, ``if t:``, a
  boolean mask, a ``torch.distributions`` argument check: problayers' layers build their
  distributions with ``validate_args=False``); if the capture fails, :class:`CaptureError`
  says so in one line, with the learning rates as they were.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import one_line

__all__ = ["CUDAGraphStep", "CaptureError"]


class CaptureError(RuntimeError):
    """The step could not be captured as a CUDA graph (the message names the usual causes)."""


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [t for b in batch for t in _tensors(b)]
    if isinstance(batch, dict):
        return [t for b in batch.values() for t in _tensors(b)]
    return []


def _signature(batch: Any) -> tuple:
    return tuple((t.shape, t.dtype, t.device, t.stride()) for t in _tensors(batch))


def _copy_into(static: Any, batch: Any) -> None:
    for dst, src in zip(_tensors(static), _tensors(batch), strict=True):
        dst.copy_(src)


class CUDAGraphStep:
    """``step(batch) -> (loss, metrics)``: ``step`` (a :class:`~problayers.train.fastpath.TrainStep`)
    captured as one CUDA graph after ``warmup_steps`` ordinary steps (see the module docstring).

    ``options`` are the step's plus ``cuda_graph=True``; ``captured`` tells whether the graph
    exists yet; ``replays`` counts graphed steps.
    """

    def __init__(self, step: Any, warmup_steps: int = 3) -> None:
        self.step = step
        self.options = {**step.options, "cuda_graph": True}
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.replays = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_batch: Any = None
        self._static_out: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._signature: tuple | None = None
        self._lrs: list[torch.Tensor] = []

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _refresh_learning_rates(self) -> None:
        for group, lr in zip(self.step.optimizer.param_groups, self._lrs, strict=True):
            value = group["lr"]
            lr.copy_(value) if isinstance(value, torch.Tensor) else lr.fill_(value)

    def _capture(self, batch: Any) -> None:
        groups = self.step.optimizer.param_groups
        saved = [group["lr"] for group in groups]
        self._lrs = [torch.tensor(float(lr), dtype=torch.float32, device=self.step.device) for lr in saved]
        self._static_batch = batch  # a fresh tensor of this step: the graph's input from now on
        graph = torch.cuda.CUDAGraph()
        try:
            for group, lr in zip(groups, self._lrs, strict=True):
                group["lr"] = lr
            self.step.autocast_cache = False
            with torch.cuda.graph(graph):
                loss, metrics = self.step.run(self._static_batch)
        except RuntimeError as err:
            raise CaptureError(
                "cuda_graph: the training step could not be captured as one CUDA graph "
                f"({one_line(err)[:300]}); the usual cause is an operation whose result the host "
                "reads back (.item(), bool(tensor), a boolean mask, or a torch.distributions argument "
                "check: build distributions with validate_args=False); train without cuda_graph "
                "(problayers train --no-fast)"
            ) from err
        finally:
            self.step.autocast_cache = True
            for group, lr in zip(groups, saved, strict=True):
                group["lr"] = lr
        self.graph, self._static_out = graph, (loss, metrics)
        self._signature = _signature(batch)

    def __call__(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = self.step.prepare(batch)
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup_steps:
            side = torch.cuda.Stream(self.step.device)
            side.wait_stream(torch.cuda.current_stream(self.step.device))
            with torch.cuda.stream(side):
                out = self.step.run(batch)
            torch.cuda.current_stream(self.step.device).wait_stream(side)
            return out
        if self.graph is None:
            self._capture(batch)  # records the work without running it: replayed below
        elif _signature(batch) != self._signature:
            return self.step.run(batch)
        else:
            _copy_into(self._static_batch, batch)
        self._refresh_learning_rates()
        assert self.graph is not None  # captured above
        self.graph.replay()
        self.replays += 1
        assert self._static_out is not None
        return self._static_out

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"CUDAGraphStep({opts}, device={self.step.device}, captured={self.captured})"
