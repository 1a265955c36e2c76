"""Training throughput and peak memory of the seed VAE, configurations side by side.

Each configuration runs in its own subprocess (so peak memory and compile caches are its own),
one after the other on the same machine, in one invocation:

* ``eager``: problayers as a user writes it: ``build_model`` + ``vae_loss`` + the default
  ``Trainer.step``, fed by ``EpochBatches``.
* ``handwritten``: the same model written in plain PyTorch + torch.distributions
  (``handwritten_vae.py``, no problayers import): the no-library floor.
* ``fast``: problayers' fast path as ``problayers train`` takes it: ``fastest_defaults(device)``,
  on a CPU with the precision and channels_last its probe measures (or its cache holds);
  ``fast-OPTS`` picks options explicitly, ``OPTS`` joined by ``+`` from ``compile``, ``cl``
  (channels_last), ``bf16`` (e.g. ``fast-compile+cl``; ``fast-none`` is the fast step with no
  option; ``fused`` is not a step option: it builds ``Adam(fused=True)``, which the CLI
  would have to create).
* ``tfp`` (CPU only): TFP's example in tf_keras + tfp.layers (``tfp_vae.py``), run by
  ``.tfp-venv/bin/python``; skipped with a message when that venv is absent
  (``--setup-tfp`` creates it). ``tfp-mem``: the same with glibc's malloc thresholds set (through
  the environment) as ``fast`` on a CPU sets them for itself (option ``mem``,
  ``problayers.train.allocator``), so both libraries run on the same allocator settings.
  ``tfp-onednn`` / ``tfp-eigen``: the same with TensorFlow's oneDNN kernels forced on / off
  (``TF_ENABLE_ONEDNN_OPTS=1`` / ``0``). On Linux TensorFlow turns them on by default only on
  CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, so on others plain ``tfp`` runs its
  Eigen kernels; the table's footer says which kernels each TFP row ran.

Throughput: images/s of ``--windows`` windows of ``--steps`` optimizer steps each, after
``--warmup`` steps (which include compilation); the table gives the median (min-max) over the
windows. Peak memory: on CPU the process's RSS high-water mark (``ru_maxrss``; it includes the
framework and the data set), on CUDA ``torch.cuda.max_memory_allocated``.

Examples::

    python benchmarks/bench_train.py --setup-tfp            # once: create .tfp-venv
    python benchmarks/bench_train.py --device cpu --json runs/bench_cpu.json
    python benchmarks/bench_train.py --device cuda --configs eager,handwritten,fast --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TFP_VENV = REPO / ".tfp-venv"
TFP_PACKAGES = ["tensorflow-cpu==2.18.*", "tf-keras==2.18.*", "tensorflow-probability==0.25.*"]
BASE_CONFIGS = ("eager", "handwritten", "fast", "tfp")
FAST_OPTIONS = {
    "compile": "compile",
    "cg": "compile_mode",  # compile with mode="reduce-overhead" (CUDA graphs)
    "cl": "channels_last",
    "bf16": "precision",
    "fused": "fused_adam",  # Adam(fused=True): built by the benchmark, not a step option
    "bench": "cudnn_benchmark",  # torch.backends.cudnn.benchmark = True: set by the benchmark
    "graph": "cuda_graph",  # the whole step as one CUDA graph (with Adam(fused=True))
    "mem": "retain_memory",  # glibc keeps freed memory (problayers.train.allocator): set by the benchmark
    "tconv": "transposed_as_conv",  # transposed convolutions on the convolution's passes
    "narrow": "narrow_conv_by_transposed",  # narrow convolutions' weight gradient, exchanged
}
# TFP with TensorFlow's oneDNN kernels forced on or off (its default depends on the CPU).
TFP_KERNEL_ENV = {"tfp-onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"}, "tfp-eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
TFP_VARIANTS = ("tfp-mem", *TFP_KERNEL_ENV)
# Options the benchmark applies itself (not make_train_step's).
OUTSIDE_STEP = ("fused_adam", "cudnn_benchmark", "auto_step", "retain_memory")


# ------------------------------------------------------------------------------------------ helpers
def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_model() -> str:
    """The CPU's name with its vendor/family/model (``problayers.train.cpu.cpu_label``)."""
    from problayers.train.cpu import cpu_label

    return cpu_label()


def cpu_isa() -> str:
    """What the CPU offers for bf16: its AVX-512 / AVX512_BF16 / AMX flags (``/proc/cpuinfo``),
    torch's dispatch level (``torch.backends.cpu.get_cpu_capability()``) and oneDNN's ISA limit
    where one is set (``ONEDNN_MAX_CPU_ISA``: TensorFlow's oneDNN honours it too)."""
    import torch

    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        flags = set()
    names = {"avx512f": "AVX-512", "avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX-BF16"}
    have = ", ".join(f"{label} {'yes' if flag in flags else 'no'}" for flag, label in names.items())
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    capped = f"; oneDNN limited to {limit} (ONEDNN_MAX_CPU_ISA)" if limit else ""
    return f"{have}; torch dispatch {torch.backends.cpu.get_cpu_capability()}{capped}"


def fast_options(config: str, device: str) -> dict[str, Any]:
    """``fast`` -> fastest_defaults(device); ``fast-compile+cl+bf16`` -> those options."""
    if config == "fast":  # as `problayers train --fast` (which also sets cudnn.benchmark on CUDA)
        from problayers.vae.experiment import step_options

        return {**step_options(True, device), "cudnn_benchmark": device.startswith("cuda")}
    opts: dict[str, Any] = {"compile": False, "precision": "fp32", "channels_last": False}
    names = config.split("-", 1)[1]
    for name in [] if names == "none" else names.split("+"):
        if name not in FAST_OPTIONS:
            raise ValueError(f"--configs: {config!r}: unknown option {name!r} (use {sorted(FAST_OPTIONS)})")
        value: Any = {"bf16": "bf16", "cg": "reduce-overhead"}.get(name, True)
        opts[FAST_OPTIONS[name]] = value
        if name == "cg":
            opts["compile"] = True
    return opts


def _split_outside(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
    """(make_train_step's options, {fused_adam, cudnn_benchmark} the benchmark applies)."""
    opts = dict(opts)
    return opts, {name: bool(opts.pop(name, False)) for name in OUTSIDE_STEP}


def tfp_environment(config: str) -> dict[str, str]:
    """The environment variables a TFP configuration sets for its worker."""
    if config == "tfp-mem":  # TFP under glibc's thresholds as retain_freed_memory sets them
        if str(REPO / "src") not in sys.path:
            sys.path.insert(0, str(REPO / "src"))
        from problayers.train.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD

        return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
    return dict(TFP_KERNEL_ENV.get(config, {}))


def check_config(config: str) -> str:
    if config in BASE_CONFIGS or config in TFP_VARIANTS:
        return config
    if config.startswith("fast-"):
        fast_options(config, "cpu")
        return config
    raise ValueError(
        f"--configs: unknown configuration {config!r}; expected {[*BASE_CONFIGS, *TFP_VARIANTS]} or fast-OPTS"
    )


# ------------------------------------------------------------------------------------------ torch worker
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _handwritten(images_u8, args, device) -> tuple[Callable[[], Any], dict[str, Any]]:
    import torch
    from handwritten_vae import HandwrittenVAE, binarize, train_step

    torch.manual_seed(args.seed)
    model = HandwrittenVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n, b = images_u8.shape[0], args.batch_size

    def batches() -> Iterator[Any]:
        gen = torch.Generator().manual_seed(args.seed)
        while True:
            perm = torch.randperm(n, generator=gen).to(device)
            for i in range(n // b):
                yield binarize(images_u8[perm[i * b : (i + 1) * b]])

    it = batches()
    info = {"parameters": sum(p.numel() for p in model.parameters())}
    return (lambda: train_step(model, optimizer, next(it))), info


def _problayers(config, images_u8, args, device) -> tuple[Callable[[], Any], dict[str, Any]]:
    import torch

    from problayers.train.trainer import Trainer, TrainerConfig
    from problayers.vae.data import EpochBatches
    from problayers.vae.models import ModelConfig, build_model, vae_loss

    opts, outside = _split_outside(fast_options(config, device.type) if config != "eager" else {})
    fused = outside["fused_adam"] or bool(opts.get("cuda_graph"))
    if outside["cudnn_benchmark"]:
        torch.backends.cudnn.benchmark = True
    if outside["retain_memory"] and device.type == "cpu":  # as the CLI does, before the probe
        from problayers.train.allocator import retain_freed_memory

        print(f"# {config}: memory: {retain_freed_memory().reason}", file=sys.stderr, flush=True)
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig()).to(device)
    graph = bool(opts.get("cuda_graph"))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-3, **({"fused": True, "capturable": graph} if fused else {})
    )
    data = EpochBatches(images_u8, args.batch_size, seed=args.seed)

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            yield from data.epoch(epoch)
            epoch += 1

    info: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    step_fn = None
    if config != "eager":
        from problayers.train.fastpath import make_train_step

        if outside["auto_step"]:  # `fast` on a CPU: the run's probe (or its cache), as the CLI does
            from problayers.vae.runconfig import RunConfig, measure_step

            cfg = RunConfig(model=ModelConfig(), batch_size=args.batch_size, seed=args.seed)
            choice = measure_step(cfg, model, optimizer, next(iter(data.epoch(0))))
            opts.update(choice.options)
            info["step_choice"] = choice.describe()
            print(f"# fast: {choice.describe()}", file=sys.stderr, flush=True)
        info["options"] = {**opts, **{k: v for k, v in outside.items() if v}}
        step_fn = make_train_step(model, optimizer, vae_loss, **opts)
    trainer = Trainer(
        model, optimizer, vae_loss, lambda e: data.epoch(e), TrainerConfig(progress=False), step_fn=step_fn
    )
    it = batches()
    return (lambda: trainer.step_fn(next(it))[0]), info


def run_torch_worker(args) -> dict[str, Any]:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_data import load_images

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.from_numpy(np.ascontiguousarray(load_images(args.data_dir, args.num_images, args.seed)))
    images_u8 = images.to(device)
    if args.config == "handwritten":
        step, info = _handwritten(images_u8, args, device)
    else:
        step, info = _problayers(args.config, images_u8, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mib()

    start = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    float(loss)
    _sync(device)
    warmup_s = time.perf_counter() - start
    rates, losses = [], []
    for _ in range(args.windows):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        losses.append(float(loss))  # the window's one host sync
        _sync(device)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - t0))
    result = {
        "config": args.config,
        "images_per_s": rates,
        "warmup_s": warmup_s,
        "final_loss": losses[-1],
        "rss_before_training_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"torch": torch.__version__},
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "device": str(device),
        **info,
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    if args.sync_debug and device.type == "cuda":
        result["syncs"] = _find_syncs(step, device)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(args.profile):
                loss = step()
            float(loss)
            _sync(device)
        averages = prof.key_averages()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = averages.table(sort_by=sort, row_limit=25, max_name_column_width=55)
        if device.type == "cuda":  # the host side too: launches, copies, synchronizations
            result["profile"] += "\n" + averages.table(
                sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=55
            )
    return result


def _find_syncs(step: Callable[[], Any], device) -> list[str]:
    """Host-device synchronizations in 3 steps (``torch.cuda.set_sync_debug_mode``): the Python
    stack of each distinct one."""
    import traceback
    import warnings

    import torch

    seen: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        stack = "".join(traceback.format_stack(limit=12)[:-1])
        seen[stack] = seen.get(stack, 0) + 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            for _ in range(3):
                step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _sync(device)
    return [f"{count} x in 3 steps:\n{stack}" for stack, count in seen.items()]


# ------------------------------------------------------------------------------------------ orchestration
def setup_tfp() -> int:
    python = TFP_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TFP_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TFP_PACKAGES], check=True)
    print(f"TFP virtualenv ready: {TFP_VENV}")
    return 0


def _worker_command(config: str, args) -> list[str] | None:
    common = [
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--windows", str(args.windows),
        "--warmup", str(args.warmup), "--threads", str(args.threads), "--num-images", str(args.num_images),
        "--seed", str(args.seed),
    ]  # fmt: skip
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if config.startswith("tfp"):
        python = TFP_VENV / "bin" / "python"
        if not python.exists():
            return None
        return [str(python), str(HERE / "tfp_vae.py"), *common]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--device", args.device]
    cmd += common
    if args.profile and config in args.profile_configs:
        cmd += ["--profile", str(args.profile)]
    if args.sync_debug:
        cmd += ["--sync-debug"]
    return cmd


def run_config(config: str, args) -> dict[str, Any]:
    if config.startswith("tfp") and not args.device.startswith("cpu"):
        return {"config": config, "skipped": "the TFP row is measured on CPU only (tensorflow-cpu)"}
    cmd = _worker_command(config, args)
    if cmd is None:
        return {
            "config": config,
            "skipped": f"{TFP_VENV} not found; create it with `python benchmarks/bench_train.py --setup-tfp`",
        }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(HERE), env.get("PYTHONPATH")]))
    if config.startswith("tfp"):
        env.update(tfp_environment(config))
    print(f"[bench] {config}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"config": config, "failed": f"exit {proc.returncode}", "stderr_tail": tail}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["config"] = config  # the worker names itself (tfp_vae.py says "tfp" for its variants too)
    result["load_average"] = [load_before, os.getloadavg()]  # (1/5/15 min) before, after
    return result


def pool(runs: list[dict[str, Any]], configs: list[str]) -> list[dict[str, Any]]:
    """One result per config: the windows of its repeated runs pooled (other fields: the last
    run's; peak memory: the largest; warm-up time: the first run's)."""
    out = []
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        good = [r for r in mine if "images_per_s" in r]
        if not good:
            out.append(mine[-1])
            continue
        merged = dict(good[-1])
        merged["images_per_s"] = [v for r in good for v in r["images_per_s"]]
        merged["runs"] = len(good)
        merged["load_average"] = [r["load_average"] for r in good]
        merged["warmup_s"] = good[0]["warmup_s"]
        for key in ("peak_rss_mib", "peak_cuda_mib"):
            if key in merged:
                merged[key] = max(r[key] for r in good)
        out.append(merged)
    return out


def summarize(results: list[dict[str, Any]]) -> None:
    for r in results:
        if "images_per_s" in r:
            r["median_images_per_s"] = statistics.median(r["images_per_s"])


def table(results: list[dict[str, Any]]) -> str:
    by_name = {r["config"]: r.get("median_images_per_s") for r in results}
    refs = [name for name in ("eager", "handwritten", "tfp") if by_name.get(name)]
    head = ["config", "img/s median", "(min-max)", *[f"x {name}" for name in refs], "warm-up s",
            "peak mem MiB", "final loss"]  # fmt: skip
    rows = [head]
    for r in results:
        if "median_images_per_s" not in r:
            rows.append([r["config"], r.get("skipped") or f"FAILED ({r.get('failed')})"])
            continue
        med, rates = r["median_images_per_s"], r["images_per_s"]
        mem = r.get("peak_cuda_mib", r["peak_rss_mib"])
        rows.append([
            r["config"], f"{med:.1f}", f"({min(rates):.0f}-{max(rates):.0f})",
            *[f"{med / by_name[name]:.2f}" for name in refs],
            f"{r['warmup_s']:.1f}", f"{mem:.0f}", f"{r['final_loss']:.1f}",
        ])  # fmt: skip
    full = [row for row in rows if len(row) == len(head)]
    widths = [max(len(row[i]) for row in full) for i in range(len(head))]
    lines = []
    for row in rows:
        if len(row) != len(head):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            lines.append(
                "  ".join(
                    f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def environment(args) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_data import describe

    env = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
        "data": describe(args.data_dir, args.num_images),
        "batch_size": args.batch_size,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per timed window (default 20)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per run (default 5)")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps, compilation included")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole list of configs this many times, interleaved; windows are pooled",
    )
    p.add_argument(
        "--configs",
        default="eager,handwritten,fast,tfp",
        help="comma-separated: eager, handwritten, fast, tfp, fast-OPTS "
        "(OPTS: compile, cl, bf16, fused, mem, tconv, narrow joined by +, or none), "
        "tfp-mem, tfp-onednn, tfp-eigen",
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op (and TF intra/inter-op) threads")
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: synthetic images)")
    p.add_argument("--num-images", type=int, default=60000, help="training images held in memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="also profile STEPS steps of each config in --profile-configs (torch.profiler)",
    )
    p.add_argument("--profile-configs", default="eager,handwritten,fast")
    p.add_argument(
        "--sync-debug",
        action="store_true",
        help="CUDA: list the host-device synchronizations of 3 steps (after the timed windows)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--setup-tfp", action="store_true", help="create .tfp-venv with TensorFlow/TFP and exit")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "windows", "warmup", "threads", "num_images", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive int")
    if args.num_images < args.batch_size:
        p.error("--num-images must be >= --batch-size")
    try:
        args.config_list = [check_config(c.strip()) for c in args.configs.split(",") if c.strip()]
    except ValueError as err:
        p.error(str(err))
    args.profile_configs = [c.strip() for c in args.profile_configs.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_tfp:
        return setup_tfp()
    if args.worker:
        args.config = args.worker
        print("RESULT " + json.dumps(run_torch_worker(args)), flush=True)
        return 0
    env = environment(args)
    runs = [run_config(config, args) for _ in range(args.repeats) for config in args.config_list]
    results = pool(runs, args.config_list)
    env["load_average_end"] = os.getloadavg()
    summarize(results)
    print(
        f"# {env['date_utc']} UTC; {env['cpu']} ({env['cpus']} CPUs); torch {env['torch']}; "
        f"threads {args.threads}; device {args.device}; batch {args.batch_size}"
    )
    print(f"# CPU ISA: {env['cpu_isa']}")
    print(f"# data: {env['data']}")
    print(
        f"# {args.repeats} run(s) x {args.windows} windows x {args.steps} steps after {args.warmup} "
        "warm-up steps; "
        f"load average (1/5/15 min) at start {env['load_average_start']}, end {env['load_average_end']}"
    )
    print(table(results))
    for r in results:
        if "options" in r:
            print(f"# {r['config']}: make_train_step options {r['options']}")
        if "step_choice" in r:
            print(f"# {r['config']}: {r['step_choice']}")
        if "tf_onednn" in r:
            kernels = {True: "oneDNN", False: "Eigen (oneDNN off)"}.get(r["tf_onednn"], "unknown")
            print(f"# {r['config']}: TensorFlow's kernels: {kernels}")
        if "failed" in r:
            print(f"# {r['config']} failed:\n" + "\n".join(r["stderr_tail"]))
        if "syncs" in r:
            print(f"\n# {r['config']}: {len(r['syncs'])} distinct host-device synchronization(s)")
            for text in r["syncs"]:
                print(text)
        if "profile" in r:
            print(f"\n# profile of {r['config']} ({args.profile} steps):\n{r['profile']}")
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
        print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
