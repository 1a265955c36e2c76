"""The fast training step (problayers.train.fastpath): same training as the default step, options,
errors. Tiny models on the CPU; the seed-model compile checks are marked slow."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from host_sync import HostSyncs
from problayers.train.fastpath import (
    PRECISIONS,
    TrainStep,
    bf16_autocast,
    configure_cpu_threads,
    fastest_defaults,
    make_train_step,
)
from problayers.train.trainer import Trainer, TrainerConfig
from problayers.vae.evaluation import evaluate
from problayers.vae.models import VAE, ModelConfig, build_model, vae_loss


def tiny_vae() -> VAE:
    """Dense VAE on 4x4 images: MultivariateNormalTriL(2) with a Monte Carlo KL regularizer,
    IndependentBernoulli((1, 4, 4)) decoder."""
    prior = D.Independent(D.Normal(torch.zeros(2), 1.0), 1)
    kl = pl.KLDivergenceRegularizer(prior)
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.LeakyReLU(0.2),
        nn.Linear(8, pl.MultivariateNormalTriL.params_size(2)),
        pl.MultivariateNormalTriL(2, activity_regularizer=kl),
    )
    decoder = nn.Sequential(
        nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 16), pl.IndependentBernoulli((1, 4, 4))
    )
    return VAE(encoder, decoder, kl)


def small_seed() -> VAE:
    """The seed architecture (28x28 convolutions) at width 4, latent 2."""
    return build_model(ModelConfig(latent_size=2, base_depth=4))


def batches(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(shape, generator=g) < 0.3).float() for _ in range(n)]


def trajectory(make_model, data, *, step_kwargs=None, seed=0, lr=1e-2):
    """Losses of one step per batch, from the same initial weights and sampling seed; with
    ``step_kwargs=None`` the trainer's default step."""
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if step_kwargs is None:
        trainer = Trainer(model, optimizer, vae_loss, lambda e: data, TrainerConfig(progress=False))
        step = trainer.step
    else:
        step = make_train_step(model, optimizer, vae_loss, **step_kwargs)
    torch.manual_seed(seed + 1)
    losses = torch.stack([step(x)[0] for x in data])
    return losses, model


@pytest.fixture
def fresh_dynamo():
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch.compiler.reset()


# ------------------------------------------------------------------------------- same training
def test_default_options_are_the_trainer_step_bitwise():
    data = batches((8, 1, 28, 28), n=3)
    ref, ref_model = trajectory(small_seed, data)
    got, model = trajectory(small_seed, data, step_kwargs={})
    assert torch.equal(ref, got)
    for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_step_returns_detached_loss_and_metrics():
    torch.manual_seed(0)
    model = tiny_vae()
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), vae_loss)
    loss, metrics = step(batches((8, 1, 4, 4), n=1)[0])
    assert loss.dim() == 0 and not loss.requires_grad
    assert set(metrics) == {"recon", "kl"}
    assert torch.allclose(loss, metrics["recon"] + metrics["kl"])
    assert isinstance(step, TrainStep) and step.options == {
        "compile": False,
        "precision": "fp32",
        "channels_last": False,
    }


def test_channels_last_same_trajectory():
    data = batches((8, 1, 28, 28), n=3)
    ref, _ = trajectory(small_seed, data)
    got, model = trajectory(small_seed, data, step_kwargs={"channels_last": True})
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    conv = model.encoder[1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_close_to_fp32_and_distribution_maths_in_fp32():
    # bf16 keeps ~3 significant digits in the convolutions: per-step losses (~550 nats) agree
    # with fp32 to 1% (measured: ~0.01%), not bitwise.
    data = batches((8, 1, 28, 28), n=3)
    ref, _ = trajectory(small_seed, data)
    torch.manual_seed(0)
    model = small_seed()
    seen = {}
    model.decoder[1].register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))
    model.encoder[-1].register_forward_hook(
        lambda m, i, q: seen.update(scale_tril=q.scale_tril.dtype, z=pl.convert_to_tensor(q).dtype)
    )
    model.decoder[-1].register_forward_hook(lambda m, i, p: seen.update(logits=p.base_dist.logits.dtype))
    step = make_train_step(model, torch.optim.Adam(model.parameters(), lr=1e-2), vae_loss, precision="bf16")
    torch.manual_seed(1)
    got = torch.stack([step(x)[0] for x in data])
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=0.0)
    assert got.dtype == torch.float32
    assert seen["conv"] == torch.bfloat16  # the convolutions ran in bf16 ...
    assert seen == {
        "conv": torch.bfloat16,
        "scale_tril": torch.float32,
        "z": torch.float32,
        "logits": torch.float32,
    }  # ... the distributions' maths in fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_autocast_evaluation_close_to_fp32():
    torch.manual_seed(0)
    model = small_seed().eval()
    x = batches((16, 1, 28, 28), n=1)[0]
    kwargs = {"batch_size": 8, "iwae_samples": 4}
    torch.manual_seed(5)
    ref = evaluate(model.encode, model.decode, model.prior(), x, **kwargs)
    torch.manual_seed(5)
    with bf16_autocast(model):
        got = evaluate(model.encode, model.decode, model.prior(), x, **kwargs)
    assert got["neg_elbo"] == pytest.approx(ref["neg_elbo"], rel=1e-2)
    assert got["iwae_nll"] == pytest.approx(ref["iwae_nll"], rel=1e-2)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_trainer_runs_with_the_fast_step():
    torch.manual_seed(0)
    model = small_seed()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_train_step(model, optimizer, vae_loss, channels_last=True, precision="bf16")
    data = batches((8, 1, 28, 28), n=2)
    history = Trainer(
        model, optimizer, vae_loss, lambda e: data, TrainerConfig(epochs=1, progress=False), step_fn=step
    ).fit()
    assert history[0]["steps"] == 2 and torch.isfinite(torch.tensor(history[0]["train_loss"]))


# ------------------------------------------------------------------------------- the step's hygiene
def _without_prior_validation(model: VAE) -> VAE:
    prior = model.regularizer.prior
    prior._validate_args = prior.base_dist._validate_args = False
    return model


@pytest.mark.parametrize("kwargs", [{}, {"channels_last": True}, {"precision": "bf16"}])
def test_no_host_sync_in_the_step(kwargs):
    torch.manual_seed(0)
    model = _without_prior_validation(small_seed())  # see the next test
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), vae_loss, **kwargs)
    x = batches((4, 1, 28, 28), n=1)[0]
    with HostSyncs() as syncs:
        step(x)
    assert syncs.found == []


def test_seed_model_step_has_no_host_sync():
    torch.manual_seed(0)
    model = small_seed()
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), vae_loss)
    with HostSyncs() as syncs:
        step(batches((4, 1, 28, 28), n=1)[0])
    assert syncs.found == []


def test_step_runs_the_models_own_forward_and_restores_autocast_after_an_error():
    torch.manual_seed(0)
    model = tiny_vae()
    seen = []

    def failing(model, x):
        seen.append(torch.is_autocast_enabled("cpu"))
        raise RuntimeError("boom")

    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), failing, precision="bf16")
    with pytest.raises(RuntimeError, match="boom"):
        step(batches((8, 1, 4, 4), n=1)[0])
    assert seen == [True]  # the loss ran under autocast ...
    assert not torch.is_autocast_enabled("cpu")  # ... switched off again after the error
    assert all("forward" not in m.__dict__ for m in model.modules())  # nothing patched, ever


@pytest.mark.parametrize("kwargs", [{}, {"precision": "bf16", "channels_last": True}])
def test_an_eager_step_leaves_the_warnings_machinery_alone(kwargs):
    """Every step entered warnings.catch_warnings, which makes Python forget which warnings it
    has shown: a user's once-only warning came back at every step (global-state audit)."""
    import warnings

    torch.manual_seed(0)
    model = small_seed()

    def loss_fn(m, x):
        warnings.warn("the user's own warning", UserWarning, stacklevel=1)
        return vae_loss(m, x)

    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn, **kwargs)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # Python's: once per code location
        for x in batches((4, 1, 28, 28), n=4):
            step(x)
    assert [str(w.message) for w in seen] == ["the user's own warning"]


# ------------------------------------------------------------------------------- compile
def test_compile_one_graph_same_trajectory_as_eager(fresh_dynamo):
    # With fallback_random, inductor draws the same random numbers as eager, so the compiled
    # step reproduces the eager trajectory to float rounding. The first step runs eagerly.
    data = batches((8, 1, 4, 4), n=3)
    ref, _ = trajectory(tiny_vae, data)
    with torch._inductor.config.patch(fallback_random=True):
        got, _ = trajectory(tiny_vae, data, step_kwargs={"compile": True})
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
def test_compile_seed_model(fresh_dynamo, channels_last):
    # torch 2.11's inductor crashed (convolution_backward stride assertion) on channels_last +
    # compile; on 2.13 the seed model trains and matches eager.
    data = batches((8, 1, 28, 28), n=3)
    ref, _ = trajectory(small_seed, data, step_kwargs={"channels_last": channels_last})
    with torch._inductor.config.patch(fallback_random=True):
        got, _ = trajectory(small_seed, data, step_kwargs={"compile": True, "channels_last": channels_last})
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_compile_bf16_channels_last_seed_model(fresh_dynamo):
    data = batches((8, 1, 28, 28), n=3)
    ref, _ = trajectory(small_seed, data)
    kwargs = {"compile": True, "channels_last": True, "precision": "bf16"}
    got, _ = trajectory(small_seed, data, step_kwargs=kwargs)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=0.0)  # other random draws: looser


# ------------------------------------------------------------------------------- options and helpers
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"compile": "yes"}, "compile"),
        ({"compile_mode": "fastest", "compile": True}, "compile_mode"),
        ({"compile_mode": "reduce-overhead"}, "compile_mode"),
        ({"cuda_graph": 1}, "cuda_graph"),
        ({"cuda_graph": True}, "cuda_graph"),  # the model is on the CPU
        ({"compile": 1}, "compile"),
        ({"channels_last": None}, "channels_last"),
        ({"precision": "fp16"}, "precision"),
        ({"precision": "bfloat16"}, "precision"),
    ],
)
def test_option_errors_name_the_argument(kwargs, name):
    model = tiny_vae()
    with pytest.raises(ValueError, match=f"^{name}"):
        make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), vae_loss, **kwargs)


def test_argument_type_errors():
    model = tiny_vae()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"^model"):
        make_train_step(lambda x: x, opt, vae_loss)
    with pytest.raises(TypeError, match=r"^optimizer"):
        make_train_step(model, None, vae_loss)
    with pytest.raises(TypeError, match=r"^loss_fn"):
        make_train_step(model, opt, "vae_loss")


def test_configure_cpu_threads():
    assert configure_cpu_threads(1) == 1 and torch.get_num_threads() == 1
    n = configure_cpu_threads(None)
    assert n >= 1 and torch.get_num_threads() == n
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"^n"):
            configure_cpu_threads(bad)


def test_fastest_defaults():
    cpu = fastest_defaults("cpu")
    assert set(cpu) == {"compile", "precision", "channels_last", "cuda_graph"}
    assert cpu["precision"] in PRECISIONS and cpu["cuda_graph"] is False
    assert fastest_defaults(torch.device("cpu")) == cpu
    model = tiny_vae()
    make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), vae_loss, **cpu)
    with pytest.raises(ValueError, match=r"^device"):
        fastest_defaults("tpu-ish")
    cuda = fastest_defaults("cuda")  # what it would pick, without a GPU too
    assert cuda["cuda_graph"] is True and cuda["channels_last"] is True and cuda["compile"] is False


def test_a_failed_cuda_graph_capture_is_one_clear_line_and_keeps_the_learning_rates(monkeypatch):
    # No GPU needed: the capture is replaced by one that fails as CUDA does when the step reads
    # a device value back on the host.
    import contextlib

    from problayers.cli.errors import describe
    from problayers.train.cudagraph import CaptureError, CUDAGraphStep

    @contextlib.contextmanager
    def failing_capture(graph):
        yield
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", failing_capture)
    torch.manual_seed(0)
    model = tiny_vae()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = CUDAGraphStep(make_train_step(model, optimizer, vae_loss), warmup_steps=0)
    with pytest.raises(
        CaptureError, match=r"^cuda_graph: .*not permitted.*validate_args=False.*--no-fast\)$"
    ) as exc:
        step(batches((8, 1, 4, 4), n=1)[0])
    assert not step.captured and step.step.autocast_cache is True
    assert optimizer.param_groups[0]["lr"] == 0.1  # a float again, not the graph's tensor
    status, line = describe(exc.value)
    assert status == 1 and line.startswith("problayers: error: cuda_graph:") and "\n" not in line


def test_channels_last_batch_keeps_named_tuples_and_converts_dicts():
    import collections

    from problayers.train.fastpath import channels_last_batch

    x = torch.rand(2, 3, 4, 4)
    Pair = collections.namedtuple("Pair", "x y")
    assert type(channels_last_batch(Pair(x, x))) is Pair
    d = channels_last_batch({"x": x})
    assert d["x"].is_contiguous(memory_format=torch.channels_last) and not d["x"].is_contiguous()


def test_channels_last_converts_the_models_weights_and_the_batch():
    # Three input channels: a one-channel weight is both layouts at once and proves nothing.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    seen = []

    def loss_fn(m, batch):
        seen.append(batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous())
        return m(batch).pow(2).mean()

    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, channels_last=True)
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    step(torch.rand(2, 3, 6, 6))
    assert seen == [True]


def test_channels_last_after_steps_keeps_fused_adams_moments_in_the_weights_layout():
    """An optimizer with state (a step taken before, a resume) kept its moments contiguous while
    the weights became channels_last, and fused Adam mixed their elements up: weights 3e-3 off
    after two steps at lr 1e-3 (fast-path audit). Against the plain step: rounding only."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)

    def loss_fn(m, b):
        return m(b).pow(2).mean()

    weights = []
    for options in ({}, {"channels_last": True}):
        model = copy.deepcopy(net)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        make_train_step(model, optimizer, loss_fn)(x)  # state in the contiguous layout
        step = make_train_step(model, optimizer, loss_fn, **options)
        step(x), step(x)
        weights.append([p.detach().clone() for p in model.parameters()])
    for got, ref in zip(*weights, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_channels_last_spells_out_a_one_channel_weights_strides_as_module_to_does():
    """A (C, 1, k, k) weight is contiguous in both layouts; its strides decide oneDNN's kernels,
    and the step's numbers were measured with Module.to's (channels_last spelled out)."""
    model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.Conv2d(8, 1, 3))
    reference = copy.deepcopy(model).to(memory_format=torch.channels_last)
    make_train_step(
        model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, b: m(b).sum(), channels_last=True
    )
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        assert got.stride() == want.stride()


def test_channels_last_leaves_a_conv3d_weight_as_it_is():
    """Module.to(memory_format=channels_last) raises on a 5-D weight; the docstring promised
    the 4-D ones only."""
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.Conv2d(3, 2, 3), nn.Flatten())
    step = make_train_step(
        model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, b: m[1](m[0](b)[:, :, 0]).pow(2).mean(),
        channels_last=True,
    )  # fmt: skip
    assert model[0].weight.is_contiguous() and not model[1].weight.is_contiguous()
    step(torch.rand(2, 2, 5, 5, 5))


def test_fastest_defaults_on_a_cpu_and_on_a_gpu_without_bf16(monkeypatch):
    assert fastest_defaults("cpu")["channels_last"] is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert fastest_defaults("cuda")["precision"] == "fp32"


def test_cpu_threads_follow_the_affinity_not_the_machine(monkeypatch):
    from problayers.train import fastpath

    before = torch.get_num_threads()
    monkeypatch.setattr(fastpath.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(fastpath.os, "cpu_count", lambda: 64)
    try:
        assert configure_cpu_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(
    ("loss_fn", "refused"),
    [
        (
            lambda m, x: (m(x) ** 2).sum(1),
            r"a 0-dim loss tensor \(or \(loss, metrics\)\), got a tensor of shape \(4,\)",
        ),
        (lambda m, x: {"loss": m(x).sum()}, r"a 0-dim loss tensor \(or \(loss, metrics\)\), got dict"),
        (lambda m, x: (m(x).sum(), [1.0]), r"its metrics as a dict \{name: value\}, got list"),
    ],
    ids=["per-example", "dict", "metrics-list"],
)
def test_the_steps_loss_fn_output_is_checked_as_the_trainers(fresh_dynamo, compile, loss_fn, refused):
    # make_train_step's loss_fn is "as for Trainer", whose own step names loss_fn in one line;
    # the fast step left torch's "grad can be implicitly created only for scalar outputs" or
    # "'dict' object has no attribute 'backward'" (extension audit).
    model = nn.Linear(3, 2)
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, compile=compile)
    with pytest.raises((ValueError, TypeError), match=r"^loss_fn: expected " + refused):
        step(torch.randn(4, 3))
