"""The layers with the tools PyTorch users reach for: torch.compile (fullgraph, no graph break,
same numbers as eager), torch.autocast, copy.deepcopy / AveragedModel and pickle.

Every model of the catalog (tests/layer_cases.py MODEL_CASES) goes through each test. The
compile tests use the ``aot_eager`` backend: it runs dynamo and AOTAutograd (what decides
whether a model traces into one graph, forward and backward) without inductor's C++ build, so
the whole catalog stays seconds; tests/test_fastpath.py compiles with inductor.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from conftest import fresh_python
from host_sync import HostSyncs
from layer_cases import MODEL_CASES, ModelCase

BATCH_SHAPES = [(4,), (2, 3)]


@pytest.fixture
def fresh_dynamo():
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch.compiler.reset()


def _batch_shapes(case: ModelCase):
    return BATCH_SHAPES[:1] if len(case.input_shape) > 1 else BATCH_SHAPES


def _setup(case: ModelCase, batch_shape):
    torch.manual_seed(0)
    model = case.make_model()
    x = torch.randn(*batch_shape, *case.input_shape)
    values = None
    if case.distribution:
        with torch.no_grad():
            values = model(x).sample()
        pl.clear_losses(model)
    return model, x, values


def _loss(case: ModelCase, model: nn.Module, x, values, out=None):
    out = model(x) if out is None else out
    if case.distribution:
        loss = -out.log_prob(values).mean() + 0.1 * pl.convert_to_tensor(out).float().mean()
    else:
        loss = out.pow(2).mean()
    return loss + pl.collect_losses(model, clear=True)


def _loss_and_grads(fn, model, x):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = fn(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_compile_fullgraph_equals_eager(case, fresh_dynamo):
    for batch_shape in _batch_shapes(case):
        model, x, values = _setup(case, batch_shape)

        def fn(x, model=model, values=values):
            return _loss(case, model, x, values)

        ref, ref_grads = _loss_and_grads(fn, model, x)
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        got, got_grads = _loss_and_grads(compiled, model, x)
        torch.testing.assert_close(got, ref)
        for g, r in zip(got_grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_forward_loss_and_backward_never_wait_for_the_device(case):
    # What a whole-step CUDA graph (problayers' --fast on a GPU) needs of every layer: no op
    # whose result the host reads back (an argument check, .item(), a boolean mask).
    model, x, values = _setup(case, (4,))
    with HostSyncs() as syncs:
        _loss(case, model, x, values).backward()
    assert syncs.found == []


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_no_graph_break(case, fresh_dynamo):
    _, x, values = _setup(case, (4,))
    # Traced as in a fresh process, no eager call, and with torch's KL cache emptied after the
    # model was built (as any register_kl does; a fullgraph compile then failed: extension audit).
    torch.manual_seed(0)
    model = case.make_model()
    D.kl._KL_MEMOIZE.clear()
    explanation = torch._dynamo.explain(lambda x: _loss(case, model, x, values))(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_sixteen_heads_compile_once_and_dynamic_batch_does_not_recompile(fresh_dynamo):
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(5, 16 * 4)
            self.heads = nn.ModuleList(pl.IndependentNormal(2) for _ in range(16))

        def forward(self, x):
            params = self.trunk(x).chunk(16, dim=-1)
            return sum(
                head(p).log_prob(torch.zeros(2)).mean() for head, p in zip(self.heads, params, strict=True)
            )

    model = Heads()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    for batch in (4, 5, 7, 4):
        x = torch.randn(batch, 5)
        torch.testing.assert_close(compiled(x), model(x))  # no sampling: the same numbers
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"]


def test_marked_dynamic_batch_does_not_recompile(fresh_dynamo):
    model = nn.Sequential(
        nn.Linear(5, pl.MultivariateNormalTriL.params_size(3)), pl.MultivariateNormalTriL(3)
    )
    compiled = torch.compile(lambda x: model(x).log_prob(torch.zeros(3)), backend="aot_eager", fullgraph=True)
    for batch in (4, 6, 9):
        x = torch.randn(batch, 5)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), model(x).log_prob(torch.zeros(3)))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_autocast_bf16_forward_and_backward(case):
    model, x, values = _setup(case, (4,))
    ref, _ = _loss_and_grads(lambda x: _loss(case, model, x, values), model, x)

    def under_autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = _loss(case, model, x, values, out)
            if case.distribution:  # the layer built and evaluates its distribution in fp32
                assert out.log_prob(values).dtype == torch.float32
                assert pl.convert_to_tensor(out).dtype in (torch.float32, torch.int64)
            return loss

    got, grads = _loss_and_grads(under_autocast, model, x)
    assert got.dtype == torch.float32
    assert all(torch.isfinite(g).all() for g in grads)
    # bf16 keeps ~3 significant digits in the linear/conv layers; the rest is fp32.
    torch.testing.assert_close(got, ref, rtol=5e-2, atol=5e-2)


def test_user_autocast_with_multivariate_normal_tril_kl():
    # The failure users met: triangular_solve has no bf16 kernel on the CPU.
    prior = pl.layers.multivariate.D.MultivariateNormal(torch.zeros(3), torch.eye(3))
    layer = pl.MultivariateNormalTriL(
        3, activity_regularizer=pl.KLDivergenceRegularizer(prior, use_exact_kl=True)
    )
    model = nn.Sequential(nn.Linear(5, pl.MultivariateNormalTriL.params_size(3)), layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = model(torch.randn(4, 5))
        kl = pl.collect_losses(model, clear=True)
        lp = q.log_prob(q.rsample()) + q.entropy()
    assert kl.dtype == lp.dtype == torch.float32
    (kl + lp.sum()).backward()


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_deepcopy_pickle_and_averaged_model_after_a_forward(case):
    model, x, values = _setup(case, (4,))
    out = model(x)  # added losses recorded and not cleared: they hold the graph
    if case.distribution:
        out.tensor()  # drawn before copying: the copies keep the value
    twin = copy.deepcopy(model)
    averaged = torch.optim.swa_utils.AveragedModel(model)
    restored = pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for other in (twin, averaged.module, restored):
        for (name, p), (other_name, q) in zip(
            model.state_dict().items(), other.state_dict().items(), strict=True
        ):
            assert name == other_name and torch.equal(p, q)
        assert pl.collect_losses(other).item() == 0.0  # copies carry no recorded terms
    if case.distribution:
        for copied in (copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
            assert type(copied) is type(out) and pl.is_coercible(copied)
            torch.testing.assert_close(copied.log_prob(values), out.log_prob(values).detach())
            torch.testing.assert_close(copied.tensor(), out.tensor().detach())
        buffer = io.BytesIO()
        torch.save(out, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        torch.testing.assert_close(loaded.log_prob(values), out.log_prob(values).detach())


def test_seed_vae_forward_loss_backward_is_one_graph_equal_to_eager(fresh_dynamo):
    from problayers.vae.models import ModelConfig, build_model, vae_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_size=2, base_depth=4))  # the seed architecture, narrow
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()

    def loss(x):
        return vae_loss(model, x)[0]

    explanation = torch._dynamo.explain(loss)(x)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
    pl.clear_losses(model)
    ref, ref_grads = _loss_and_grads(loss, model, x)
    got, got_grads = _loss_and_grads(torch.compile(loss, backend="aot_eager", fullgraph=True), model, x)
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_built_on_meta_then_to_empty_and_loaded_equals_the_model(case):
    # Meta-device init (FSDP, low-memory loading): nothing the model computes with may be lost
    # with the values to_empty drops, other than what load_state_dict restores.
    model, x, values = _setup(case, (4,))
    with torch.device("meta"):
        torch.manual_seed(0)
        empty = case.make_model()
    empty.to_empty(device="cpu")
    empty.load_state_dict(model.state_dict(), strict=True)
    losses = []
    for m in (model, empty):
        torch.manual_seed(1)
        losses.append(_loss(case, m, x, values).detach())
    torch.testing.assert_close(losses[1], losses[0])


def test_activation_checkpointing_of_a_block_that_takes_an_output_drawn_first():
    # design.md: pass pl.convert_to_tensor(q) to torch.utils.checkpoint (the recipe documented).
    enc = nn.Sequential(
        nn.Linear(5, 6),
        pl.IndependentNormal(3, activity_regularizer=pl.KLDivergenceRegularizer(pl.StandardNormal(3))),
    )
    dec = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(4, 5)

    def grads(checkpointed: bool) -> list[torch.Tensor]:
        enc.zero_grad()
        dec.zero_grad()
        torch.manual_seed(0)
        z = pl.convert_to_tensor(enc(x))
        y = torch.utils.checkpoint.checkpoint(dec, z, use_reentrant=False) if checkpointed else dec(z)
        (y.square().sum() + pl.collect_losses(enc, clear=True)).backward()
        return [p.grad.clone() for p in (*enc.parameters(), *dec.parameters())]

    for got, want in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(got, want)


def test_a_fresh_process_compiles_the_vgp_kl_in_one_graph():
    # problayers registers mvn_kl with dynamo when dynamo is imported (not at its own import,
    # which would cost seconds): torch.compile in a fresh process still traces it in the graph.
    code = (
        "import torch, problayers as pl\n"
        "gp = pl.VariationalGaussianProcess(2, 4, dtype=torch.float64)\n"
        "x = torch.randn(5, 2, dtype=torch.float64)\n"
        "y = torch.zeros(5, 1, dtype=torch.float64)\n"
        "f = lambda x: -gp(x).log_prob(y).mean() + pl.collect_losses(gp)\n"
        "want = f(x)\n"
        "got = torch.compile(f, backend='aot_eager', fullgraph=True)(x)\n"
        "torch.testing.assert_close(got, want)\n"
        "print('ok')\n"
    )
    assert fresh_python(code) == "ok"


@pytest.mark.parametrize(
    "make,works",
    [
        (lambda: pl.IndependentNormal(2), {"same"}),
        (lambda: pl.IndependentBernoulli(2), {"different"}),
        (lambda: pl.IndependentLogistic(2), {"same", "different"}),
        (lambda: pl.MixtureLogistic(3, 2), {"different"}),
        (lambda: pl.MixtureNormal(3, 2), set()),
        (lambda: pl.MixtureNormal(3, 2, convert_to_tensor_fn="sample"), {"different"}),
        (lambda: pl.MixtureSameFamily(3, pl.IndependentNormal(2)), set()),
    ],
    ids=[
        "Normal",
        "Bernoulli",
        "Logistic",
        "MixtureLogistic",
        "MixtureNormal",
        "MixtureNormal(sample)",
        "MixtureSameFamily(Normal)",
    ],
)
def test_vmap_takes_the_randomness_design_md_says(make, works):
    """docs/design.md: which ``randomness`` of ``torch.func.vmap`` each layer's value takes
    (torch's own samplers decide: an ``rsample`` of a Normal needs ``"same"``, a ``sample()``
    of a batched input ``"different"``; a mixture's default value has one of each)."""
    layer = make()
    x = torch.randn(5, 4, layer.params_size())
    for randomness in ("same", "different"):
        try:
            value = torch.func.vmap(lambda p: pl.convert_to_tensor(layer(p)), randomness=randomness)(x)
        except RuntimeError as err:
            assert randomness not in works, err
            assert "andomness" in str(err)  # vmap's refusal, not another error
        else:
            assert randomness in works and value.shape == (5, 4, 2)
