"""Choose a CPU training step's options by measuring them on this machine.

Which precision trains fastest on a CPU is not predicted by its flags: two CPUs that both list
``avx512_bf16`` were measured with bf16 autocast 1.8x faster (an AMD EPYC, Zen 4) and 20-35%
slower (an Intel Xeon without AMX) than fp32 for the same model (docs/benchmarks.md). So
:func:`probe_step_options` times a few steps of each candidate on copies of the run's own model
and batch (a few seconds) and keeps the fastest (of two within :data:`TIE_MARGIN`, the one with
fewer options), with bf16 taken only where it wins by
:data:`BF16_MARGIN` (it changes the numbers, so a marginal win is not worth it) and only where
the CPU computes bf16 natively. The answer is cached per machine (CPU model, torch version,
threads) and workload (the caller's key: model and batch), so later runs skip the measurement;
one made while other processes run on the CPUs is used but not cached.

The cache is one JSON file, ``$PROBLAYERS_CACHE_DIR/step-options.json`` (default
``$XDG_CACHE_HOME/problayers``, else ``~/.cache/problayers``), written atomically; delete it to
measure again. An unreadable or damaged cache is measured over; an unwritable one is skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import parse_json, write_json
from .cpu import cpu_has_native_bf16, cpu_label, machine_signature, onednn_isa_limit
from .fastpath import make_train_step
from .transposed import use_convolution_passes, use_transposed_weight_gradient

__all__ = [
    "BF16_MARGIN",
    "CONV_PASSES",
    "CPU_CANDIDATES",
    "PROBE_BUDGET_S",
    "TIE_MARGIN",
    "Candidate",
    "StepChoice",
    "cache_path",
    "cpu_has_native_bf16",
    "machine_signature",
    "onednn_isa_limit",
    "probe_step_options",
]

#: bf16 is chosen only where its step is at least this fraction faster than the best fp32 one.
BF16_MARGIN = 0.10
#: Within one precision the first candidate (in :data:`CPU_CANDIDATES`' order: the fewest
#: options) at most this fraction slower than the fastest is chosen. Closer timings are noise,
#: and a choice that flipped between two runs of one command would change their numbers (each
#: option changes the rounding).
TIE_MARGIN = 0.03
#: Seconds after which the probe's timed rounds stop (after the first one).
PROBE_BUDGET_S = 10.0
_CACHE_FILE = "step-options.json"
_CACHE_VERSION = 5  # 2: candidates with transposed_as_conv; 3: and narrow_conv_by_transposed;
# 4: its one-channel forward depthwise (a candidate that changed is measured again); 5: ties
# within TIE_MARGIN go to the candidate with fewer options


@dataclass(frozen=True)
class Candidate:
    """One set of :func:`~problayers.train.fastpath.make_train_step` options to measure."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def bf16(self) -> bool:
        return self.options.get("precision") == "bf16"


#: The convolutions' passes exchanged where oneDNN runs them faster: transposed convolutions on
#: the convolution's passes, narrow convolutions' weight gradient on the transposed one's.
CONV_PASSES = ("transposed_as_conv", "narrow_conv_by_transposed")

#: What a CPU run measures: the two precisions, each with and without channels_last, and with
#: channels_last the :data:`CONV_PASSES` (named ``conv_passes``; measured only for a model that
#: has such layers).
#: ``compile`` is not among them: its first step alone compiles for tens of seconds on these
#: CPUs, more than the probe may cost (docs/benchmarks.md).
CPU_CANDIDATES = tuple(
    Candidate(
        "+".join([precision, *(["channels_last"] if layout else []), *(["conv_passes"] if passes else [])]),
        {"precision": precision, "channels_last": layout, **dict.fromkeys(CONV_PASSES, passes)},
    )
    for precision in ("fp32", "bf16")
    for layout, passes in ((False, False), (True, False), (True, True))
)


@dataclass(frozen=True)
class StepChoice:
    """What :func:`probe_step_options` chose and why (``record()`` is JSON for config.json)."""

    options: dict[str, Any]
    chosen: str
    seconds_per_step: dict[str, float]
    reason: str
    machine: dict[str, Any]
    measured_at: str
    cached: bool = False
    cache: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "by": "cache" if self.cached else "probe",
            "chosen": self.chosen,
            "options": dict(self.options),
            "seconds_per_step": dict(self.seconds_per_step),
            "reason": self.reason,
            "machine": dict(self.machine),
            "measured_at": self.measured_at,
        }

    def describe(self, also: Sequence[str] = ()) -> str:
        """One line: the options (and ``also``, options the run takes unmeasured, e.g. the
        optimizer's), why, and where the measurement came from."""
        times = ", ".join(
            f"{n} {t:.3g}" for n, t in sorted(self.seconds_per_step.items(), key=lambda kv: kv[1])
        )
        where = f"cached {self.measured_at} in {self.cache}" if self.cached else "measured now"
        if self.cache and not self.cached:
            where += f", cached in {self.cache}"
        cpu, torch_version = cpu_label(self.machine), self.machine.get("torch")
        return (
            f"step: {'+'.join([self.chosen, *also])} ({self.reason}; s/step: {times}; {cpu}, "
            f"torch {torch_version}, {self.machine.get('threads')} threads; {where})"
        )


def cache_path() -> Path:
    """``$PROBLAYERS_CACHE_DIR``, ``$XDG_CACHE_HOME/problayers`` or ``~/.cache/problayers``, + the file."""
    base = os.environ.get("PROBLAYERS_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = (
            str(Path(xdg) / "problayers")
            if os.path.isabs(xdg)
            else str(Path.home() / ".cache" / "problayers")
        )
    return Path(base).expanduser() / _CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = parse_json(path.read_text())
    except (OSError, ValueError):
        return {}  # absent, unreadable or damaged: measure again (and rewrite it)
    if (
        not isinstance(data, dict)
        or data.get("version") != _CACHE_VERSION
        or not isinstance(data.get("entries"), dict)
    ):
        return {}
    return data["entries"]


def _busy(samples: int = 5) -> str | None:
    """Why a measurement made now would not speak for this machine (other processes are running
    on its CPUs now), or ``None``: such a measurement is used for this run but not cached. Reads
    the kernel's count of runnable tasks (``/proc/loadavg``), the fewest of a few looks."""
    try:
        cpus = len(os.sched_getaffinity(0))
        running = []
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                running.append(int(f.read().split()[3].split("/")[0]) - 1)  # less this process
            time.sleep(0.01)
    except (AttributeError, OSError, ValueError, IndexError):  # not on Linux
        return None
    others = min(running)
    return (
        f"machine busy ({others} other runnable tasks on {cpus} CPUs)"
        if others >= max(1, cpus // 2)
        else None
    )


def _cache_key(machine: dict[str, Any], workload: str) -> str:
    return json.dumps({"machine": machine, "workload": workload}, sort_keys=True)


def _time_candidates(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], Any],
    batch: Any,
    candidates: Sequence[Candidate],
    warmup: int,
    repeats: int,
    budget: float = PROBE_BUDGET_S,
) -> dict[str, float]:
    """The fastest of up to ``repeats`` steps of each candidate (after ``warmup`` steps), the
    candidates taking turns so that a slow spell of the machine hits them all alike; no round
    after the first timed one starts once ``budget`` seconds are spent."""
    steps = []
    for cand in candidates:
        twin = copy.deepcopy(model)  # channels_last converts in place: never the caller's model
        opt = type(optimizer)(twin.parameters(), **optimizer.defaults)
        steps.append(make_train_step(twin, opt, loss_fn, **cand.options))
    best = [float("inf")] * len(candidates)
    began = time.perf_counter()
    for i in range(warmup + repeats):
        for j, step in enumerate(steps):
            start = time.perf_counter()
            step(batch)
            if i >= warmup:
                best[j] = min(best[j], time.perf_counter() - start)
        if i >= warmup and time.perf_counter() - began > budget:
            break
    return {cand.name: t for cand, t in zip(candidates, best, strict=True)}


def _first_of_the_fastest(times: dict[str, float], candidates: Sequence[Candidate]) -> Candidate:
    """The first of ``candidates`` at most :data:`TIE_MARGIN` slower than the fastest of them."""
    fastest = min(times[c.name] for c in candidates)
    return next(c for c in candidates if times[c.name] <= fastest * (1 + TIE_MARGIN))


def _choose(times: dict[str, float], candidates: Sequence[Candidate], margin: float) -> tuple[Candidate, str]:
    fp32 = [c for c in candidates if not c.bf16]
    bf16 = [c for c in candidates if c.bf16]
    if not fp32 or not bf16:
        return _first_of_the_fastest(times, fp32 or bf16), "fastest measured"
    best = min(times[c.name] for c in fp32)
    winners = [c for c in bf16 if 1 - times[c.name] / best >= margin]  # each by the margin
    if winners:
        chosen = _first_of_the_fastest(times, winners)
        return chosen, f"bf16 {1 - times[chosen.name] / best:.0%} faster than fp32"
    gain = 1 - min(times[c.name] for c in bf16) / best
    reason = f"bf16 {gain:+.0%} against fp32, under the {margin:.0%} it must win by"
    return _first_of_the_fastest(times, fp32), reason


def _valid_entry(hit: Any, candidates: Sequence[Candidate]) -> bool:
    """Whether a cache entry can be used: one of ``candidates`` by name with its very options,
    and the rest of the record of the expected types (a damaged entry is measured over)."""
    if not isinstance(hit, dict):
        return False
    known = {c.name: c.options for c in candidates}
    times = hit.get("seconds_per_step")
    return (
        isinstance(hit.get("chosen"), str)  # a list or a dict is not a name (nor hashable)
        and hit["chosen"] in known
        and hit.get("options") == known[hit["chosen"]]
        and isinstance(times, dict)
        and all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in times.items())
        and isinstance(hit.get("reason"), str)
        and isinstance(hit.get("measured_at"), str)
    )


def probe_step_options(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], Any],
    batch: Any,
    *,
    workload: str,
    candidates: Sequence[Candidate] = CPU_CANDIDATES,
    warmup: int = 1,
    repeats: int = 3,
    margin: float = BF16_MARGIN,
    cache: str | os.PathLike | bool | None = True,
) -> StepChoice:
    """The fastest of ``candidates`` for training ``model`` on ``batch`` here, measured or cached.

    Nothing of the caller's changes: the steps run on deep copies of ``model`` with fresh
    optimizers of ``optimizer``'s class and defaults, and torch's random state is restored.

    Args:
        model: the model (on the CPU) as the run will train it.
        optimizer: the run's optimizer (only its class and ``defaults`` are used).
        loss_fn: ``(model, batch) -> loss`` (or ``(loss, metrics)``), as for the trainer.
        batch: one training batch of the run's shape.
        workload: the cache key's part for what is trained (e.g. the model config and batch size).
        candidates: the option sets to measure; bf16 ones are dropped where the CPU lacks bf16.
        warmup: untimed steps per candidate first. repeats: timed steps per candidate (the
            fastest counts), fewer (at least one) once :data:`PROBE_BUDGET_S` is spent.
        margin: how much faster bf16 must be than the best fp32 candidate to be chosen.
        cache: ``True``: :func:`cache_path`; a path; ``None``/``False``: no cache.

    Returns:
        A :class:`StepChoice` (``options`` for :func:`~problayers.train.fastpath.make_train_step`).
    """
    if not isinstance(workload, str):
        raise TypeError(f"workload: expected a str, got {type(workload).__name__}")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if not candidates:
        raise ValueError("candidates: expected at least one Candidate, got none")
    machine = machine_signature()
    path = cache_path() if cache is True else (Path(cache) if cache else None)
    key = _cache_key(machine, workload)
    entries = _read_cache(path) if path is not None else {}
    hit = entries.get(key)
    if _valid_entry(hit, candidates):
        assert isinstance(hit, dict)
        return StepChoice(
            options=hit["options"], chosen=hit["chosen"], seconds_per_step=hit["seconds_per_step"],
            reason=hit["reason"], machine=machine, measured_at=hit["measured_at"], cached=True,
            cache=str(path),
        )  # fmt: skip
    usable = [c for c in candidates if not c.bf16 or machine["bf16_native"]]
    note = "" if len(usable) == len(candidates) else "; no native bf16 on this CPU"
    switches = (use_convolution_passes, use_transposed_weight_gradient)
    if not any(switch(model, dry_run=True) for switch in switches):  # conv_passes would change nothing
        usable = [c for c in usable if not any(c.options.get(k) for k in CONV_PASSES)] or usable
    if not usable:
        raise ValueError("candidates: all need bf16, which this CPU does not compute natively")
    busy = _busy()
    with torch.random.fork_rng(devices=[]):
        times = _time_candidates(model, optimizer, loss_fn, batch, usable, warmup, repeats)
    chosen, reason = _choose(times, usable, margin)
    if busy:
        note += f"; {busy}: not cached"
        path = None
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    choice = StepChoice(
        options=dict(chosen.options), chosen=chosen.name, seconds_per_step=times,
        reason=reason + note, machine=machine, measured_at=when, cache=None,
    )  # fmt: skip
    if path is not None:
        record = choice.record()
        record.pop("machine")
        # read again: what other runs cached meanwhile is kept (no lock: two runs writing at
        # once can still lose one's entry, which the next run measures again)
        entries = _read_cache(path)
        entries[key] = record
        try:
            write_json(path, {"version": _CACHE_VERSION, "entries": entries})
            choice = dataclasses.replace(choice, cache=str(path))
        except OSError:
            pass  # an unwritable cache costs the next run a measurement, nothing else
    return choice
