"""Shareable weights: ``problayers export`` (model.safetensors + config.json) and
``problayers.vae.load_pretrained``: the round trip, the files' layout, no pickle, one-line errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle

import pytest
import torch

from problayers.cli import main
from problayers.vae import ModelConfig, load_pretrained
from problayers.vae.experiment import load_run
from problayers.vae.pretrained import FORMAT, PretrainedError

TINY = ["--latent-size", "4", "--base-depth", "4", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained") / "run"
    argv = ["train", "--out", str(out), "--epochs", "1", "--synthetic", "64", "--ema-decay", "0.9", *TINY]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def exported(run_dir):
    out = run_dir.parent / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    return out


def _outputs(model):
    """Decoder log-prob at a fixed z and x, and the encoder's mean at x."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 28, 28, generator=gen) < 0.5).float()
    z = torch.randn(3, model.prior().event_shape[0], generator=gen)
    with torch.no_grad():
        return model.decode(z).log_prob(x), model.encode(x).mean


def test_round_trip_gives_load_runs_model(run_dir, exported):
    model = load_pretrained(exported)
    assert not model.training
    want, _, _ = load_run(run_dir, device="cpu")  # the EMA weights by default
    for got, ref in zip(_outputs(model), _outputs(want), strict=True):
        assert torch.equal(got, ref)
    online, _, _ = load_run(run_dir, device="cpu", online=True)
    assert not torch.equal(_outputs(model)[0], _outputs(online)[0])  # the average, not the last iterate


def test_online_weights_export(run_dir, tmp_path):
    assert main(["export", str(run_dir), str(tmp_path / "online"), "--online-weights"]) == 0
    online, _, _ = load_run(run_dir, device="cpu", online=True)
    assert torch.equal(_outputs(load_pretrained(tmp_path / "online"))[0], _outputs(online)[0])


def test_the_files_are_the_hub_layout(run_dir, exported):
    from safetensors import safe_open

    import problayers

    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors"]
    model, cfg, _ = load_run(run_dir, device="cpu")
    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(model.state_dict())
        assert f.metadata() == {"format": "pt"}
        key = next(iter(model.state_dict()))
        assert torch.equal(f.get_tensor(key), model.state_dict()[key])
    config = json.loads((exported / "config.json").read_text())
    assert config["format"] == FORMAT and config["problayers_version"] == problayers.__version__
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(config) == fields | {"format", "problayers_version", "weights_sha256"}
    assert (
        config["weights_sha256"] == hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()
    )
    assert ModelConfig(**{k: config[k] for k in fields}) == cfg.model


def test_loading_never_unpickles(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_pretrained(exported)


def test_force_replaces_an_export(run_dir, exported, tmp_path, capsys):
    out = tmp_path / "again"
    out.mkdir()
    (out / "README.md").write_text("my model card")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run_dir), str(out)])
    assert exc.value.code == 2
    assert "is not empty; choose a new directory or pass --force" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(out), "--force"]) == 0
    assert (out / "README.md").read_text() == "my model card"  # only the two files are written
    assert (out / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()


def test_save_pretrained_takes_a_wrapped_model_and_refuses_another_config(run_dir, tmp_path):
    # A compiled model's export ('_orig_mod.' keys) and one under another model's config were
    # written, then refused by load_pretrained (API audit).
    from problayers.vae import save_pretrained

    model, cfg, _ = load_run(run_dir, device="cpu")
    compiled = torch.compile(model, backend="eager")  # compiled lazily: not here
    for i, wrapped in enumerate(
        [
            compiled,
            torch.nn.DataParallel(compiled),
            torch.compile(torch.nn.DataParallel(model), backend="eager"),
        ]
    ):
        save_pretrained(wrapped, cfg.model, tmp_path / f"wrapped{i}")
        for got, ref in zip(
            _outputs(load_pretrained(tmp_path / f"wrapped{i}")), _outputs(model), strict=True
        ):
            assert torch.equal(got, ref)
    with pytest.raises(
        ValueError, match=r"^export of a 'mlp' model: state dict does not fit the model: missing"
    ):
        save_pretrained(model, ModelConfig.for_model("mlp"), tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


def test_the_weights_come_back_in_the_dtype_they_were_saved_in(run_dir, tmp_path):
    """A float64 (or bf16) model was loaded back as float32, its weights rounded without a word."""
    from problayers.vae import save_pretrained

    model, cfg, _ = load_run(run_dir, device="cpu")
    for dtype in (torch.float64, torch.bfloat16):
        cast = model.to(dtype)
        save_pretrained(cast, cfg.model, tmp_path / str(dtype))
        back = load_pretrained(tmp_path / str(dtype))
        for (name, got), ref in zip(back.state_dict().items(), cast.state_dict().values(), strict=True):
            assert got.dtype == ref.dtype and torch.equal(got, ref), name
    mixed = model.float()
    next(mixed.parameters()).data = next(mixed.parameters()).data.double()
    with pytest.raises(ValueError, match=r"^export: the model's floating tensors have several dtypes"):
        save_pretrained(mixed, cfg.model, tmp_path / "mixed")
    with pytest.raises(TypeError, match=r"^model: expected the VAE \(an nn.Module\), got OrderedDict"):
        save_pretrained(model.state_dict(), cfg.model, tmp_path / "sd")
    with pytest.raises(TypeError, match=r"^config: expected a ModelConfig, got dict"):
        save_pretrained(model, {"name": "seed"}, tmp_path / "cfg")


def test_weights_and_config_of_two_exports_are_refused(run_dir, exported, tmp_path):
    # `export --force` killed between its two files left one export's weights beside the other's
    # config.json, which loaded silently where the shapes agree (reliability audit).
    other = tmp_path / "online"
    assert main(["export", str(run_dir), str(other), "--online-weights"]) == 0  # other weights
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "config.json").write_bytes((other / "config.json").read_bytes())
    (out / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes())
    with pytest.raises(
        PretrainedError, match=r"model.safetensors: not the weights config.json was exported with"
    ):
        load_pretrained(out)
    (out / "config.json").write_bytes((exported / "config.json").read_bytes())
    load_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    del config["weights_sha256"]  # an export written before the digest: loads as before
    (out / "config.json").write_text(json.dumps(config))
    load_pretrained(out)


def test_a_config_asking_for_a_huge_model_is_refused_before_it_is_built(exported, tmp_path):
    """A 456-byte config.json with latent_size 20000 built the model first (terabytes asked for,
    a raw RuntimeError) and compared the weights after (hostile-files audit)."""
    out = tmp_path / "huge"
    out.mkdir()
    config = json.loads((exported / "config.json").read_text())
    config["latent_size"] = 20000
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes())
    with pytest.raises(
        PretrainedError, match=r"model.safetensors \(for the config in config.json\): .*expected shape"
    ):
        load_pretrained(out)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["export", "RUN", "RUN"], "is the run directory itself"),
        (["export", "RUN", "RUN/."], "is the run directory itself"),
        (["export", "RUN", "RUN/config.json"], "got an existing file"),
        (["export", "{tmp}/nope", "{tmp}/x"], "is not a directory"),
    ],
)
def test_export_errors_are_one_line(argv, match, run_dir, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("RUN", str(run_dir)) for a in argv]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("problayers: error:") and match in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert not (tmp_path / "x").exists()


def _copy(exported, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for p in exported.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def _damage_config(out, **changes):
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda out: (out / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda out: (out / "config.json").unlink(), "has no config.json"),
        (
            lambda out: (out / "model.safetensors").write_bytes(
                (out / "model.safetensors").read_bytes()[:100]
            ),
            "model.safetensors: not a safetensors file",
        ),
        (lambda out: (out / "config.json").write_text("{"), "config.json: not valid JSON"),
        (lambda out: _damage_config(out, format="other"), "not a problayers export"),
        (lambda out: _damage_config(out, latent_size=5), "expected shape"),
        (lambda out: _damage_config(out, init="nope"), "not a valid model config"),
        (lambda out: _damage_config(out, extra=1), "not a valid model config"),
        (
            lambda out: _damage_config(out, extra=1, problayers_version="99.0"),
            r"not a valid model config .*; written by problayers 99.0, this is ",
        ),
        (
            lambda out: _damage_config(out, format="problayers-vae-v2", problayers_version="99.0"),
            r"format 'problayers-vae-v2', this problayers reads 'problayers-vae-v1'; written by",
        ),
    ],
)
def test_load_pretrained_errors_are_one_line(exported, tmp_path, damage, match):
    out = _copy(exported, tmp_path)
    damage(out)
    with pytest.raises(PretrainedError, match=match) as exc:
        load_pretrained(out)
    assert "\n" not in str(exc.value)


def test_load_pretrained_refuses_non_finite_weights(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    out = _copy(exported, tmp_path)
    weights = load_file(out / "model.safetensors")
    key = next(iter(weights))
    weights[key][0] = float("nan")
    save_file(weights, out / "model.safetensors")
    with pytest.raises(PretrainedError, match=r"not the weights config\.json was exported with"):
        load_pretrained(out)  # replaced by hand
    config = json.loads((out / "config.json").read_text())
    del config["weights_sha256"]  # as in an export written before the digest
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="non-finite"):
        load_pretrained(out)


def test_load_pretrained_of_a_missing_directory(tmp_path):
    with pytest.raises(PretrainedError, match="is not a directory"):
        load_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("command", ["evaluate", "sample", "resume"])
def test_an_export_given_as_a_run_says_what_it_is(exported, command, capsys):
    # It listed config.json's ~19 keys as unknown.
    argv = {"evaluate": ["evaluate", str(exported)], "sample": ["sample", str(exported)]}
    with pytest.raises(SystemExit) as exc:
        main(argv.get(command, ["train", "--resume", str(exported)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"problayers: error: {exported / 'config.json'}: an export ({FORMAT!r}, made by problayers "
        "export), not a run's settings; give the run directory it came from, or load it with "
        "problayers.vae.load_pretrained"
    )
