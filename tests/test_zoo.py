"""The model zoo end to end on small data: every model, prior, posterior and objective trains,
evaluates, samples and resumes through the CLI; configs are validated; the seed is unchanged."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

import problayers as pl
from host_sync import HostSyncs
from problayers.cli import main
from problayers.vae.experiment import RunConfig, load_run, train
from problayers.vae.models import MODELS, ModelConfig, build_model, vae_loss
from problayers.vae.models.priors import VampPrior

SMALL = {"latent_size": 4, "hidden_size": 16}
SMALL_RESNET = {"latent_size": 4, "base_depth": 4}  # hidden_size: its IAF's width, given with one

#: (model, options): each prior, posterior and objective at least once, on every model.
ZOO_CASES = [
    ("mlp", {}),
    ("mlp", {"prior": "mog", "prior_components": 3}),
    ("mlp", {"prior": "vamp", "prior_components": 5, "objective": "dreg", "num_samples": 3}),
    ("mlp", {"posterior": "iaf", "flow_steps": 2, "objective": "iwae", "num_samples": 2}),
    ("mlp", {"kl_warmup_steps": 3, "free_bits": 0.1}),
    ("hvae", {}),
    ("hvae", {"prior": "vamp", "prior_components": 5, "objective": "iwae", "num_samples": 2}),
    ("resnet", {"posterior": "iaf", "flow_steps": 1, "hidden_size": 8}),
    ("resnet", {"prior": "mog", "prior_components": 3, "objective": "dreg", "num_samples": 2}),
    ("seed", {"latent_size": 4, "base_depth": 4, "objective": "iwae", "num_samples": 2}),
]

each_zoo_case = pytest.mark.parametrize(
    ("name", "options"), ZOO_CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in ZOO_CASES]
)


def _config(name: str, options: dict) -> ModelConfig:
    base = {"mlp": SMALL, "hvae": SMALL, "resnet": SMALL_RESNET, "seed": {}}[name]
    return ModelConfig.for_model(name, **{**base, **options})


def test_every_registered_model_is_in_the_cases():
    assert {name for name, _ in ZOO_CASES} == set(MODELS)


@each_zoo_case
def test_the_training_loss_and_its_gradient_never_wait_for_the_device(name, options):
    # What --fast on a GPU (the whole step as one CUDA graph) needs of every model, prior,
    # posterior and objective: nothing in the loss or its backward is read back on the host.
    torch.manual_seed(0)
    model = build_model(_config(name, options))
    x = (torch.rand(8, 1, 28, 28) < 0.2).float()
    for _ in range(2):  # the second step: a KL warm-up past its first step, the flows' caches used
        with HostSyncs() as syncs:
            vae_loss(model, x)[0].backward()
        assert syncs.found == []


@each_zoo_case
def test_a_training_step_lowers_the_loss_and_evaluation_runs(name, options):
    torch.manual_seed(0)
    model = build_model(_config(name, options))
    x = (torch.rand(16, 1, 28, 28) < 0.2).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss, metrics = vae_loss(model, x)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert all(torch.isfinite(v) and v.dim() == 0 for v in metrics.values())
    assert losses[-1] < losses[0]
    model.eval()
    from problayers.vae.evaluation import evaluate

    with torch.no_grad():
        out = evaluate(
            model.encode, model.decode, model.prior(), x, batch_size=8, iwae_samples=6, chunk_size=4
        )
    assert out["iwae_nll"] < out["neg_elbo"] + 5 and out["num_examples"] == 16
    samples = model.decode(model.prior().sample((3,))).sample()
    assert samples.shape == (3, 1, 28, 28)


def test_cli_trains_evaluates_samples_and_resumes_a_zoo_model(tmp_path, capsys):
    out = tmp_path / "vamp"
    argv = ["train", "--model", "mlp", "--latent-size", "4", "--hidden-size", "16", "--prior", "vamp"]
    argv += ["--prior-components", "4", "--objective", "iwae", "--num-samples", "2", "--kl-warmup-steps", "5"]
    argv += ["--synthetic", "64", "--batch-size", "16", "--epochs", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())["model"]
    assert cfg["name"] == "mlp" and cfg["prior"] == "vamp" and cfg["objective"] == "iwae"
    assert cfg["exact_kl"] is True  # the zoo's default
    model, _, _ = load_run(out, device="cpu")
    assert int(model.objective.steps) == 4  # 64 / 16 steps, saved with the weights
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    model, _, info = load_run(out, device="cpu")
    assert info["epoch"] == 2 and int(model.objective.steps) == 8  # the warm-up resumed, not restarted
    ev = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--iwae-samples",
                "4",
                "--test-subset",
                "8",
                "--no-progress",
                "--out",
                str(ev),
            ]
        )
        == 0
    )
    assert json.loads(ev.read_text())["iwae_samples"] == 4
    assert main(["sample", str(out), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "prior_samples.png").is_file()
    capsys.readouterr()


def test_the_seed_is_unchanged_by_the_zoo():
    seed = build_model(ModelConfig())
    assert not any(k.startswith("objective.") for k in seed.state_dict())  # old checkpoints load
    assert ModelConfig.from_dict({"name": "seed", "latent_size": 16}).objective == "elbo"
    torch.manual_seed(1)
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    loss, metrics = vae_loss(seed, x)
    assert float(loss.detach()) == pytest.approx(float(metrics["recon"] + metrics["kl"]))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("seed", {"prior": "vamp"}, "prior='vamp': the 'seed' model does not use it"),
        ("mlp", {"base_depth": 8}, "base_depth=8: the 'mlp' model does not use it"),
        ("mlp", {"num_samples": 5}, "num_samples=5: needs objective 'iwae' or 'dreg'"),
        (
            "mlp",
            {"objective": "iwae", "num_samples": 2, "free_bits": 1.0},
            "free_bits=1.0: only the 'elbo' objective uses it, not 'iwae'",
        ),
        ("mlp", {"prior": "vamp", "posterior": "iaf"}, "VampPrior mixes Gaussian posteriors only"),
        ("mlp", {"prior": "flow"}, "prior: expected one of ['normal', 'mog', 'vamp']"),
        ("mlp", {"kl_warmup_steps": -1}, "kl_warmup_steps: expected an int in 0.."),
        ("mlp", {"kl_warmup_steps": 2**64}, "kl_warmup_steps: expected an int in 0.."),
        ("mlp", {"beta": float("nan")}, "beta: expected a finite number >= 0, got nan"),
        ("mlp", {"exact_kl": "yes"}, "exact_kl: expected true or false, got 'yes'"),
        ("nope", {}, "name: expected a registered model (hvae, mlp, resnet, seed), got 'nope'"),
        (
            "mlp",
            {"free_bits": 1e38},
            "free_bits: expected nats per latent dimension in [0, 10000], got 1e+38",
        ),
        (
            "mlp",
            {"flow_steps": 2},
            "flow_steps=2: only posterior 'iaf' uses it",
        ),  # given: refused at its default
        ("seed", {"prior_components": 500}, "prior_components=500: the 'seed' model does not use it"),
        ("mpl", {}, "got 'mpl' (did you mean 'mlp'?)"),
        ("MLP", {}, "got 'MLP' (did you mean 'mlp'?)"),
        ("mlp", {"objective": "iwae"}, "num_samples: objective 'iwae' needs K >= 2 samples"),
        ("mlp", {"objective": "dreg", "num_samples": 1}, "objective 'dreg' needs K >= 2 samples"),
        ("mlp", {"flow_steps": 3}, "flow_steps=3: only posterior 'iaf' uses it"),
        ("mlp", {"prior_components": 10}, "prior_components=10: only the priors 'mog' and 'vamp' use it"),
        # idle given the other choices, though a model's defaults may set them (option audit)
        ("mlp", {"objective": "iwae", "num_samples": 2, "exact_kl": True}, "exact_kl=True: only the 'elbo'"),
        ("seed", {"objective": "dreg", "num_samples": 2, "exact_kl": False}, "exact_kl=False: only the"),
        (
            "resnet",
            {"hidden_size": 999},
            "hidden_size=999: the 'resnet' model uses it only with posterior 'iaf'",
        ),
    ],
)
def test_bad_zoo_configs_are_refused_naming_the_field(name, options, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        ModelConfig.for_model(name, **options)


def test_idle_options_are_checked_where_given_so_saved_configs_still_load():
    """The zoo's registered exact_kl=True with the IWAE objective, and resnet's default width
    with a Gaussian posterior, are what saved configs hold: only an option given is refused."""
    cfg = ModelConfig.for_model("resnet", objective="iwae", num_samples=2)
    assert cfg.exact_kl is True and cfg.hidden_size == 300
    assert ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert ModelConfig.for_model("mlp", exact_kl=False).exact_kl is False  # the ELBO reads it


def test_a_run_saved_before_the_usage_checks_loads_as_it_was_trained():
    """Runs trained before 2026-12-06 with --objective iwae and one sample (the single-sample
    bound), an idle --flow-steps or --prior-components were refused by every command: evaluate,
    sample, resume, load_run, load_pretrained (old-files audit). A new config is still refused."""
    saved = [
        {"name": "mlp", "objective": "iwae", "num_samples": 1},
        {"name": "mlp", "flow_steps": 3},
        {"name": "mlp", "prior_components": 5},
        {"name": "resnet", "objective": "dreg", "num_samples": 1, "free_bits": 0.5},
    ]
    for fields in saved:
        cfg = ModelConfig.from_dict(fields)
        assert {k: getattr(cfg, k) for k in fields} == fields  # as it was trained, not rewritten
        assert isinstance(build_model(cfg), torch.nn.Module)
        with pytest.raises(ValueError):  # a new config with the same fields
            ModelConfig(**fields)
    assert ModelConfig.from_dict(saved[0]).num_samples == 1 and ModelConfig(name="mlp").num_samples == 1
    with pytest.raises(ValueError, match="'vamp' with 'iaf'"):  # a model that cannot be built
        ModelConfig.from_dict({"name": "mlp", "prior": "vamp", "posterior": "iaf"})
    with pytest.raises(ValueError, match=r"^num_samples=2: needs objective"):
        ModelConfig.from_dict({"name": "mlp", "num_samples": 2})


def test_vamp_prior_refuses_an_encoder_with_batch_norm():
    """The pseudo-inputs are encoded as a batch of their own: BatchNorm (the resnet's) would give
    them another q than the data's and mix their statistics into the running ones."""
    with pytest.raises(ValueError, match="prior='vamp': the encoder has BatchNorm"):
        build_model(ModelConfig.for_model("resnet", prior="vamp", base_depth=4, prior_components=4))
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), pl.IndependentNormal(2))
    assert VampPrior(encoder, 3, (4,))().batch_shape == ()  # without BatchNorm: the mixture


def test_cli_bad_zoo_option_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            ["train", "--model", "seed", "--prior", "vamp", "--synthetic", "8", "--out", str(tmp_path / "x")]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("problayers: error:") and "does not use it" in err and "\n" not in err


def test_zoo_config_round_trips_through_config_json(tmp_path):
    cfg = RunConfig(model=_config("hvae", {"prior": "mog", "prior_components": 2}), epochs=1, batch_size=16,
                    synthetic=32, progress=False, eval_batch_size=16)  # fmt: skip
    train(cfg, tmp_path)
    assert RunConfig.from_json(json.loads((tmp_path / "config.json").read_text())) == cfg


@pytest.mark.parametrize(
    "options",
    [
        {"objective": "dreg", "num_samples": 3},
        {"prior": "vamp", "prior_components": 4, "objective": "iwae", "num_samples": 2},
    ],
    ids=["dreg", "vamp-iwae"],
)
# Dynamo's own hasattr(t, "grad") on a non-leaf tensor at a graph break (torch internals).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_zoo_objectives_compile_to_the_eager_loss_and_gradients(options):
    torch.manual_seed(0)
    model = build_model(ModelConfig.for_model("mlp", latent_size=4, hidden_size=16, **options))
    x = (torch.rand(8, 1, 28, 28) < 0.3).float()
    compiled = torch.compile(lambda batch: vae_loss(model, batch)[0], backend="aot_eager", fullgraph=False)
    results = []
    for fn in (compiled, lambda batch: vae_loss(model, batch)[0]):
        model.zero_grad()
        torch.manual_seed(1)
        loss = fn(x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (lc, gc), (le, ge) = results
    torch.testing.assert_close(lc, le)
    for a, b in zip(gc, ge, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["mlp", "hvae"])
def test_mlp_decoders_end_in_logits_without_an_activation(name):
    # A GELU on the logits would bound p(x=1) below by sigmoid(-0.17) = 0.46.
    model = build_model(_config(name, {}))
    assert isinstance(model.decoder[-1], pl.IndependentBernoulli)
    assert isinstance(model.decoder[-2], torch.nn.Linear)
    with torch.no_grad():
        model.decoder[-2].weight.zero_()
        model.decoder[-2].bias.fill_(-10.0)
        assert float(model.decoder(torch.zeros(2, model.decoder[0].in_features)).mean.max()) < 1e-4


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_iaf_posterior_has_flow_steps_inverse_flows_of_alternating_orders(name):
    model = build_model(_config(name, {"posterior": "iaf", "flow_steps": 3}))
    flows = [m for m in model.encoder.modules() if isinstance(m, pl.AutoregressiveTransform)]
    assert len(flows) == 3
    assert all(f.inverse for f in flows)  # IAF: one network pass per sample (not MAF's d)
    d = model.encoder(torch.zeros(1, 1, 28, 28)).event_shape[0]
    ascending = list(range(1, d + 1))
    orders = [f.made.input_degrees.tolist() for f in flows]
    assert orders == [ascending, ascending[::-1], ascending]  # left-to-right, right-to-left, ...


def test_resnet_block_is_residual():
    from problayers.vae.models.resnet import ResidualBlock

    block = ResidualBlock(4)
    with torch.no_grad():
        block.body[-1].weight.zero_()
        block.body[-1].bias.zero_()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_vampprior_pseudo_inputs_start_around_0_05():
    torch.manual_seed(0)
    model = build_model(_config("mlp", {"prior": "vamp", "prior_components": 50}))
    u = model.prior_module.pseudo_inputs.detach()
    assert float(u.mean()) == pytest.approx(0.05, abs=0.002)
    assert float(u.std()) == pytest.approx(0.01, rel=0.1)


def test_hvae_posterior_and_prior_pickle_and_export_names_the_chain():
    # The chains' conditionals were lambdas: pickle and torch.save of q(z|x) and p(z) failed
    # (and a deep copy must leave the features' graph behind).
    import copy as copy_module
    import io
    import pickle

    torch.manual_seed(0)
    vae = build_model(_config("hvae", {})).eval()
    x = torch.rand(3, 1, 28, 28).round()
    q = vae.encoder(x)
    z = pl.convert_to_tensor(q)
    for dist in (q, vae.prior()):
        for copy in (pickle.loads(pickle.dumps(dist)), copy_module.deepcopy(dist)):
            torch.testing.assert_close(copy.log_prob(z), dist.log_prob(z))
        torch.save(dist, io.BytesIO())
    # a deep copy is detached: no gradient reaches the model, and copied with the model it
    # runs the copied model's network
    assert not any(
        g is not None
        for g in torch.autograd.grad(
            copy_module.deepcopy(q).log_prob(z.detach()).sum(), list(vae.parameters()), allow_unused=True
        )
    )
    vae2, q2 = copy_module.deepcopy((vae, q))
    assert q2.conditional.net is vae2.encoder.bottom
    with pytest.raises(
        TypeError, match="DistributionLambda was given a Chain that no problayers distribution layer"
    ):
        pl.export(vae.encoder, (x,))
