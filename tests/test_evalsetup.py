"""How an evaluation runs (problayers.vae.evalsetup): the CLI's and the IWAE benchmark's one choice."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from problayers.train.transposed import Conv2dByTransposed
from problayers.vae import evalsetup, runconfig
from problayers.vae.evalsetup import default_call_sizes, largest_activation_bytes, prepare_evaluation
from problayers.vae.models import ModelConfig, build_model
from problayers.vae.runconfig import RunConfig

REPO = Path(__file__).resolve().parents[1]
CFG = RunConfig(model=ModelConfig(latent_size=4, base_depth=4), batch_size=8)
X = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))


def _model():
    torch.manual_seed(0)
    return build_model(CFG.model).eval()


def _no_probe(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(runconfig, "measure_step", refuse)


def test_call_sizes_per_device():
    # on a CPU 512 latents a call, fewer while the largest activation of the call exceeds 32 MiB
    assert default_call_sizes("cpu") == (4, 128) == default_call_sizes(torch.device("cpu"), 65536)
    assert default_call_sizes("cpu", 32 * 28 * 28 * 4) == (4, 64)  # the seed decoder in fp32
    assert default_call_sizes("cpu", 32 * 28 * 28 * 2) == (4, 128)  # ... in bf16
    assert default_call_sizes("cpu", 10**9) == (4, 1)
    assert default_call_sizes("cuda", 10**9) == (100, 500) == default_call_sizes("mps")


def test_largest_activation_of_the_decoders():
    torch.manual_seed(0)
    seed = build_model(ModelConfig()).eval()
    state = torch.get_rng_state()
    assert largest_activation_bytes(seed) == 32 * 28 * 28 * 4  # the last transposed convolution's
    assert largest_activation_bytes(seed, "bf16") == 32 * 28 * 28 * 2
    assert torch.equal(torch.get_rng_state(), state)
    assert not any(m._forward_hooks for m in seed.modules())  # its hooks are gone
    mlp = build_model(ModelConfig.for_model("mlp", prior="vamp")).eval()
    assert largest_activation_bytes(mlp) < 10_000  # the decoder's; not the prior's pseudo-inputs
    # so the seed model in fp32 takes 256 latents a call, in bf16 512, and an MLP 512 in fp32
    assert prepare_evaluation(seed, CFG, X, fast=False).chunk_size == 64
    assert prepare_evaluation(seed, CFG, X, precision="bf16").chunk_size == 128
    assert prepare_evaluation(mlp, CFG, X, fast=False).chunk_size == 128


def test_no_fast_is_fp32_as_built_without_probe_or_memory(monkeypatch):
    _no_probe(monkeypatch)
    model = _model()
    setup = prepare_evaluation(model, CFG, X, fast=False)
    assert setup.options() == {
        "precision": "fp32",
        "channels_last": False,
        "narrow_conv_by_transposed": False,
        "batch_size": 4,
        "chunk_size": 128,
    }
    assert setup.memory is None and setup.step_choice is None and setup.report() == []
    assert all(p.is_contiguous() for p in model.parameters())  # the layout as built
    assert isinstance(setup.autocast(model), contextlib.nullcontext)


def test_explicit_options_replace_the_probe(monkeypatch):
    _no_probe(monkeypatch)
    model = _model()
    setup = prepare_evaluation(
        model, CFG, X, precision="bf16", narrow_conv_by_transposed=True, batch_size=2, chunk_size=3
    )
    assert (setup.precision, setup.channels_last, setup.batch_size, setup.chunk_size) == ("bf16", False, 2, 3)
    # the seed decoder's one-channel last convolution switched: its forward is depthwise + channel sum
    assert setup.narrow_conv_by_transposed is True
    assert any(isinstance(m, Conv2dByTransposed) for m in model.modules())
    ctx = setup.autocast(model)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    # channels_last given alone: fp32 in NHWC, still no probe
    model = _model()
    setup = prepare_evaluation(model, CFG, X, channels_last=True)
    assert (setup.precision, setup.channels_last, setup.step_choice) == ("fp32", True, None)
    assert (setup.batch_size, setup.chunk_size) == (4, 128)  # a small decoder: 512 latents a call
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fast_on_a_cpu_takes_the_probes_choice():
    model = _model()
    setup = prepare_evaluation(model, CFG, X)  # the tests' fixed timings: fp32 + channels_last fastest
    assert setup.step_choice is not None and setup.step_choice.chosen == "fp32+channels_last"
    assert (setup.precision, setup.channels_last, setup.narrow_conv_by_transposed) == ("fp32", True, False)
    assert setup.memory is not None  # freed memory kept (or why not, off glibc)
    lines = setup.report()
    assert lines[0].startswith("memory: ") and lines[1].startswith("evaluation step: fp32+channels_last (")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "fp16"}, "precision: expected 'fp32', 'bf16' or None, got 'fp16'"),
        ({"batch_size": 0}, "batch_size: expected a positive int or None, got 0"),
        ({"chunk_size": 2.5}, "chunk_size: expected a positive int or None, got 2.5"),
        ({"batch_size": True}, "batch_size: expected a positive int or None, got True"),
    ],
)
def test_bad_options_get_one_line(kwargs, message, monkeypatch):
    _no_probe(monkeypatch)
    with pytest.raises(ValueError) as err:
        prepare_evaluation(_model(), CFG, X, **kwargs)
    assert str(err.value) == message


def _bench_iwae():
    spec = importlib.util.spec_from_file_location("bench_iwae", REPO / "benchmarks" / "bench_iwae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_iwae_benchmark_times_what_the_cli_runs(tmp_path, monkeypatch, capsys):
    bench = _bench_iwae()
    args = bench.parse_args([])
    assert (args.batch_size, args.chunk_size, args.fast, args.precision) == (None, None, None, None)
    assert bench.parse_args(["--bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        bench.parse_args(["--bf16", "--precision", "fp32"])
    calls = []
    real = evalsetup.prepare_evaluation

    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(evalsetup, "prepare_evaluation", spy)
    out = tmp_path / "iwae.json"
    argv = ["--n", "2", "--k", "2", "--repeats", "1", "--threads", "1", "--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert calls[-1]["fast"] is None and calls[-1]["keep_memory"] is True  # the CLI's default choice
    assert (result["batch_size"], result["chunk_size"]) == (4, 64)  # fp32 on a CPU
    assert result["step_choice"]["chosen"] == "fp32+channels_last" and result["channels_last"] is True
    assert "# evaluation step: fp32+channels_last (" in capsys.readouterr().out
    assert bench.main([*argv, "--no-fast", "--chunk-size", "5"]) == 0
    result = json.loads(out.read_text())
    assert (result["precision"], result["channels_last"], result["step_choice"]) == ("fp32", False, None)
    assert (result["batch_size"], result["chunk_size"]) == (4, 5)
    assert result["profile"] is None
    capsys.readouterr()
    assert bench.main([*argv, "--no-fast", "--profile"]) == 0  # the operators of one more run
    table = json.loads(out.read_text())["profile"]
    assert "aten::" in table and "Self CPU" in table
    assert f"# torch.profiler, one more run of K=2 on N=2:\n{table}" in capsys.readouterr().out
