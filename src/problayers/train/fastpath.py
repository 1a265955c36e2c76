"""A faster training step: ``torch.compile``, bf16 autocast and channels_last, as options.

``make_train_step(model, optimizer, loss_fn, ...)`` returns ``step(batch) -> (loss, metrics)``
that does what :meth:`problayers.train.trainer.Trainer.step` does (zero_grad, ``loss_fn(model, batch)``,
backward, ``optimizer.step()``) and can be handed to the trainer as its ``step_fn``::

    step = make_train_step(model, optimizer, vae_loss, compile=True, channels_last=True)
    Trainer(model, optimizer, vae_loss, batches, config, step_fn=step)

The step never reads a value back to the host (no ``.item()``, no data-dependent Python
branching), so on a GPU it only queues work; the trainer syncs when it logs.

Options (each can be combined with the others, except ``cuda_graph`` with ``compile``;
:func:`fastest_defaults` picks per device):

``compile``
    ``torch.compile`` of ``loss_fn(model, batch)`` (forward and, through AOTAutograd, its
    backward; the optimizer step stays eager). The layers' own forwards trace into one graph
    (no replacement: a user's own ``torch.compile`` of the same model gets the same graph).
    Random draws: on torch 2.13 the posterior's ``rsample`` (``normal_``) is not lowered by
    inductor, so the compiled step draws the very numbers eager draws. An inductor that
    generates random numbers itself (``fallback_random=False``) draws other ``z`` from the same
    distribution, still seeded from torch's generator; ``torch._inductor.config.fallback_random
    = True`` restores eager's draws. The first step compiles (tens of seconds on a CPU); a new
    batch shape recompiles once. Needs a C++ compiler on the CPU (gcc) and Triton on CUDA.
    On the CPU the step runs inductor with ``cpp.vec_isa_ok=False``: torch 2.13's explicit
    AVX-512 code writes the boolean masks a leaky ReLU saves for its backward slowly
    (docs/benchmarks.md). The compiled step silences three warnings torch 2.13 emits from its
    own code while compiling (``_TORCH_INTERNAL_WARNINGS``; an eager step touches no filter).

``precision``
    ``"fp32"`` (default) or ``"bf16"``: the loss runs under ``torch.autocast(bfloat16)``, so
    convolutions and linear layers compute in bf16 (weights, gradients and the optimizer stay
    fp32). The distribution maths stay fp32 because the layers themselves build and evaluate
    their distributions in fp32 under autocast (:mod:`problayers.coercible`), for this step as
    for a user's own ``torch.autocast``. bf16 changes the numbers (about 3 significant digits
    in the convolutions): losses agree with fp32 to about 1% per step, not bitwise. CUDA needs
    a GPU with bf16 (``torch.cuda.is_bf16_supported()``).

``cuda_graph``
    The whole step (``zero_grad``, forward, backward, ``optimizer.step()``) captured as one CUDA
    graph after 3 warm-up steps and replayed: see :mod:`problayers.train.cudagraph`. CUDA only, not with
    ``compile``; the optimizer must be capturable. The eager step on a GPU is bound by the host's
    kernel launches, which a replay skips (docs/benchmarks.md has the measurements).

``transposed_as_conv``
    The model's ``nn.ConvTranspose1d/2d/3d`` compute with the convolution's own passes (forward:
    its data gradient; backward: its forward and its weight gradient), as TensorFlow computes
    transposed convolutions, instead of oneDNN's deconvolution primitive: see
    :mod:`problayers.train.transposed`. Same parameters and ``state_dict``; the numbers agree up
    to rounding. The CPU probe measures it (docs/benchmarks.md: 5-8% on a 2-core AMD EPYC).

``narrow_conv_by_transposed``
    The model's ``nn.Conv1d/2d/3d`` with fewer than 16 output channels (stride 1, one group)
    take their weight gradient from the transposed convolution's pass, input and output
    exchanged (:func:`problayers.train.transposed.use_transposed_weight_gradient`): oneDNN
    vectorizes the weight gradient over the output channels, and the seed VAE's one-channel
    last layer spent several times longer in it than exchanged (docs/benchmarks.md). With one
    output channel the forward is a depthwise convolution summed over the channels, for the
    same reason. Same parameters and input gradient; the forward and the weight gradient agree
    up to rounding. The CPU probe measures it together with ``transposed_as_conv``.

``channels_last``
    Converts the model's 4-D parameters to ``torch.channels_last`` (in place: the parameters
    stay the same objects; an optimizer's existing state follows their layout) and each 4-D
    floating batch tensor, so convolutions run NHWC (oneDNN on the CPU, cuDNN/tensor cores on
    the GPU). Values and ``state_dict`` contents are unchanged (only strides).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .trainerargs import check_step_args, step_output

if TYPE_CHECKING:
    from .cudagraph import CUDAGraphStep

__all__ = [
    "COMPILE_MODES",
    "PRECISIONS",
    "TrainStep",
    "bf16_autocast",
    "configure_cpu_threads",
    "fastest_defaults",
    "make_train_step",
    "model_device",
]

PRECISIONS = ("fp32", "bf16")  # the accepted values of ``precision``
#: The accepted values of ``compile_mode`` (``torch.compile``'s modes; ``None``: its default).
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Harmless warnings of torch 2.13's own code while compiling: inductor's aten.diagonal lowering
# calls a deprecated helper; importing inductor imports torch.utils.mkldnn (jit.script_method);
# dynamo instantiates torch.autograd.Function to trace a custom Function's ctx.
_TORCH_INTERNAL_WARNINGS = (
    (r"`torch\._prims_common\.check` is deprecated", FutureWarning),
    (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
    (r"<class 'torch\.autograd\.function\.Function'> should not be instantiated", DeprecationWarning),
)


@contextlib.contextmanager
def _torch_internal_warnings_silenced(compiled: bool = True) -> Iterator[None]:
    if not compiled:  # entering catch_warnings resets which warnings were shown: a user's
        yield  # once-only warning came back at every eager step
        return
    with warnings.catch_warnings():
        for message, category in _TORCH_INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer; else the CPU)."""
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


@torch.no_grad()
def channels_last_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``model``'s 4-D parameters and buffers in channels_last, in place (the same objects; a
    Conv3d's 5-D weight is left as it is), and the optimizer's state of each parameter in the
    parameter's new layout: fused Adam reads its moments with the parameter's strides."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:  # .to spells the strides out where the layouts coincide (one channel)
            tensor.data = tensor.data.to(memory_format=torch.channels_last)
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if (
                isinstance(value, torch.Tensor)
                and value.shape == param.shape
                and value.stride() != param.stride()
            ):
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def channels_last_batch(batch: Any) -> Any:
    """4-D floating tensors of ``batch`` (a tensor, or a tuple/list/dict of them) in channels_last."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(channels_last_batch(b) for b in batch)
    if isinstance(batch, dict):
        return {k: channels_last_batch(v) for k, v in batch.items()}
    return batch


def bf16_autocast(model: nn.Module) -> torch.autocast:
    """``torch.autocast`` with bf16 on ``model``'s device (``precision="bf16"`` outside a step,
    e.g. around evaluation); the layers keep their distribution maths in fp32 by themselves."""
    return torch.autocast(model_device(model).type, dtype=torch.bfloat16)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def _forward_loss(model: nn.Module, loss_fn: Callable, autocast: tuple[str, bool] | None, batch: Any) -> Any:
    """``loss_fn(model, batch)`` as returned (checked outside the compiled code); under bf16
    autocast on the device type ``autocast[0]`` (its weight cache on where ``autocast[1]``)
    unless ``None``."""
    if autocast is not None:
        with torch.autocast(autocast[0], dtype=torch.bfloat16, cache_enabled=autocast[1]):
            out = loss_fn(model, batch)
    else:
        out = loss_fn(model, batch)
    return out


class TrainStep:
    """``step(batch) -> (loss.detach(), metrics)``: one optimizer step (see the module docstring).

    Built by :func:`make_train_step`; ``options`` records ``compile``, ``precision`` and
    ``channels_last``. The model runs its own forward: nothing of it is replaced.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, Any], Any],
        *,
        compile: bool,
        precision: str,
        channels_last: bool,
        compile_mode: str | None = None,
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.options = {"compile": compile, "precision": precision, "channels_last": channels_last}
        if compile_mode is not None:
            self.options["compile_mode"] = compile_mode
        self.device = model_device(model)
        self._autocast = precision == "bf16"
        self.autocast_cache = True
        self._compiled = None
        self._inductor_config: Any = contextlib.nullcontext()
        if compile:
            with _torch_internal_warnings_silenced():
                # Not a bound method: a wrapper holding ``self`` is a cycle, which keeps a dropped
                # step's model and optimizer state alive until a collection.
                self._compiled = torch.compile(_forward_loss, mode=compile_mode)
                if self.device.type == "cpu":
                    # See the module docstring (compile): vectorized bool-mask stores are slow.
                    self._inductor_config = torch._inductor.config.patch({"cpp.vec_isa_ok": False})
        self.steps = 0

    def __call__(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.run(self.prepare(batch))

    def prepare(self, batch: Any) -> Any:
        """The batch as the step consumes it (channels_last where that option is on)."""
        return channels_last_batch(batch) if self.options["channels_last"] else batch

    def run(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step on a prepared batch (what a CUDA graph captures)."""
        self.optimizer.zero_grad(set_to_none=True)
        with _torch_internal_warnings_silenced(self._compiled is not None), self._inductor_config:
            forward_loss = self._compiled if self._compiled is not None else _forward_loss
            # No autocast weight cache inside a CUDA graph capture (torch.cuda.graphs' rule).
            autocast = (self.device.type, self.autocast_cache) if self._autocast else None
            loss, metrics = step_output(forward_loss(self.model, self.loss_fn, autocast, batch))
            loss.backward()
        self.optimizer.step()
        self.steps += 1
        return loss.detach(), metrics

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"TrainStep({opts}, device={self.device})"


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], Any],
    *,
    compile: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
    compile_mode: str | None = None,
    cuda_graph: bool = False,
    transposed_as_conv: bool = False,
    narrow_conv_by_transposed: bool = False,
) -> TrainStep | CUDAGraphStep:
    """A training step ``step(batch) -> (loss.detach(), metrics)`` for the trainer's ``step_fn``.

    Args:
        model: the model, already on its device (its parameters' device is the step's).
        optimizer: an optimizer over the model's parameters.
        loss_fn: ``(model, batch) -> loss`` or ``-> (loss, {name: 0-dim tensor})``, as for
            :class:`~problayers.train.trainer.Trainer` (e.g. :func:`problayers.vae.models.vae_loss`).
        compile: ``torch.compile`` the loss (forward + backward) in one graph; see the module
            docstring for what it changes (random draws) and its costs (first-step compile).
        precision: ``"fp32"`` or ``"bf16"`` (autocast for convolutions and linear layers; the
            distribution maths stay fp32).
        channels_last: convert the model's 4-D parameters (now, in place) and each batch to
            ``torch.channels_last``.
        compile_mode: ``torch.compile``'s ``mode`` when ``compile`` is on (one of
            :data:`COMPILE_MODES`; ``"reduce-overhead"`` replays the step's kernels as CUDA graphs
            on a GPU). Outputs of a CUDA-graph step are overwritten by the next step: use (or
            clone) the returned loss and metrics before the next call, as the trainer does.
        cuda_graph: capture the whole step (forward, backward and ``optimizer.step()``) in one
            CUDA graph and replay it (:class:`~problayers.train.cudagraph.CUDAGraphStep`): no Python
            or launch cost per step. CUDA only, not with ``compile``; the optimizer must be
            built with ``capturable=True`` (e.g. ``Adam(params, fused=True, capturable=True)``).
            Same semantics as the step it captures; its outputs are overwritten by the next
            step, as with ``compile_mode``.
        transposed_as_conv: compute the model's transposed convolutions with the convolution's
            passes (now, in place: :func:`problayers.train.transposed.use_convolution_passes`).
        narrow_conv_by_transposed: give the model's narrow convolutions the transposed
            convolution's weight gradient (now, in place:
            :func:`problayers.train.transposed.use_transposed_weight_gradient`).

    Returns:
        A :class:`TrainStep`. Same semantics as the trainer's default step with ``compile=False``,
        ``precision="fp32"``, ``channels_last=False`` (bitwise the same computation).

    Raises:
        TypeError: ``model``, ``optimizer`` or ``loss_fn`` of the wrong kind.
        ValueError: an option of the wrong type or value (naming the argument), or bf16 on a
            CUDA device without it (on a CPU bf16 always runs, emulated where the CPU has no bf16
            instructions, and slower: :func:`~problayers.train.probe.probe_step_options` does not
            choose it there).
    """
    check_step_args(model, optimizer, loss_fn)
    _check_bool("compile", compile)
    _check_bool("channels_last", channels_last)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode: expected one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    if compile_mode is not None and not compile:
        raise ValueError(f"compile_mode={compile_mode!r} needs compile=True")
    _check_bool("cuda_graph", cuda_graph)
    _check_bool("transposed_as_conv", transposed_as_conv)
    _check_bool("narrow_conv_by_transposed", narrow_conv_by_transposed)
    device = model_device(model)
    if cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"cuda_graph=True: needs a model on a CUDA device, the model is on {device}")
        if compile:
            raise ValueError(
                "cuda_graph=True: not with compile=True "
                "(compile_mode='reduce-overhead' graphs a compiled step)"
            )
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise ValueError(
                "cuda_graph=True: the optimizer's step must be capturable: build it with capturable=True, "
                f"e.g. Adam(params, fused=True, capturable=True) (got {type(optimizer).__name__} without it)"
            )
    if precision == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"precision='bf16': supported on cpu and cuda devices, the model is on {device}")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision='bf16': {torch.cuda.get_device_name(device)} does not support bf16")
    if channels_last:
        channels_last_model(model, optimizer)
    if transposed_as_conv or narrow_conv_by_transposed:
        from .transposed import use_convolution_passes, use_transposed_weight_gradient

        if transposed_as_conv:
            use_convolution_passes(model)
        if narrow_conv_by_transposed:
            use_transposed_weight_gradient(model)
    step = TrainStep(
        model,
        optimizer,
        loss_fn,
        compile=compile,
        precision=precision,
        channels_last=channels_last,
        compile_mode=compile_mode,
    )
    if cuda_graph:
        from .cudagraph import CUDAGraphStep

        return CUDAGraphStep(step)
    return step


def configure_cpu_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (``None``: the CPUs this process may run on);
    returns the number set. Leaves the inter-op pool alone (it cannot change once used)."""
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n = os.cpu_count() or 1
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int or None, got {n!r}")
    torch.set_num_threads(n)
    return n


def fastest_defaults(device: str | torch.device) -> dict[str, Any]:
    """The :func:`make_train_step` options that train the seed VAE fastest on ``device`` while
    keeping the test -ELBO within 0.5 nats of fp32 eager (measurements: ``docs/benchmarks.md``).

    CPU (2-core Xeon with AVX-512 and AVX512-BF16 but no AMX, torch 2.13): ``channels_last``
    only, +11% over eager. ``compile`` gains nothing there (convolutions are ~90% of the step)
    and bf16 autocast was 20-35% slower (oneDNN's bf16 convolutions without AMX), while on a
    2-core AMD EPYC (Zen 4) bf16 was ~1.8x fp32: no static answer holds for every CPU, so
    ``problayers train`` measures the precision and layout per machine
    (:func:`problayers.train.probe.probe_step_options`) and these defaults are its fallback.
    CUDA (H100, torch 2.11): ``cuda_graph`` + ``channels_last`` + ``precision="bf16"``: 4.4x
    eager at batch 256 (an eager step there is bound by the host: ~280 kernel launches for
    ~2-4 ms of GPU work); 15 epochs gave 98.7 nats against 100.0 and 100.7 for two fp32 eager
    runs. ``compile`` (with or without CUDA graphs) was slower than eager there: the seed VAE
    compiled into several graphs with guards and copies in between. bf16 falls back to fp32 on
    a GPU without bf16. ``cuda_graph`` needs a capturable optimizer
    (``Adam(params, fused=True, capturable=True)``). Other devices: no option.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected a torch device or its name, got {device!r}") from None
    plain = {"compile": False, "precision": "fp32", "channels_last": False, "cuda_graph": False}
    if dev.type == "cpu":
        return {**plain, "channels_last": True}
    if dev.type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {**plain, "precision": "bf16" if bf16 else "fp32", "channels_last": True, "cuda_graph": True}
    return plain
