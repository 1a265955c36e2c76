"""to_bayesian: every layer replaced by its twin, the same predictions at init, the KL collected,
and a short ELBO training that learns an uncertainty."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl
import problayers.bayesian
from problayers.bayesian import _TWINS


class _Net(nn.Module):
    """Every convertible kind, nested (Sequential, ModuleDict), one module shared by two parents."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Conv1d(3, 3, 3, padding=1)
        self.seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU())
        self.down = nn.ModuleDict({"a": nn.Conv3d(3, 2, 2), "shared": shared})
        self.up = nn.ConvTranspose2d(3, 2, 2, stride=2, groups=1, output_padding=0)
        self.up1 = nn.ConvTranspose1d(3, 2, 3, stride=2, output_padding=1)
        self.also_shared = shared
        self.head = nn.Sequential(
            nn.Linear(2 * 8 * 8 + 2 * 12 + 2 * 3 * 3 * 3, 4), nn.Tanh(), nn.Linear(4, 2)
        )

    def forward(self, x):  # x: (N, 2, 4, 4)
        h = self.seq(x)  # (N, 3, 4, 4)
        v = self.down["a"](h[:, :, None].expand(-1, -1, 4, -1, -1))  # (N, 2, 3, 3, 3)
        s = self.also_shared(self.down["shared"](h.flatten(2)[..., :5]))  # (N, 3, 5)
        parts = [self.up(h).flatten(1), self.up1(s).flatten(1), v.flatten(1)]
        return self.head(torch.cat(parts, 1))  # (N, 2)


def _twins(model: nn.Module) -> list[nn.Module]:
    twins = {cls for pair in _TWINS.values() for cls in pair}
    return [m for m in model.modules() if type(m) in twins]


def _zero_scale_posteriors(model: nn.Module) -> None:
    """The posteriors' means used deterministically: each MeanFieldNormal returns a zero scale."""
    for m in model.modules():
        if isinstance(m, pl.MeanFieldNormal):
            m.forward = lambda *ignored, m=m: D.Independent(
                D.Normal(m.loc, torch.zeros_like(m.loc), validate_args=False), m.loc.dim()
            )


@pytest.mark.parametrize("estimator", ["reparameterization", "flipout"])
def test_every_module_replaced_and_the_same_predictions(estimator):
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(3, 2, 4, 4)
    expected = net(x)
    bnn = pl.to_bayesian(net, estimator=estimator, init_scale=1e-6, kl_weight=0.1)
    assert not any(type(m) in _TWINS for m in bnn.modules())
    assert len(_twins(bnn)) == 7  # the shared Conv1d has one twin
    assert bnn.also_shared is bnn.down["shared"]
    suffix = "Flipout" if estimator == "flipout" else "Reparameterization"
    assert type(bnn.seq[0]).__name__ == f"Conv2d{suffix}" and bnn.seq[0].padding_mode == "reflect"
    assert type(bnn.up1).__name__ == f"ConvTranspose1d{suffix}" and bnn.up1.output_padding == (1,)
    assert type(net.seq[0]) is nn.Conv2d and type(net.head[0]) is nn.Linear  # the original: unchanged
    torch.testing.assert_close(bnn(x), expected, rtol=1e-3, atol=1e-4)  # near-zero scales: close
    pl.clear_losses(bnn)
    _zero_scale_posteriors(bnn)
    with problayers.losses.added_losses_skipped():
        torch.testing.assert_close(bnn(x), expected, rtol=1e-5, atol=1e-6)  # the means: equal


def test_kl_is_collected_and_weighted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    bnn = pl.to_bayesian(net, kl_weight=0.25, prior=0.5)
    bnn(torch.randn(5, 3))
    expected = 0
    for layer in (bnn[0], bnn[2]):
        assert layer.kernel_prior().base_dist.scale.eq(0.5).all()
        expected += D.kl_divergence(layer.kernel_posterior(), layer.kernel_prior())
        expected += D.kl_divergence(layer.bias_posterior(), layer.bias_prior())
    torch.testing.assert_close(pl.collect_losses(bnn), 0.25 * expected)
    scale = bnn[0].kernel_posterior.scale
    torch.testing.assert_close(scale, torch.full_like(scale, 1e-3))
    assert isinstance(pl.to_bayesian(net)[0].kernel_prior, pl.StandardNormal)
    assert isinstance(pl.to_bayesian(net, prior=pl.StandardNormal)[0].bias_prior, pl.StandardNormal)


def test_inplace_top_level_skip_subclasses_dtype_and_mode():
    net = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))
    net.eval()
    same = pl.to_bayesian(net, inplace=True, skip=["1.0"])
    assert same is net and isinstance(net[0], pl.DenseReparameterization) and not net[0].training
    assert type(net[1][0]) is nn.Linear and isinstance(net[1][1], pl.DenseReparameterization)
    whole = pl.to_bayesian(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), skip=["1"])
    assert type(whole[1]) is nn.Linear
    top = nn.Linear(3, 2).double()
    twin = pl.to_bayesian(top, inplace=True)
    assert isinstance(twin, pl.DenseReparameterization) and twin.kernel_posterior.loc.dtype == torch.float64
    torch.testing.assert_close(twin.kernel_posterior.loc, top.weight)
    attention = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True)
    converted = pl.to_bayesian(attention)
    assert type(converted.self_attn.out_proj) is type(attention.self_attn.out_proj)  # a subclass: kept
    assert isinstance(converted.linear1, pl.DenseReparameterization)
    assert converted(torch.randn(2, 3, 4)).shape == (2, 3, 4)
    no_bias = pl.to_bayesian(nn.Conv2d(2, 2, 3, bias=False))
    assert no_bias.bias_posterior is None
    normed = nn.Sequential(pl.WeightNorm(nn.Linear(3, 4)), nn.Linear(4, 2))
    converted = pl.to_bayesian(normed)  # a WeightNorm's layer runs at g * v / ||v||: kept
    assert type(converted[0]) is pl.WeightNorm and type(converted[0].layer) is nn.Linear
    assert isinstance(converted[1], pl.DenseReparameterization)
    assert converted(torch.randn(5, 3)).shape == (5, 2)
    assert pl.to_bayesian(pl.WeightNorm(nn.Linear(3, 4)), inplace=True).layer.bias is not None


def test_a_module_under_two_names_of_one_parent_is_one_twin():
    """A layer applied twice (``nn.Sequential(lin, act, lin)``) or tied under two attribute names
    is converted at every name, to one twin: the network stays tied and wholly Bayesian."""
    lin = nn.Linear(2, 2)
    bnn = pl.to_bayesian(nn.Sequential(lin, nn.ReLU(), lin))
    assert isinstance(bnn[0], pl.DenseReparameterization) and bnn[2] is bnn[0]
    tied = nn.Module()
    tied.enc = nn.Linear(2, 2)
    tied.dec = tied.enc
    converted = pl.to_bayesian(tied)
    assert isinstance(converted.enc, pl.DenseReparameterization) and converted.dec is converted.enc
    # skipped under either of its names, or a parent's: kept at every name (still one module)
    for name in ("0", "2"):
        lin = nn.Linear(2, 2)
        kept = pl.to_bayesian(nn.Sequential(lin, nn.ReLU(), lin), skip=[name])
        assert type(kept[0]) is nn.Linear and kept[2] is kept[0]
    lin = nn.Linear(2, 2)
    kept = pl.to_bayesian(nn.Sequential(nn.Sequential(lin), lin, nn.Linear(2, 2)), skip=["0"])
    assert type(kept[1]) is nn.Linear and kept[1] is kept[0][0]
    assert isinstance(kept[2], pl.DenseReparameterization)


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        ({"estimator": "local"}, ValueError, "estimator"),
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"prior": -1.0}, ValueError, "prior"),
        ({"prior": "normal"}, TypeError, "prior"),
        ({"skip": ["nope"]}, ValueError, "skip"),
        ({"skip": "0"}, TypeError, "skip"),
        ({"kl_weight": -1.0}, ValueError, "kl_weight"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        pl.to_bayesian(nn.Sequential(nn.Linear(2, 2)), **kwargs)
    with pytest.raises(TypeError, match="model"):
        pl.to_bayesian(lambda x: x)


def test_short_training_learns_an_uncertainty():
    """Heteroscedastic 1-D regression: a trained network, converted and trained on the ELBO for
    a few hundred steps, moves its posterior scales away from init, and its predictive spread
    across weight samples is larger away from the data than on it."""
    torch.manual_seed(0)
    n = 256
    x = torch.rand(n, 1) * 2 - 1  # data on [-1, 1]
    y = torch.sin(3 * x) + (0.05 + 0.3 * x.abs()) * torch.randn(n, 1)
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))

    def nll(out):
        return -D.Normal(out[:, :1], torch.nn.functional.softplus(out[:, 1:]) + 1e-3).log_prob(y).mean()

    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nll(net(x)).backward()
        opt.step()
    bnn = pl.to_bayesian(net, kl_weight=1 / n, estimator="flipout", prior=1.0, init_scale=1e-3)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    for _ in range(600):
        opt.zero_grad()
        (nll(bnn(x)) + pl.collect_losses(bnn, clear=True)).backward()
        opt.step()
    scales = torch.cat([m.scale.flatten() for m in bnn.modules() if isinstance(m, pl.MeanFieldNormal)])
    assert scales.median() > 10 * 1e-3  # the KL pulls the scales up from init where the data allows
    with torch.no_grad(), problayers.losses.added_losses_skipped():
        inside, outside = torch.linspace(-0.8, 0.8, 9)[:, None], torch.tensor([[-3.0], [3.0]])
        draws = torch.stack([bnn(torch.cat([inside, outside]))[:, 0] for _ in range(200)])  # (S, 11)
        spread = draws.std(0)
        noise = torch.nn.functional.softplus(bnn(inside)[:, 1])
    assert spread[9:].min() > spread[:9].max()  # epistemic: grows away from the data
    assert noise[[0, -1]].min() > 1.5 * noise[4]  # aleatoric: the noise grows with |x|


def test_docstring_example_runs():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    globs = {"torch": torch, "nn": nn, "D": D, "pl": pl}
    tests = [t for t in finder.find(problayers.bayesian, extraglobs=globs) if t.examples]
    assert [t.name for t in tests] == ["problayers.bayesian.to_bayesian"]
    with torch.random.fork_rng(devices=[]):
        assert runner.run(tests[0]).failed == 0


def test_dilated_transposed_convolution_keeps_its_dilation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose1d(2, 3, 3, dilation=2))
    bnn = pl.to_bayesian(net, init_scale=1e-6)  # the weights' posterior means, scale ~1e-6
    x = torch.randn(2, 2, 5)
    torch.testing.assert_close(bnn(x), net(x), atol=1e-3, rtol=0)
