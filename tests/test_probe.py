"""The CPU step probe (problayers.train.probe): measured choice, margin, cache, no side effects."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from problayers.train import cpu, probe
from problayers.train.probe import CPU_CANDIDATES, Candidate, probe_step_options


def _net():
    torch.manual_seed(0)
    # 16 output channels: no layer whose passes the conv_passes candidates would exchange
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.LeakyReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 1))


def _loss(model, batch):
    return (model(batch) + 0.01 * torch.randn(())).pow(2).mean()  # draws: the RNG must be restored


BATCH = torch.rand(8, 1, 8, 8)
FP32 = CPU_CANDIDATES[:2]


@pytest.mark.real_probe
def test_measures_every_candidate_and_leaves_the_callers_model_and_rng(tmp_path):
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = torch.get_rng_state()
    choice = probe_step_options(model, opt, _loss, BATCH, workload="w", cache=tmp_path / "c.json")
    assert torch.equal(torch.get_rng_state(), state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]) and tensor.is_contiguous(), name  # not channels_last
    assert not opt.state  # the caller's optimizer never stepped
    expected = {
        c.name
        for c in CPU_CANDIDATES
        if (not c.bf16 or probe.cpu_has_native_bf16()) and not c.options["transposed_as_conv"]
    }  # no transposed or narrow convolution in the model: those options would change nothing
    assert set(choice.seconds_per_step) == expected
    assert all(t > 0 for t in choice.seconds_per_step.values())
    assert choice.chosen in expected and choice.options == dict(
        next(c for c in CPU_CANDIDATES if c.name == choice.chosen).options
    )
    assert not choice.cached and choice.record()["by"] == "probe"
    assert choice.describe().startswith(f"step: {choice.chosen} (")


def _fake_times(times):
    def timings(model, optimizer, loss_fn, batch, candidates, warmup, repeats):
        return {c.name: times[c.name] for c in candidates}

    return timings


@pytest.mark.parametrize(
    "bf16_time, chosen",
    [(0.95, "fp32+channels_last"), (0.85, "bf16+channels_last"), (1.3, "fp32+channels_last")],
)
def test_bf16_must_win_by_the_margin(monkeypatch, tmp_path, bf16_time, chosen):
    times = {"fp32": 1.1, "fp32+channels_last": 1.0, "bf16": 2.0, "bf16+channels_last": bf16_time}
    monkeypatch.setattr(probe, "_time_candidates", _fake_times(times))
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: True)
    choice = probe_step_options(
        _net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH, workload="w", cache=None
    )
    assert choice.chosen == chosen
    assert ("faster than fp32" in choice.reason) == (chosen.startswith("bf16"))


@pytest.mark.parametrize(
    "times, chosen",
    [
        ({"fp32": 1.02, "fp32+channels_last": 1.0}, "fp32"),  # within 3%: noise, the fewer options
        ({"fp32": 1.05, "fp32+channels_last": 1.0}, "fp32+channels_last"),
        ({"fp32": 1.0, "fp32+channels_last": 1.01, "bf16": 0.8, "bf16+channels_last": 0.79}, "bf16"),
        # bf16 is 8.5% faster, within 3% of bf16+channels_last's 11%: only the latter wins by 10%
        (
            {"fp32": 1.0, "fp32+channels_last": 1.01, "bf16": 0.915, "bf16+channels_last": 0.89},
            "bf16+channels_last",
        ),
    ],
)
def test_timings_within_the_tie_margin_choose_the_candidate_with_fewer_options(monkeypatch, times, chosen):
    # Timings 0.5% apart flipped the choice between two runs of one command, and with it their
    # numbers (a resnet's test -ELBO by 2 nats after one epoch).
    monkeypatch.setattr(probe, "_time_candidates", _fake_times(times))
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: len(times) > 2)
    choice = probe_step_options(
        _net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH, workload="w", cache=None
    )
    assert choice.chosen == chosen
    if chosen.startswith("bf16"):  # the gain reported is the chosen candidate's
        assert choice.reason.startswith(
            f"bf16 {1 - times[chosen] / min(times['fp32'], times['fp32+channels_last']):.0%}"
        )


def test_no_bf16_candidates_where_the_cpu_lacks_bf16(monkeypatch):
    seen = []

    def timings(model, optimizer, loss_fn, batch, candidates, warmup, repeats):
        seen.extend(c.name for c in candidates)
        return {c.name: 1.0 for c in candidates}

    monkeypatch.setattr(probe, "_time_candidates", timings)
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: False)
    choice = probe_step_options(
        _net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH, workload="w", cache=None
    )
    assert seen == ["fp32", "fp32+channels_last"] and choice.options["precision"] == "fp32"
    assert "no native bf16" in choice.reason
    with pytest.raises(ValueError, match=r"^candidates: all need bf16"):
        probe_step_options(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH, workload="w",
                           cache=None, candidates=[c for c in CPU_CANDIDATES if c.bf16])  # fmt: skip


@pytest.mark.parametrize(
    "layer",
    [lambda: nn.ConvTranspose2d(1, 2, 3, stride=2), lambda: nn.Conv2d(1, 2, 3)],
    ids=["transposed", "narrow"],
)
def test_the_convolution_passes_are_a_candidate(monkeypatch, layer):
    seen = []

    def timings(model, optimizer, loss_fn, batch, candidates, warmup, repeats):
        seen.extend(c.name for c in candidates)
        return {c.name: 0.5 if c.options["transposed_as_conv"] else 1.0 for c in candidates}

    monkeypatch.setattr(probe, "_time_candidates", timings)
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: False)
    torch.manual_seed(0)
    model = nn.Sequential(layer(), nn.Flatten())
    kind = type(model[0])
    choice = probe_step_options(
        model, torch.optim.SGD(model.parameters(), lr=0.1), _loss, BATCH, workload="w", cache=None
    )
    assert seen == ["fp32", "fp32+channels_last", "fp32+channels_last+conv_passes"]
    assert choice.options == {
        "precision": "fp32",
        "channels_last": True,
        "transposed_as_conv": True,
        "narrow_conv_by_transposed": True,
    }
    assert type(model[0]) is kind  # measured on copies


@pytest.mark.real_probe
def test_the_probe_measures_the_transposed_option_for_real():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(1, 2, 3, stride=2), nn.Flatten())
    choice = probe_step_options(
        model, torch.optim.Adam(model.parameters()), _loss, BATCH, workload="w", cache=None, repeats=1
    )
    assert "fp32+channels_last+conv_passes" in choice.seconds_per_step
    assert type(model[0]) is nn.ConvTranspose2d


def test_cache_hit_skips_the_measurement_and_keys_on_the_workload(monkeypatch, tmp_path):
    path = tmp_path / "sub" / "step-options.json"
    opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    first = probe_step_options(_net(), opt, _loss, BATCH, workload="a", cache=path, candidates=FP32)
    assert first.cache == str(path) and json.loads(path.read_text())["version"] == probe._CACHE_VERSION == 5

    def refuse(*args):
        raise AssertionError("measured although cached")

    monkeypatch.setattr(probe, "_time_candidates", refuse)
    again = probe_step_options(_net(), opt, _loss, BATCH, workload="a", cache=path, candidates=FP32)
    assert again.cached and again.options == first.options and again.measured_at == first.measured_at
    assert again.record()["by"] == "cache" and "cached" in again.describe()
    with pytest.raises(AssertionError, match="measured although cached"):
        probe_step_options(_net(), opt, _loss, BATCH, workload="b", cache=path, candidates=FP32)
    # another machine (here: another thread count) is another key
    signature = probe.machine_signature
    monkeypatch.setattr(probe, "machine_signature", lambda: {**signature(), "threads": 99})
    with pytest.raises(AssertionError, match="measured although cached"):
        probe_step_options(_net(), opt, _loss, BATCH, workload="a", cache=path, candidates=FP32)


@pytest.mark.parametrize(
    "content", ["{not json", '{"version": 0, "entries": {}}', "[1, 2]", "", "[" * 100_000]
)
def test_a_damaged_cache_is_measured_over_and_rewritten(tmp_path, content):
    path = tmp_path / "step-options.json"
    path.write_text(content)
    choice = probe_step_options(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH,
                                workload="w", cache=path, candidates=FP32)  # fmt: skip
    assert not choice.cached
    entries = json.loads(path.read_text())["entries"]
    assert [e["chosen"] for e in entries.values()] == [choice.chosen]


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e.update(seconds_per_step=[0.1]),
        lambda e: e.update(options=["fp32"]),
        lambda e: e["options"].update(foo=1),
        lambda e: e["options"].update(epochs=1, lr=10.0),  # never a run's own settings
        lambda e: e.update(chosen="fp16"),
        lambda e: e.update(reason=None),
        lambda e: e.update(chosen=["fp32"]),  # unhashable: it was an internal TypeError
        lambda e: e.update(chosen={"a": 1}),
    ],
    ids=[
        "times-a-list",
        "options-a-list",
        "unknown-option",
        "run-settings",
        "unknown-name",
        "no-reason",
        "chosen-a-list",
        "chosen-a-dict",
    ],
)
def test_a_damaged_entry_is_measured_over(tmp_path, edit):
    path = tmp_path / "step-options.json"
    opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    first = probe_step_options(_net(), opt, _loss, BATCH, workload="w", cache=path, candidates=FP32)
    saved = json.loads(path.read_text())
    (entry,) = saved["entries"].values()
    edit(entry)
    path.write_text(json.dumps(saved))
    again = probe_step_options(_net(), opt, _loss, BATCH, workload="w", cache=path, candidates=FP32)
    assert not again.cached and again.options == next(c.options for c in FP32 if c.name == again.chosen)
    assert first.chosen in {c.name for c in FP32}


def test_entries_cached_by_a_concurrent_run_are_kept(monkeypatch, tmp_path):
    """Two runs probing at once: the one that writes last keeps the other's entry (the cache is
    read again before it is written)."""
    path = tmp_path / "step-options.json"
    opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    timed = probe._time_candidates

    def meanwhile_another_run(*args, **kwargs):
        monkeypatch.setattr(probe, "_time_candidates", timed)  # the other run measures plainly
        probe_step_options(_net(), opt, _loss, BATCH, workload="other", cache=path, candidates=FP32)
        return timed(*args, **kwargs)

    monkeypatch.setattr(probe, "_time_candidates", meanwhile_another_run)
    probe_step_options(_net(), opt, _loss, BATCH, workload="mine", cache=path, candidates=FP32)
    assert len(json.loads(path.read_text())["entries"]) == 2


def test_an_unwritable_cache_costs_nothing_but_the_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "step-options.json"  # its parent is a file: cannot be made
    choice = probe_step_options(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH,
                                workload="w", cache=path, candidates=FP32)  # fmt: skip
    assert choice.cache is None and blocker.read_text() == "x"
    assert not list(tmp_path.glob("**/*.tmp"))


def test_a_busy_machine_is_measured_but_not_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(probe, "_busy", lambda: "machine busy (2 other runnable tasks on 2 CPUs)")
    path = tmp_path / "step-options.json"
    choice = probe_step_options(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), _loss, BATCH,
                                workload="w", cache=path, candidates=FP32)  # fmt: skip
    assert not path.exists() and choice.cache is None and "not cached" in choice.reason


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBLAYERS_CACHE_DIR", str(tmp_path / "c"))
    assert probe.cache_path() == tmp_path / "c" / "step-options.json"
    monkeypatch.delenv("PROBLAYERS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert probe.cache_path() == tmp_path / "x" / "problayers" / "step-options.json"


def test_bad_arguments_name_themselves():
    opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"^workload: expected a str"):
        probe_step_options(_net(), opt, _loss, BATCH, workload=3)
    with pytest.raises(ValueError, match=r"^repeats: expected an int >= 1, got 0"):
        probe_step_options(_net(), opt, _loss, BATCH, workload="w", repeats=0)
    with pytest.raises(ValueError, match=r"^candidates: expected at least one"):
        probe_step_options(_net(), opt, _loss, BATCH, workload="w", candidates=())


def test_machine_signature_names_the_cpu_and_torch():
    sig = probe.machine_signature()
    assert sig["torch"] == torch.__version__ and sig["threads"] == torch.get_num_threads()
    assert isinstance(sig["cpu"], str) and sig["cpu"] and isinstance(sig["bf16_native"], bool)
    assert Candidate("x", {"precision": "bf16"}).bf16 and not Candidate("y").bf16


def test_cpu_label_tells_apart_cpus_of_one_name(monkeypatch):
    # A KVM guest names Zen 1, Zen 3 and Zen 4 alike "AMD EPYC": the label adds family and model,
    # in benchmark headers and in the probe's line.
    for model in ("1", "17"):
        info = {"model name": "AMD EPYC", "vendor_id": "AuthenticAMD", "cpu family": "25", "model": model}
        monkeypatch.setattr(cpu, "_cpuinfo", lambda info=info: info)
        assert cpu.cpu_label() == f"AMD EPYC (AuthenticAMD family 25 model {model})"
    recorded = {**probe.machine_signature(), "cpu": "Some CPU", "cpu_id": "GenuineIntel family 6 model 207"}
    assert cpu.cpu_label(recorded) == "Some CPU (GenuineIntel family 6 model 207)"
    assert cpu.cpu_label({"cpu": "Old record"}) == "Old record"  # recorded before cpu_id existed
    choice = probe.StepChoice(
        chosen="fp32", options={}, seconds_per_step={"fp32": 1.0}, reason="only one",
        machine=recorded, measured_at="now", cache=None,
    )  # fmt: skip
    assert "Some CPU (GenuineIntel family 6 model 207), torch" in choice.describe()


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_a_onednn_isa_limit_without_bf16_means_no_native_bf16(monkeypatch, variable):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"flags": "avx512f avx512_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    free = probe.machine_signature()
    assert free["onednn_isa_limit"] is None
    assert free["bf16_native"] == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setenv(variable, "avx512_core")
    capped = probe.machine_signature()
    assert capped["onednn_isa_limit"] == "AVX512_CORE" and capped["bf16_native"] is False
    assert probe._cache_key(capped, "w") != probe._cache_key(free, "w")  # measured apart
    monkeypatch.setenv(variable, "AVX512_CORE_BF16")
    assert probe.cpu_has_native_bf16() == free["bf16_native"]


def test_an_avx512_cpu_without_bf16_instructions_has_no_native_bf16(monkeypatch):
    # oneDNN's own query says yes on any AVX-512 CPU (it emulates bf16 there): the flags decide.
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"flags": "avx2 avx512f avx512bw avx512_vnni"})
    assert probe.cpu_has_native_bf16() is False
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"flags": "avx2 amx_bf16 amx_tile"})
    assert probe.cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.real_probe
@pytest.mark.parametrize(("budget", "calls"), [(0.0, 2 * (1 + 1)), (1e9, 2 * (1 + 3))])
def test_a_slow_step_is_timed_once_within_the_budget(monkeypatch, budget, calls):
    # A model whose step takes seconds (the resnet on 2 cores) is not timed `repeats` times over.
    made = []

    def fake_step(model, opt, loss_fn, **options):
        made.append(0)
        index = len(made) - 1

        def step(batch):
            made[index] += 1

        return step

    monkeypatch.setattr(probe, "make_train_step", fake_step)
    model = _net()
    cands = probe.CPU_CANDIDATES[:2]
    times = probe._time_candidates(
        model, torch.optim.Adam(model.parameters()), _loss, BATCH, cands, 1, 3, budget
    )
    assert sum(made) == calls and set(times) == {c.name for c in cands}


@pytest.mark.real_probe
def test_time_candidates_keeps_the_fastest_step_after_the_warmup(monkeypatch):
    # A fake clock: candidate 0's steps take 5 (warm-up), 1, 3, 3 s; candidate 1's 0.5 (warm-up),
    # 2, 2, 2 s. Each keeps its fastest timed step: 1 and 2 (not the warm-up's 0.5, not the last).
    import types

    clock = [0.0]
    durations = [[5.0, 1.0, 3.0, 3.0], [0.5, 2.0, 2.0, 2.0]]
    made = []

    def fake_step(model, opt, loss_fn, **options):
        calls = iter(durations[len(made)])
        made.append(options)

        def step(batch):
            clock[0] += next(calls)

        return step

    monkeypatch.setattr(probe, "make_train_step", fake_step)
    monkeypatch.setattr(probe, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    model = nn.Linear(2, 1)
    cands = CPU_CANDIDATES[:2]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    times = probe._time_candidates(model, opt, None, None, cands, 1, 3, 1e9)
    assert times == {cands[0].name: 1.0, cands[1].name: 2.0}


@pytest.mark.real_probe
@pytest.mark.parametrize(
    "running, busy",
    [([2] * 5, True), ([1] * 5, False), ([1, 3, 3, 3, 3], False)],  # counts include this process
)
def test_a_machine_is_busy_when_every_reading_has_another_runnable_task(monkeypatch, running, busy):
    readings = iter(running)

    class LoadAvg:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self):
            return f"0.1 0.1 0.1 {next(readings)}/300 123\n"

    monkeypatch.setattr(probe, "open", LoadAvg, raising=False)
    monkeypatch.setattr(probe.os, "sched_getaffinity", lambda pid: {0, 1})
    assert (probe._busy() is not None) == busy


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.delenv("PROBLAYERS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: ignore a relative path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert probe.cache_path() == tmp_path / ".cache" / "problayers" / "step-options.json"


def test_a_cache_entry_without_its_date_is_measured_over(monkeypatch, tmp_path):
    monkeypatch.setattr(probe, "_busy", lambda: None)  # cached even on a loaded machine
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.Flatten(), nn.Linear(16 * 6 * 6, 1))

    def loss(m, b):
        return m(b).pow(2).mean()

    batch, path = torch.rand(4, 1, 8, 8), tmp_path / "c.json"
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    kwargs = {"workload": "w", "cache": path, "candidates": CPU_CANDIDATES[:2]}
    probe_step_options(net, opt, loss, batch, **kwargs)
    saved = json.loads(path.read_text())
    for entry in saved["entries"].values():
        del entry["measured_at"]
    path.write_text(json.dumps(saved))
    assert not probe_step_options(net, opt, loss, batch, **kwargs).cached


def _no_isa_limit(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_amx_alone_is_native_bf16(monkeypatch):
    _no_isa_limit(monkeypatch)
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"flags": "avx2 amx_bf16 amx_tile"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert cpu.cpu_has_native_bf16() is True


def test_a_torch_without_the_bf16_query_trusts_the_flags(monkeypatch):
    _no_isa_limit(monkeypatch)
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"flags": "avx512_bf16"})

    def missing():
        raise RuntimeError("no such op")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing)
    assert cpu.cpu_has_native_bf16() is True


def test_an_avx2_isa_limit_means_no_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"flags": "avx512_bf16"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert cpu.cpu_has_native_bf16() is False


def test_the_cache_key_has_the_isa_and_the_cpu_id(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: {"vendor_id": "V", "cpu family": "25", "model": "17"})
    a = cpu.machine_signature()
    assert a["cpu_id"] == "V family 25 model 17"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER_ISA")
    b = cpu.machine_signature()
    assert b["isa"] == "OTHER_ISA" and probe._cache_key(a, "w") != probe._cache_key(b, "w")
