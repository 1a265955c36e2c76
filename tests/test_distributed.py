"""Data-parallel training (torch.distributed, gloo on CPU): DDP gradients equal one process's on the
global batch, 2 processes match 1, a NaN on one rank stops all, resume across world sizes.

End-to-end tests launch ``python -m torch.distributed.run --nproc-per-node 2 ...`` (torchrun) as a
subprocess; unit-level ones start 2 processes with ``torch.multiprocessing`` and the same
environment variables torchrun sets.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import problayers as pl
from problayers.train import distributed
from problayers.train.trainer import NonFiniteLossError, Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--latent-size",
    "4",
    "--base-depth",
    "4",
    "--synthetic",
    "128",
    "--batch-size",
    "32",
    "--no-progress",
    "--no-fast",  # one process and two run the same (eager) step, never a measured choice
]

# Two processes vs one, on the deterministic model below: same data, same initial weights, and
# DDP's averaged gradient is the gradient of the global batch's mean loss, so the runs differ only
# by float32 rounding (two half-batch means averaged vs one full-batch mean, the all-reduce's
# order, conv kernels on other batch shapes). Measured over 3 epochs of 4 steps: 1.1e-7 relative on
# the per-epoch metrics, 2.7e-7 on the weights (max |diff| / max |w| per tensor), i.e. a few float32
# ulps. RTOL = 1e-5 leaves ~50x margin for other CPUs, yet a DDP that does not average (each rank
# stepping on its own half batch) misses it by far: 5e-3 on the metrics (the KL terms), 0.1 on the
# weights.
RTOL = 1e-5

# The CLI with one more model: the seed VAE whose encoder hands the decoder the posterior *mean*
# (no reparameterization noise; run with --exact-kl so the KL is analytic): a training step is then
# a deterministic function of the batch and the weights, whatever the number of processes.
DETERMINISTIC_CLI = """
import sys
from problayers.cli import main
from problayers.vae.models import register_model
from problayers.vae.models.seed import seed_vae

@register_model("seed-mean")
def seed_mean(cfg):
    vae = seed_vae(cfg)
    vae.encoder[-1].convert_to_tensor_fn = "mean"
    return vae

sys.exit(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True, scope="module")
def _torchrun_temp_dir(tmp_path_factory):
    """torchrun's agent makes a ``torchelastic_*`` directory under TMPDIR and leaves it: point the
    subprocesses' TMPDIR at pytest's own temporary tree (the test process has fixed its own)."""
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmpdir")))
        yield


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *args,
    ]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "X"


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


METRICS = ("train_loss", "train_recon", "train_kl", "test_neg_elbo", "test_recon", "test_kl")


def _assert_same_run(a: Path, b: Path) -> float:
    """Metrics per epoch (relative) and final weights (relative to each tensor's largest entry) of
    runs ``a`` and ``b`` agree to ``RTOL``; returns the largest relative difference seen."""
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]
    worst = 0.0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in METRICS:
            rel = abs(ra[key] - rb[key]) / max(abs(ra[key]), 1e-12)
            worst = max(worst, rel)
            assert rel <= RTOL, (ra["epoch"], key, ra[key], rb[key])
    wa = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
    assert list(wa) == list(wb)  # unwrapped: no "module." prefix
    for name in wa:
        rel = ((wa[name] - wb[name]).abs().max() / wa[name].abs().max().clamp_min(1e-12)).item()
        worst = max(worst, rel)
        assert rel <= RTOL, (name, rel)
    return worst


# ----------------------------------------------------------------------------- no processes
def test_environment_detection(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_ranks() is None
    assert distributed.init_from_env() is None  # plain `python -m problayers`: single-process
    with distributed.launch() as ctx:
        assert ctx is None
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.env_ranks(env) == (1, 4, 1, 2)
    with pytest.raises(ValueError, match="LOCAL_RANK not set"):
        distributed.env_ranks({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.env_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.init_from_env() is None  # torchrun --nproc-per-node 1: single-process


def test_global_batch_and_device_checks():
    distributed.check_global_batch(64, 4)
    match = r"global batch and must be divisible .* \(world size 4\); use e.g. 60 or 64"
    with pytest.raises(ValueError, match=match):
        distributed.check_global_batch(62, 4)
    with pytest.raises(
        ValueError, match=r"cannot change on resume; resume on 1, 2, 4, 8, 16, 32 or 64 processes$"
    ):
        distributed.check_global_batch(64, 3, resuming=True)  # it advised a batch size (DDP audit)
    distributed.check_device_spec("cuda", 8)
    distributed.check_device_spec("cuda:0", 1)
    with pytest.raises(ValueError, match="--device cuda"):
        distributed.check_device_spec("cuda:1", 2)


def test_batch_norm_is_synchronized_where_torch_can_and_noted_where_not():
    """resnet's BatchNorm normalized each rank's half batch, and DDP then broadcast rank 0's
    running statistics: two processes trained otherwise than one (DDP audit). On a GPU the layers
    become SyncBatchNorm, sharing the parameters and buffers an optimizer already holds."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm1d(3)))
    tensors = {name: id(t) for name, t in model.state_dict(keep_vars=True).items()}
    same, note = distributed.sync_batch_norm(model, torch.device("cpu"))
    assert same is model and "each process's share of the batch on cpu" in note
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    synced, note = distributed.sync_batch_norm(model, torch.device("cuda"))  # converts without a GPU
    assert note is None and synced is model
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 2
    assert {name: id(t) for name, t in synced.state_dict(keep_vars=True).items()} == tensors
    plain = nn.Linear(2, 2)
    assert distributed.sync_batch_norm(plain, torch.device("cpu")) == (plain, None)


# ----------------------------------------------------------------------------- unit level, 2 processes
def _spawn(fn, tmp_path: Path, nprocs: int = 2) -> list[dict]:
    """Run ``fn(rank, world_size, out_dir)`` in ``nprocs`` processes joined in a gloo group through
    the torchrun environment variables; returns what each rank wrote to ``out_dir/rank{r}.json``."""
    port = _free_port()
    mp.start_processes(_worker, args=(nprocs, port, fn, str(tmp_path)), nprocs=nprocs, start_method="spawn")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(nprocs)]


def _worker(rank: int, world: int, port: int, fn, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    ctx = distributed.init_from_env(timeout=timedelta(seconds=60))  # a hang fails, not blocks
    assert ctx is not None and ctx.rank == rank and ctx.world_size == world
    try:
        result = fn(ctx, Path(out_dir))
    except BaseException:
        result = {"error": traceback.format_exc()}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    # Meet before tearing the group down: a rank that destroys its gloo group while its peer is
    # still finishing can abort the peer ("terminate called without an active exception"); and
    # leave without interpreter finalization, during which gloo's worker threads can still drop
    # tensors and abort the process (pytorch/pytorch#179291): the results are written already.
    gc.collect()
    with contextlib.suppress(Exception):
        torch.distributed.barrier()
    distributed.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _deterministic_vae(beta: float):
    from problayers.vae.models import ModelConfig, build_model

    torch.manual_seed(0)
    vae = build_model(ModelConfig(latent_size=4, base_depth=4, beta=beta, exact_kl=True))
    vae.encoder[-1].convert_to_tensor_fn = "mean"  # no noise: gradients are deterministic
    return vae


def _gradients(ctx, out_dir):
    from problayers.vae.data import EpochBatches, synthetic_mnist
    from problayers.vae.models import vae_loss

    images, _ = synthetic_mnist(64, seed=0)
    x = next(iter(EpochBatches(images, 16, seed=0).epoch(0)))  # the global batch (16, 1, 28, 28)
    shard = next(iter(EpochBatches(images, 16, seed=0, rank=ctx.rank, world_size=2).epoch(0)))
    assert torch.equal(shard, x[8 * ctx.rank : 8 * ctx.rank + 8])
    out = {}
    for beta in (1.0, 200.0):  # 200: the encoder's gradient is mostly the KL added in the forward
        model = _deterministic_vae(beta)
        single, local = copy.deepcopy(model), copy.deepcopy(model)
        ddp = ctx.wrap(model)
        loss, metrics = vae_loss(ddp, shard)  # the forward through DDP; the KL found through it
        assert metrics["kl"] > 0
        loss.backward()  # DDP averages the two ranks' gradients
        vae_loss(single, x)[0].backward()  # one process, the global batch
        vae_loss(local, shard)[0].backward()  # this rank alone (what no averaging would give)
        worst_ddp = worst_local = 0.0
        for name, p in model.named_parameters():
            ref = dict(single.named_parameters())[name].grad
            scale = ref.abs().max().item() + 1e-12
            worst_ddp = max(worst_ddp, (p.grad - ref).abs().max().item() / scale)
            alone = dict(local.named_parameters())[name].grad
            worst_local = max(worst_local, (alone - ref).abs().max().item() / scale)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        digest = hashlib.sha256(grads.numpy().tobytes()).hexdigest()
        out[str(beta)] = {"ddp": worst_ddp, "local": worst_local, "digest": digest}
    return out


def test_ddp_gradient_is_the_global_batch_gradient(tmp_path):
    """DDP's averaged gradient of ``vae_loss`` (reconstruction + the KL the encoder adds inside the
    forward) on each rank's half batch equals one process's gradient on the global batch."""
    results = _spawn(_gradients, tmp_path)
    for r in results:
        assert "error" not in r, r.get("error")
        for beta, worst in r.items():
            assert worst["ddp"] < 1e-4, (beta, worst)  # float32 rounding only (seen: ~7e-6)
            assert worst["local"] > 0.1, (beta, worst)  # the check has power (seen: ~0.85)
    for beta in results[0]:  # every rank holds the same averaged gradient, bitwise
        assert results[0][beta]["digest"] == results[1][beta]["digest"]


def _nan_on_rank_one(ctx, out_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), pl.IndependentNormal(1))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)
    step = {"n": 0}
    seen = set()

    def batches(epoch):  # this rank's half of 4 global batches of 16
        lo = 8 * ctx.rank
        return [(x[i + lo : i + lo + 8], y[i + lo : i + lo + 8]) for i in range(0, 64, 16)]

    def loss_fn(m, batch):
        seen.add(type(m).__name__)
        step["n"] += 1
        nll = -m(batch[0]).log_prob(batch[1]).mean()
        return nll * float("nan") if ctx.rank == 1 and step["n"] == 6 else nll  # epoch 2, step 2

    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), 0.01),
        loss_fn,
        batches,
        TrainerConfig(epochs=3, log_every=2, progress=False),
        run_dir=out_dir / "run",
        log=lambda msg: None,
        dist=ctx,
    )
    try:
        trainer.fit()
        message = None
    except NonFiniteLossError as err:
        message = str(err)
    state = torch.load(out_dir / "run" / "checkpoint.pt", weights_only=True) if ctx.is_main else None
    return {
        "message": message,
        "steps": step["n"],
        "models": sorted(seen),
        "checkpoint": None
        if state is None
        else {
            "epoch": state["epoch"],
            "world_size": state["world_size"],
            "keys": sorted(state["model"]),
            "rng_ranks_differ": not torch.equal(*state["rng_cpu_ranks"]),
            "finite": all(bool(torch.isfinite(t).all()) for t in state["model"].values()),
        },
    }


def test_nan_on_one_rank_stops_every_rank(tmp_path):
    r0, r1 = _spawn(_nan_on_rank_one, tmp_path)
    assert "error" not in r0 and "error" not in r1, r0.get("error") or r1.get("error")
    assert r0["message"] == r1["message"]  # both ranks stop, at the same point, with one message
    assert "loss is nan on rank(s) 1 of 2 in epoch 2 (within its first 2 steps)" in r0["message"]
    assert "training stopped on every rank, the last good checkpoint (epoch 1) is kept" in r0["message"]
    assert r0["steps"] == r1["steps"] == 6  # at the first logging point after the NaN (log_every 2)
    assert r0["models"] == ["DistributedDataParallel"]  # loss_fn got the DDP wrapper
    ckpt = r0["checkpoint"]
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2 and ckpt["finite"] and ckpt["rng_ranks_differ"]
    assert ckpt["keys"] == ["0.bias", "0.weight"]  # the unwrapped model's names
    assert r1["checkpoint"] is None  # rank 0 alone writes
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "run"))  # no temp files


def _uneven_steps(ctx, out_dir):
    model = nn.Sequential(nn.Linear(3, 2), pl.IndependentNormal(1))
    x, y = torch.randn(40, 3), torch.randn(40, 1)
    shard = (4, 5)[ctx.rank]  # rank 0: 4 batches of 8, rank 1: 5 of 8 (a mis-sharded loader)

    def batches(epoch):
        return [(x[i : i + 8], y[i : i + 8]) for i in range(0, 8 * shard, 8)]

    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), 0.01),
        lambda m, b: -m(b[0]).log_prob(b[1]).mean(),
        batches,
        TrainerConfig(epochs=1, progress=False),
        log=lambda msg: None,
        dist=ctx,
    )
    try:
        trainer.fit()
    except ValueError as err:
        return {"message": str(err)}
    return {"message": None}


def test_ranks_with_unequal_epoch_lengths_stop_with_one_line(tmp_path):
    r0, r1 = _spawn(_uneven_steps, tmp_path)
    assert r0 == r1  # both ranks stop before any step, with the same message
    assert r0["message"] == (
        "batches(0) has 4 on rank 0, 5 on rank 1: every rank needs the same number of steps "
        "(its shard of every global batch)"
    )


def _bad_batch(ctx, out_dir):
    from problayers.vae.experiment import RunConfig, train
    from problayers.vae.models import ModelConfig

    tiny = ModelConfig(latent_size=4, base_depth=4)
    cfg = RunConfig(model=tiny, batch_size=31, synthetic=64, epochs=1, progress=False)
    try:
        train(cfg, out_dir / "run", dist=ctx)
    except Exception as err:
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None}


def test_global_batch_not_divisible_is_a_clear_error(tmp_path):
    r0, r1 = _spawn(_bad_batch, tmp_path)
    assert r0["type"] == "ValueError"
    assert "divisible by the number of processes (world size 2)" in r0["message"]
    assert r1["type"] == "RankZeroError"  # rank 0 reports it; rank 1 stops quietly
    assert not (tmp_path / "run").exists()


def _free_bits_and_notes(ctx, out_dir):
    from problayers.vae.data import EpochBatches, synthetic_mnist
    from problayers.vae.models import vae_loss

    images, _ = synthetic_mnist(64, seed=0)
    x = next(iter(EpochBatches(images, 16, seed=0).epoch(0)))  # the global batch
    shard = next(iter(EpochBatches(images, 16, seed=0, rank=ctx.rank, world_size=2).epoch(0)))
    base = _deterministic_vae(1.0)
    with torch.no_grad():  # no gradients: no collective (rank 0 evaluates alone)
        kl_here = float(vae_loss(copy.deepcopy(base), shard)[1]["kl"])
    lo, hi = sorted(ctx.all_gather_object(kl_here))
    model = copy.deepcopy(base)
    # The floor between the shards' KLs and above their mean (the global batch's): one process
    # clamps, so the KL does not pull; each shard deciding alone, one of them pulled.
    model.objective.free_bits = (0.25 * lo + 0.75 * hi) / 4  # latent size 4, KL weight 1
    single = copy.deepcopy(model)
    notes: list[str] = []
    ddp = ctx.wrap(model, log=notes.append)
    vae_loss(ddp, shard)[0].backward()
    vae_loss(single, x)[0].backward()
    worst = 0.0
    for name, p in model.named_parameters():
        ref = dict(single.named_parameters())[name].grad
        worst = max(worst, (p.grad - ref).abs().max().item() / (ref.abs().max().item() + 1e-12))
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ctx.wrap(bn, log=notes.append)
    return {"kls": [lo, hi], "worst": worst, "notes": notes}


def test_free_bits_floor_is_the_global_batchs_and_batch_norm_is_noted(tmp_path):
    """free bits clamped each rank's KL: with the floor between the shards' KLs, the update was
    not the global batch's (DDP audit); the BatchNorm note is printed once, by rank 0."""
    r0, r1 = _spawn(_free_bits_and_notes, tmp_path)
    assert "error" not in r0, r0.get("error")
    assert r0["kls"][0] < r0["kls"][1]  # the shards straddle the floor
    assert r0["worst"] < 1e-4 and r1["worst"] < 1e-4, (r0["worst"], r1["worst"])
    assert r0["notes"] == [
        "note: BatchNorm layers normalize each process's share of the batch on cpu (torch's "
        "SyncBatchNorm needs a GPU), so this training differs from one process's"
    ]
    assert r1["notes"] == []


def test_a_distributed_error_is_a_peers_stop_only_where_the_peer_left():
    """Any DistError read as 'another process stopped', also a busy port before any peer existed
    (diff review): that one is torch.distributed's own line now, not the peer's."""
    from problayers.cli.errors import describe

    busy = torch.distributed.DistNetworkError(
        "The server socket has failed to listen on any local network address. port: 29517, "
        "useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use"
    )
    status, line = describe(busy)
    assert status == 1 and line.startswith("problayers: error: torch.distributed: The server socket")
    assert "EADDRINUSE" in line and "another process" not in line
    closed = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:7321")
    assert "another process of this data-parallel run stopped" in describe(closed)[1]


class _Unpicklable(OSError):
    def __init__(self, handle):
        super().__init__(5, "I/O error")
        self.handle = handle


def _relay_then_leave(ctx, out_dir):
    from problayers.cli.errors import describe

    result: dict = {}
    for name, make in (
        ("os", lambda: OSError(2, "No such file or directory", "/x/run")),
        ("value", lambda: ValueError("batch_size: bad")),
        ("unpicklable", lambda: _Unpicklable(lambda: None)),
    ):

        def fail(make=make):
            raise make()

        try:
            ctx.run_on_main(fail)
        except Exception as err:
            relayed = getattr(err, "error", None)
            result[name] = [type(err).__name__, describe(err if ctx.is_main else relayed or err)[0]]
            if not ctx.is_main:
                result[name].append(None if relayed is None else type(relayed).__name__)
    if ctx.rank == 1:  # leaves the group while rank 0 waits in a collective
        (out_dir / "rank1.json").write_text(json.dumps(result))
        os._exit(0)
    try:
        ctx.all_reduce_sum(torch.ones(1))
    except Exception as err:
        result["peer"] = describe(err)
    return result


def test_rank_0s_exit_status_is_every_ranks_and_a_peers_stop_is_one_line(tmp_path):
    """Rank 0's OSError (status 1) ended the other ranks with status 2; a rank whose peer stopped
    printed gloo's 'Connection closed by peer' as an internal error (DDP audit)."""
    r0, r1 = _spawn(_relay_then_leave, tmp_path)
    assert "error" not in r0, r0.get("error")
    assert r0["os"] == ["FileNotFoundError", 1] and r1["os"] == ["RankZeroError", 1, "FileNotFoundError"]
    assert r0["value"] == ["ValueError", 2] and r1["value"] == ["RankZeroError", 2, "ValueError"]
    assert r1["unpicklable"] == ["RankZeroError", 1, None]  # a RuntimeError's status without a copy
    status, line = r0["peer"]
    assert status == 1 and line.startswith(
        "problayers: error: another process of this data-parallel run stopped (its own message says "
        "why), so this one stopped too (torch.distributed: "
    ), line
    assert "\n" not in line


def _bad_test_subset(ctx, out_dir):
    from problayers.vae.experiment import RunConfig, train
    from problayers.vae.models import ModelConfig

    tiny = ModelConfig(latent_size=4, base_depth=4)
    cfg = RunConfig(model=tiny, batch_size=32, synthetic=64, test_subset=1000, epochs=1, progress=False)
    try:
        train(cfg, out_dir / "run", dist=ctx)
    except Exception as err:
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None}


def test_an_error_of_rank_0_while_it_loads_the_data_stops_the_others_quietly(tmp_path):
    """Rank 0 failed inside local_main_first (the data: only it loads the test set) and never
    reached the barrier: rank 1 printed gloo's 'connection closed' as an internal error (DDP
    audit)."""
    r0, r1 = _spawn(_bad_test_subset, tmp_path)
    assert r0["type"] == "ValueError" and "expected at most the 64 test images, got 1000" in r0["message"]
    assert r1["type"] == "RankZeroError" and "rank 0 failed: ValueError" in r1["message"]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _launch_and_leave(rank: int, world: int, port: int, out_dir: str) -> None:
    """A rank that trains a DDP model inside ``launch()`` and lets go of it in a reference cycle,
    as the CLI's ``train`` does; reports its native thread count before and after the block."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.ones(2, requires_grad=True).sum().backward()  # torch's own lazy threads, if any, start now
    before = _threads()
    with distributed.launch(timeout=timedelta(seconds=60)) as ctx:
        assert ctx is not None
        inside = _threads()
        ddp = ctx.wrap(nn.Linear(3, 1))
        ddp.cycle = [ddp]  # freed by the garbage collector only, like the trainer's model
        ddp(torch.randn(4, 3)).sum().backward()
        ctx.all_gather_object(rank)  # tensors made in Python, held by gloo's work
        del ddp
    # A joined thread can stay listed for a moment while the kernel finishes its exit (seen: in
    # state R, or with no readable name, gone 0.5 s later); a thread the group still runs stays.
    deadline = time.monotonic() + 5.0
    while (after := _threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps([before, inside, after]))
    os._exit(0)  # the result is the count above; no finalization to race with


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in Linux /proc")
def test_launch_leaves_no_process_group_threads(tmp_path):
    """Leaving ``launch()`` joins gloo's threads even when the DDP model is garbage in a cycle:
    left running into interpreter finalization, they can abort the process (see ``shutdown``)."""
    port = _free_port()
    mp.start_processes(_launch_and_leave, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    for r in range(2):
        before, inside, after = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert inside > before  # the group runs threads of its own (the check has power)
        assert after == before, (before, inside, after)


# ----------------------------------------------------------------------------- end to end, torchrun
@pytest.fixture(scope="module")
def deterministic(tmp_path_factory):
    """The deterministic CLI and a single-process reference run of it (3 epochs of 4 steps)."""
    root = tmp_path_factory.mktemp("ddp")
    script = root / "deterministic_cli.py"
    script.write_text(DETERMINISTIC_CLI)
    args = ["train", "--model", "seed-mean", "--exact-kl", *TINY]
    _run([sys.executable, str(script), *args, "--epochs", "3", "--out", str(root / "ref")])
    return script, args, root / "ref"


def test_two_processes_match_one(deterministic, tmp_path):
    script, args, ref = deterministic
    proc = _run(_torchrun(2, str(script), *args, "--epochs", "3", "--out", str(tmp_path / "ddp")))
    assert proc.stdout.count("epoch 3: test -ELBO") == 1  # rank 0 alone prints
    _assert_same_run(ref, tmp_path / "ddp")
    rows = _rows(tmp_path / "ddp")
    assert all(r["world_size"] == 2 and r["steps"] == 4 for r in rows)
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == {p.name for p in ref.iterdir()}


def test_single_process_checkpoint_resumes_on_two(deterministic, tmp_path):
    script, args, ref = deterministic
    run = tmp_path / "run"
    _run([sys.executable, str(script), *args, "--epochs", "1", "--out", str(run)])
    first = _rows(run)
    _run(_torchrun(2, str(script), "train", "--resume", str(run), "--epochs", "3", "--no-progress"))
    rows = _rows(run)
    assert rows[0] == first[0] and "world_size" not in rows[0]
    assert [r.get("world_size") for r in rows[1:]] == [2, 2]
    _assert_same_run(ref, run)  # continues from the checkpoint: as if never interrupted


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc")
def test_two_process_run_killed_then_resumed_on_one(tmp_path):
    """SIGKILL the torchrun process group once the first checkpoint lands (mid-epoch 2 or later);
    resume on a single process from that checkpoint."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _torchrun(2, "-m", "problayers", "train", *TINY, "--epochs", "4", "--out", str(run)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: torchrun and both workers
    )
    ckpt = run / "checkpoint.pt"
    deadline = time.monotonic() + 90
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # torchrun starts each worker in a session of its own: kill the whole tree, as a crash would.
    tree = [proc.pid, *_descendants(proc.pid)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # torchrun's group, then each worker's
    proc.wait()
    for pid in tree[1:]:
        while Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid):
            time.sleep(0.01)
    state = torch.load(ckpt, weights_only=True)
    done = state["epoch"]
    assert 1 <= done < 4, "the run was not killed mid-way"
    assert state["world_size"] == 2 and len(state["rng_cpu_ranks"]) == 2
    before = json.loads(state["history"])

    out = _run([sys.executable, "-m", "problayers", "train", "--resume", str(run), "--no-progress"])
    assert "epoch 4: test -ELBO" in out.stdout
    final = torch.load(ckpt, weights_only=True)
    assert final["epoch"] == 4 and final["world_size"] == 1 and "rng_cpu_ranks" not in final
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[:done] == before  # the 2-process epochs are kept as they were
    assert all(r["world_size"] == 2 for r in rows[:done]) and all("world_size" not in r for r in rows[done:])
    assert all(r["steps"] == 4 for r in rows)  # global batch 32 either way: 128 / 32 steps
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_resume_on_the_same_world_size_is_bitwise(tmp_path):
    """Each rank gets its own random stream back: 1 + 1 epochs on 2 processes equal 2 epochs."""
    cmd = ["-m", "problayers", "train", *TINY]
    _run(_torchrun(2, *cmd, "--epochs", "2", "--out", str(tmp_path / "full")))
    _run(_torchrun(2, *cmd, "--epochs", "1", "--out", str(tmp_path / "part")))
    resume = ["-m", "problayers", "train", "--resume", str(tmp_path / "part"), "--epochs", "2"]
    _run(_torchrun(2, *resume, "--no-progress"))
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert part["epoch"] == full["epoch"] == 2
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, part["model"][name]), name

    def strip(run_dir):
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in _rows(run_dir)]

    assert strip(tmp_path / "full") == strip(tmp_path / "part")


def test_env_ranks_checks_the_local_rank_and_defaults_the_local_world():
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.env_ranks({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"})
    # no LOCAL_WORLD_SIZE: one node, all ranks local
    assert distributed.env_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1, 2)


def test_split_rng_leaves_rank_0_and_gives_each_rank_its_own_stream():
    draws = []
    for rank in range(3):
        torch.manual_seed(0)
        distributed.DistContext(rank, 3, rank, 3).split_rng()
        draws.append(torch.rand(4))
    torch.manual_seed(0)
    assert torch.equal(draws[0], torch.rand(4))
    assert not torch.equal(draws[1], draws[2]) and not torch.equal(draws[0], draws[1])


def test_cuda_device_is_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    assert distributed.DistContext(3, 4, 1, 2).device_for("cuda") == torch.device("cuda", 1)
