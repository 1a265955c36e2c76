"""How an evaluation of a trained VAE runs on its device: precision, memory layout, the decoder's
narrow convolutions, the decoder calls' sizes and, on a CPU, glibc's kept memory.

``problayers evaluate`` and ``benchmarks/bench_iwae.py`` both call :func:`prepare_evaluation`, so
a timing of the benchmark is a timing of what the command runs. The choices, and why:

* ``fast`` (the default unless ``precision``, ``channels_last`` or ``narrow_conv_by_transposed``
  is given): on a GPU channels_last and, where the GPU has it, bf16 (the IWAE bound agreed with
  fp32 to 0.01 nats, 2.9x faster on an H100); on a CPU what the run's training step measured
  there (the probe's cache, else a new probe of a few seconds): its precision, its layout and,
  where it took them, the narrow convolutions' depthwise forward. bf16's agreement with fp32
  depends on the model (docs/benchmarks.md has the seed's): the result records its precision,
  and ``--precision fp32`` fixes it. Not ``transposed_as_conv``:
  the IWAE runs the decoder forward only, where it was slower (docs/benchmarks.md).
* Decoder calls: on a CPU 4 images x 128 samples (512 latents) at once, halved until the
  decoder's largest activation for the call fits under glibc's largest mmap threshold (32 MiB),
  so its memory is reused instead of mapped and page-faulted in afresh for every call: the seed
  decoder (32 x 28 x 28 per latent) takes 512 in bf16 and 256 in fp32 (1.5x faster than 100 x
  500 in bf16; in fp32 1.27x faster than 512, while an MLP decoder's 512 fp32 latents were
  faster than 256: docs/benchmarks.md). On a GPU 100 x 500, large calls that fill it.
* On a CPU with ``fast``, freed memory stays with the process (``retain_freed_memory``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from ..train.rng import fork_rng

if TYPE_CHECKING:
    from ..train.allocator import AllocatorSetting
    from ..train.probe import StepChoice
    from .runconfig import RunConfig

__all__ = ["EvalSetup", "default_call_sizes", "largest_activation_bytes", "prepare_evaluation"]

PRECISIONS = ("fp32", "bf16")


def default_call_sizes(device: torch.device | str, activation_bytes: int = 0) -> tuple[int, int]:
    """``(batch_size, chunk_size)`` of the decoder calls on ``device``: elsewhere than on a CPU
    ``(100, 500)``; on a CPU ``(4, 128)``, the chunk halved (to 1 at least) while ``4 * chunk``
    latents times ``activation_bytes`` (the decoder's largest activation for one latent) exceed
    glibc's largest mmap threshold (see the module's note)."""
    if torch.device(device).type != "cpu":
        return (100, 500)
    from ..train.allocator import MMAP_THRESHOLD

    chunk = 128
    while chunk > 1 and 4 * chunk * activation_bytes > MMAP_THRESHOLD:
        chunk //= 2
    return (4, chunk)


def _precision(model: torch.nn.Module, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``model``'s device where ``precision`` is bf16, else nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    from ..train.fastpath import bf16_autocast

    return bf16_autocast(model)


def largest_activation_bytes(model: torch.nn.Module, precision: str = "fp32") -> int:
    """Bytes of the largest tensor a submodule of ``model`` returns while ``model.decode`` decodes
    one latent (zeros of the prior's ``event_shape``) in ``precision``; the RNG is left as it was."""
    sizes = [0]

    def record(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    device = next(model.parameters()).device
    with fork_rng(device), torch.no_grad(), _precision(model, precision):
        prior = model.prior()  # type: ignore[operator]  # (evaluate builds it once, not per call)
        z = torch.zeros((1, *prior.event_shape), device=device)  # (1, D)
        handles = [m.register_forward_hook(record) for m in model.modules()]
        try:
            model.decode(z)  # type: ignore[operator]
        finally:
            for handle in handles:
                handle.remove()
    return max(sizes)


@dataclasses.dataclass(frozen=True)
class EvalSetup:
    """What :func:`prepare_evaluation` chose and applied to the model.

    ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast, see :meth:`autocast`); ``batch_size`` x
    ``chunk_size`` latents go through the decoder at once; ``memory`` is the CPU's allocator
    setting where one was made; ``step_choice`` the probe's choice on a CPU with ``fast``.
    """

    precision: str
    channels_last: bool
    narrow_conv_by_transposed: bool
    batch_size: int
    chunk_size: int
    memory: AllocatorSetting | None = None
    step_choice: StepChoice | None = None

    def autocast(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on ``model``'s device where ``precision`` is bf16, else nothing."""
        return _precision(model, self.precision)

    def options(self) -> dict[str, Any]:
        """The options as JSON fields (what ``eval.json`` records next to the results)."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "narrow_conv_by_transposed": self.narrow_conv_by_transposed,
            "batch_size": self.batch_size,
            "chunk_size": self.chunk_size,
        }

    def report(self) -> list[str]:
        """One line per choice made by measuring or for the machine (the allocator, the probe)."""
        lines = [f"memory: {self.memory.reason}"] if self.memory is not None else []
        if self.step_choice is not None:
            lines.append(self.step_choice.describe().replace("step:", "evaluation step:", 1))
        return lines


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected a positive int or None, got {value!r}")


def prepare_evaluation(
    model: torch.nn.Module,
    cfg: RunConfig,
    test_x: torch.Tensor,
    *,
    fast: bool | None = None,
    precision: str | None = None,
    channels_last: bool = False,
    narrow_conv_by_transposed: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    keep_memory: bool | None = None,
) -> EvalSetup:
    """Choose how to evaluate ``model`` on its device and apply the choice to it, in place
    (memory layout, the narrow convolutions' class).

    Args:
        model: the run's VAE on its device (``problayers.vae.experiment.load_run``).
        cfg: the run's config; its model config and batch size key the CPU probe's cache.
        test_x: ``(N, 1, 28, 28)`` test images on the model's device; on a CPU with ``fast``
            the probe times training steps on the first ``cfg.batch_size`` of them.
        fast: the measured or device default choices; ``None``: unless an option below is given.
        precision: ``"fp32"`` or ``"bf16"``; ``None``: ``fast``'s choice, else fp32.
        channels_last: NHWC convolutions (also where ``fast`` would not choose them).
        narrow_conv_by_transposed: the decoder's narrow convolutions as depthwise + channel sum.
        batch_size, chunk_size: test images and samples per image per decoder call; ``None``:
            :func:`default_call_sizes` of the device (on a CPU for the decoder's
            :func:`largest_activation_bytes` in the chosen precision).
        keep_memory: on a CPU keep freed memory in the process; ``None``: where ``fast``.

    Returns:
        The :class:`EvalSetup`; run the evaluation inside its :meth:`~EvalSetup.autocast`.
    """
    if precision not in (None, *PRECISIONS):
        raise ValueError(f"precision: expected 'fp32', 'bf16' or None, got {precision!r}")
    _positive_or_none("batch_size", batch_size)
    _positive_or_none("chunk_size", chunk_size)
    explicit = precision is not None or channels_last or narrow_conv_by_transposed
    fast = (not explicit) if fast is None else fast
    device = next(model.parameters()).device
    cpu = device.type == "cpu"
    memory = None
    if cpu and (fast if keep_memory is None else keep_memory):
        from ..train.allocator import retain_freed_memory

        memory = retain_freed_memory()
    choice = None
    if fast and not explicit and cpu:
        from .runconfig import measure_step

        probe_batch = test_x[: min(cfg.batch_size, len(test_x))]  # cached under its own size
        probe_cfg = dataclasses.replace(cfg, batch_size=len(probe_batch))
        choice = measure_step(probe_cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.lr), probe_batch)
        precision, channels_last = choice.options["precision"], choice.options["channels_last"]
        narrow_conv_by_transposed = choice.options["narrow_conv_by_transposed"]
    if narrow_conv_by_transposed:
        from ..train.transposed import use_transposed_weight_gradient

        narrow_conv_by_transposed = use_transposed_weight_gradient(model) > 0
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = precision or ("bf16" if fast and bf16_ok else "fp32")
    channels_last = channels_last or (fast and choice is None)
    if channels_last:
        # Module.to takes memory_format (as Tensor.to does); torch's stubs lack it
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    sized = cpu and (batch_size is None or chunk_size is None)
    activation = largest_activation_bytes(model, precision) if sized else 0
    default_batch, default_chunk = default_call_sizes(device, activation)
    return EvalSetup(
        precision=precision,
        channels_last=bool(channels_last),
        narrow_conv_by_transposed=bool(narrow_conv_by_transposed),
        batch_size=batch_size or default_batch,
        chunk_size=chunk_size or default_chunk,
        memory=memory,
        step_choice=choice,
    )
