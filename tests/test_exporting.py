"""Exporting encoders and decoders whose output is a distribution (problayers.exporting):
torch.export with a dynamic batch, torch.export.save/load, torch.jit.trace and ONNX (run with
onnxruntime); the exported program draws nothing and records no KL."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
from problayers.exporting import DistributionParams, ExportedDistribution

RANDOM_OPS = ("normal", "rand", "bernoulli", "exponential", "uniform", "poisson", "multinomial")


def decoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 6), pl.IndependentBernoulli((2, 3)))


def encoder():
    torch.manual_seed(0)
    prior = D.Independent(D.Normal(torch.zeros(3), 1.0), 1)
    mvn = pl.MultivariateNormalTriL
    return nn.Sequential(
        nn.Linear(5, mvn.params_size(3)), mvn(3, activity_regularizer=pl.KLDivergenceRegularizer(prior))
    )


def flow_encoder():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, pl.IndependentNormal.params_size(3)),
        pl.IndependentNormal(3),
        pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3, hidden_units=(8,))),
    )


def test_exported_decoder_log_prob_equals_eager_over_batch_sizes():
    model = decoder()
    exported = pl.export(model, (torch.zeros(4, 2),))
    assert isinstance(exported, ExportedDistribution)
    for batch in (1, 3, 9):
        z = torch.randn(batch, 2)
        x = torch.bernoulli(torch.full((batch, 2, 3), 0.5))
        got, ref = exported(z), model(z)
        assert type(got) is type(ref) and got.batch_shape == (batch,) and got.event_shape == (2, 3)
        torch.testing.assert_close(got.log_prob(x), ref.log_prob(x), rtol=0, atol=1e-6)
    code = exported.program.graph_module.code
    assert not [op for op in RANDOM_OPS if op in code]


def test_exported_output_keeps_the_layers_convert_to_tensor_fn():
    model = nn.Sequential(nn.Linear(2, 4), pl.IndependentNormal(2, convert_to_tensor_fn="mean"))
    exported = pl.export(model, (torch.zeros(4, 2),))
    z = torch.randn(3, 2)
    torch.testing.assert_close(exported(z).tensor(), model(z).mean.detach())  # the mean, not a draw


@pytest.mark.parametrize("make", [encoder, flow_encoder], ids=["MultivariateNormalTriL+KL", "flow"])
def test_exported_encoder_draws_nothing_and_records_no_kl(make):
    model = make()
    exported = pl.export(model, (torch.zeros(4, 5),))
    code = exported.program.graph_module.code
    assert not [op for op in RANDOM_OPS if op in code]  # no sample, no Monte Carlo KL
    x, v = torch.randn(7, 5), torch.randn(7, 3)
    pl.clear_losses(model)
    q = exported(x)
    assert pl.collect_losses(model).item() == 0.0
    torch.testing.assert_close(q.log_prob(v), model(x).log_prob(v), rtol=1e-5, atol=1e-5)


def test_torch_export_of_a_weight_layer_leaves_no_traced_term_behind():
    torch.manual_seed(0)
    layer = pl.DenseFlipout(5, 3)
    batch = torch.export.Dim("batch")
    torch.export.export(layer, (torch.randn(4, 5),), dynamic_shapes=({0: batch},))
    assert type(pl.collect_losses(layer)) is torch.Tensor  # not the FakeTensor of the trace
    assert pl.collect_losses(layer).item() == 0.0
    layer(torch.randn(4, 5))
    assert pl.collect_losses(layer).item() > 0  # recording is back after the export


def test_saved_program_loads_and_rebuilds():
    model = decoder()
    exported = pl.export(model, (torch.zeros(4, 2),))
    buffer = io.BytesIO()
    torch.export.save(exported.program, buffer)
    buffer.seek(0)
    program = torch.export.load(buffer)
    z, x = torch.randn(5, 2), torch.bernoulli(torch.full((5, 2, 3), 0.5))
    (logits,) = program.module()(z)
    # What a server does with the parameters: the layer's pure static constructor.
    rebuilt = pl.IndependentBernoulli.new(logits, (2, 3))
    torch.testing.assert_close(rebuilt.log_prob(x), model(z).log_prob(x), rtol=0, atol=1e-6)


def test_jit_trace_of_the_parameters():
    model = encoder()
    params = DistributionParams(model, torch.zeros(4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.trace
        traced = torch.jit.trace(params, (torch.zeros(4, 5),))
    x, v = torch.randn(6, 5), torch.randn(6, 3)
    q = params.rebuild(traced(x))
    torch.testing.assert_close(q.log_prob(v), model(x).log_prob(v), rtol=1e-5, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch():
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = decoder().eval()  # as torch.onnx.export asks
    params = DistributionParams(model, torch.zeros(4, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own exporter code
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            params,
            (torch.zeros(4, 2),),
            dynamo=True,
            dynamic_shapes={"args": ({0: torch.export.Dim("batch")},)},
            verbose=False,
        )
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    z, x = torch.randn(7, 2), torch.bernoulli(torch.full((7, 2, 3), 0.5))
    (logits,) = session.run(None, {session.get_inputs()[0].name: z.numpy()})
    got = params.rebuild((torch.from_numpy(logits),))
    torch.testing.assert_close(got.log_prob(x), model(z).log_prob(x), rtol=1e-5, atol=1e-5)


def test_clear_errors():
    with pytest.raises(TypeError, match="output must be the output of a problayers distribution layer"):
        DistributionParams(nn.Linear(2, 3), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="args: expected a tuple"):
        pl.export(decoder(), torch.zeros(4, 2))
    with pytest.raises(
        ValueError, match=r"args\[0\]: a dynamic batch needs an example batch of at least 2.*\(1, 2\)"
    ):
        pl.export(decoder(), (torch.zeros(1, 2),))
    one = pl.export(decoder(), (torch.zeros(1, 2),), dynamic_batch=False)  # a fixed batch of 1 is fine
    assert one(torch.zeros(1, 2)).batch_shape == (1,)
    with pytest.raises(TypeError, match=r"module: expected an nn\.Module"):
        DistributionParams(lambda x: x, torch.zeros(1))


def test_variable_layer_with_a_distribution_exports():
    torch.manual_seed(0)
    layer = pl.VariableLayer(
        4, initializer="normal", make_distribution_fn=lambda t: pl.IndependentNormal.new(t, 2)
    )
    exported = pl.export(layer, (torch.zeros(3, 5),))
    y = torch.randn(2)
    torch.testing.assert_close(exported(torch.zeros(7, 5)).log_prob(y), layer(torch.zeros(7, 5)).log_prob(y))


def test_parameters_wrapper_adds_no_loss_and_draws_nothing():
    torch.manual_seed(0)
    prior = D.Independent(D.Normal(torch.zeros(3), 1.0), 1)
    mvn = pl.MultivariateNormalTriL
    kl = pl.KLDivergenceRegularizer(prior)
    model = nn.Sequential(nn.Linear(5, mvn.params_size(3)), mvn(3, activity_regularizer=kl))
    params = DistributionParams(model, torch.zeros(4, 5))
    pl.clear_losses(model)
    state = torch.get_rng_state()
    params(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)))
    assert pl.collect_losses(model).item() == 0.0
    assert torch.equal(torch.get_rng_state(), state)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(2, 6), pl.IndependentBernoulli(6)

    def forward(self, z, scale=1.0, shift=None):
        h = self.lin(z) * scale
        return self.head(h if shift is None else h + shift)


class _KeywordOnly(_Scaled):
    def forward(self, z, *, scale=1.0):
        return self.head(self.lin(z) * scale)


class _WithAKeywordOnlyDefault(_Scaled):
    def forward(self, z, scale=1.0, *, flip=False):
        h = self.lin(z) * scale
        return self.head(-h if flip else h)


def test_export_with_keyword_inputs_and_a_dynamic_batch():
    # torch.export 2.13 fails on a **kwargs wrapper with dynamic shapes (pytorch#150022): the
    # keyword inputs go in by position, and a call binds its keywords the same way.
    torch.manual_seed(0)
    m = _Scaled()
    z, x = torch.randn(7, 2), torch.bernoulli(torch.full((7, 6), 0.5))
    exported = pl.export(m, (torch.zeros(4, 2),), {"scale": 2.0})
    torch.testing.assert_close(exported(z, scale=2.0).log_prob(x), m(z, scale=2.0).log_prob(x))
    torch.testing.assert_close(exported(z, 2.0).log_prob(x), m(z, 2.0).log_prob(x))
    exported = pl.export(m, (torch.zeros(4, 2),), {"shift": torch.zeros(4, 6)})  # a tensor, batch 7 below
    shift = torch.randn(7, 6)
    torch.testing.assert_close(exported(z, shift=shift).log_prob(x), m(z, shift=shift).log_prob(x))
    # a keyword-only input left at its default is not an input of the program
    other = _WithAKeywordOnlyDefault()
    exported = pl.export(other, (torch.zeros(4, 2),), {"scale": 2.0})
    torch.testing.assert_close(exported(z, scale=2.0).log_prob(x), other(z, scale=2.0).log_prob(x))
    with pytest.raises(TypeError, match=r"^export: the inputs do not fit _Scaled.forward: .*'nope'"):
        pl.export(m, (torch.zeros(4, 2),), {"nope": 1})


def test_keyword_only_inputs_need_a_fixed_batch():
    m = _KeywordOnly()
    with pytest.raises(
        ValueError, match=r"^kwargs: scale can only be passed by keyword, .*dynamic_batch=False"
    ):
        pl.export(m, (torch.zeros(4, 2),), {"scale": 2.0})
    exported = pl.export(m, (torch.zeros(4, 2),), {"scale": 2.0}, dynamic_batch=False)
    z = torch.randn(4, 2)
    torch.testing.assert_close(exported(z, scale=2.0).mean, m(z, scale=2.0).mean)
