"""Tensor-coercible distributions: a Distribution that also acts as its cached tensor."""

from __future__ import annotations

import copy
import operator
import pickle

import numpy as np
import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

import problayers as pl
from problayers import as_coercible


def normal(shape=(4, 3), fn="rsample", requires_grad=False):
    loc = torch.randn(shape, requires_grad=requires_grad)
    return loc, pl.as_coercible(D.Independent(D.Normal(loc, 1.0), 1), fn)


def test_is_the_wrapped_distribution():
    _, d = normal()
    assert isinstance(d, D.Independent) and isinstance(d, D.Distribution)
    assert d.batch_shape == (4,) and d.event_shape == (3,)
    x = torch.randn(4, 3)
    plain = d.distribution
    assert type(plain) is D.Independent
    torch.testing.assert_close(d.log_prob(x), plain.log_prob(x))
    torch.testing.assert_close(d.entropy(), plain.entropy())
    assert d.sample((5,)).shape == (5, 4, 3) and d.rsample().shape == (4, 3)
    torch.testing.assert_close(d.mean, plain.mean)
    torch.testing.assert_close(d.mode, plain.mode)


def test_acts_as_tensor_in_torch_functions_and_layers():
    _, d = normal()
    v = d.tensor()
    torch.testing.assert_close(torch.exp(d), torch.exp(v))
    torch.testing.assert_close(F.softplus(d), F.softplus(v))
    torch.testing.assert_close(torch.cat([d, v]), torch.cat([v, v]))
    lin = nn.Linear(3, 2)
    torch.testing.assert_close(lin(d), lin(v))
    torch.testing.assert_close(nn.Sequential(nn.Flatten(0), nn.Unflatten(0, (4, 3)))(d), v)


def test_operators_indexing_and_tensor_attributes():
    _, d = normal()
    v = d.tensor()
    for got, want in [
        (d + 1, v + 1),
        (1 + d, 1 + v),
        (d - v, v - v),
        (2 - d, 2 - v),
        (d * 3, v * 3),
        (3 * d, 3 * v),
        (d / 2, v / 2),
        (2 / (d.abs() + 1), 2 / (v.abs() + 1)),
        (d**2, v**2),
        (-d, -v),
        (abs(d), abs(v)),
        (d @ v.T, v @ v.T),
        (torch.ones(4, 3) + d, 1 + v),
        (d[1:, 0], v[1:, 0]),
        (d > 0, v > 0),
    ]:
        torch.testing.assert_close(got, want)
    assert d.shape == (4, 3) and d.dtype == torch.float32 and d.ndim == 2 and d.size(1) == 3
    assert d.flatten().shape == (12,) and d.view(2, 6).shape == (2, 6)
    assert d.to(torch.float64).dtype == torch.float64
    np.testing.assert_allclose(np.asarray(d), v.numpy())


def test_distribution_meaning_wins_and_explicit_tensor():
    _, d = normal()
    assert d.mean.shape == (4, 3)  # the distribution's mean, not a reduction
    torch.testing.assert_close(d.tensor().mean(), pl.convert_to_tensor(d).mean())
    assert pl.convert_to_tensor(d) is d.tensor()
    assert pl.convert_to_tensor(3) == 3 and pl.is_coercible(d) and not pl.is_coercible(d.tensor())


@pytest.mark.parametrize("fn", ["rsample", "sample", "mean", "mode"])
def test_value_cached_once(fn):
    calls = []
    _, d = normal(fn=lambda dist: calls.append(1) or dist.rsample())
    d + 1, d * 2, d.shape, torch.exp(d)
    assert len(calls) == 1
    _, d = normal(fn=fn)
    assert d.tensor() is d.tensor()


def test_rsample_value_carries_gradients():
    loc, d = normal(requires_grad=True)
    (d * d).sum().backward()
    assert loc.grad is not None and loc.grad.abs().sum() > 0


def test_sample_value_has_no_gradient():
    _, d = normal(fn="sample", requires_grad=True)
    assert not d.tensor().requires_grad


def test_coercible_as_parameter_of_another_distribution():
    # pytorch/pytorch#37141: broadcast_all rejected tensor-likes; numbers beside them must
    # follow the tensor's dtype and device.
    loc, d = normal(requires_grad=True, shape=(5,))
    d64 = pl.as_coercible(D.Normal(torch.zeros(5, dtype=torch.float64), 1.0))
    for dist in (D.Normal(d, 1.0), D.Normal(0.0, d.tensor().exp()), D.Bernoulli(logits=d)):
        assert type(dist.batch_shape) is torch.Size and dist.batch_shape == (5,)
    n = D.Normal(d64, 2.0)
    assert n.scale.dtype == torch.float64 and n.loc.dtype == torch.float64
    D.Normal(d, 1.0).log_prob(torch.zeros(5)).sum().backward()
    assert loc.grad is not None


def test_coercible_of_coercible_rewraps():
    _, d = normal()
    again = pl.as_coercible(d, "mean")
    torch.testing.assert_close(again.tensor(), d.mean)


def test_errors():
    with pytest.raises(TypeError, match="dist"):
        pl.as_coercible(torch.zeros(3))
    with pytest.raises(ValueError, match="convert_to_tensor_fn"):
        pl.as_coercible(D.Normal(0.0, 1.0), "median")
    with pytest.raises(ValueError, match="no reparameterized sampler"):
        pl.as_coercible(D.Bernoulli(probs=torch.ones(2) / 2))
    d = pl.as_coercible(D.Normal(0.0, 1.0), lambda dist: "nope")
    with pytest.raises(TypeError, match=r"must return a torch\.Tensor"):
        d.tensor()
    with pytest.raises(AttributeError):
        _ = d._no_such_private


def test_kl_dispatch_and_repr():
    _, d = normal()
    prior = D.Independent(D.Normal(torch.zeros(3), 1.0), 1)
    torch.testing.assert_close(D.kl_divergence(d, prior), D.kl_divergence(d.distribution, prior))
    assert repr(d).startswith("TensorCoercible(Independent(")


# ------------------------------------------------------------------ shape without drawing, repr
@pytest.mark.parametrize("fn", ["rsample", "sample", "mean", "mode", "stddev", "variance"])
def test_shape_dtype_device_known_without_drawing(fn):
    dist = D.Independent(D.Normal(torch.zeros(4, 3, dtype=torch.float64), 1.0), 1)
    out = as_coercible(dist, fn)
    state = torch.random.get_rng_state()
    assert out.shape == (4, 3) and out.ndim == 2 and out.dim() == 2 and out.size(-1) == 3
    assert out.dtype == torch.float64 and out.device == torch.device("cpu")
    assert "not drawn yet" in repr(out)
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn
    assert out._tc_value is None
    assert out.tensor().shape == out.shape and out.tensor().dtype == out.dtype


def test_categorical_sample_dtype_is_int64_without_drawing():
    out = as_coercible(D.Categorical(logits=torch.zeros(5, 3)), "sample")
    assert out.dtype == torch.int64 and out.shape == (5,)
    assert out.tensor().dtype == torch.int64


@pytest.mark.parametrize("fn", ["auto", "sample", "mode", "mean", "variance"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: D.Categorical(logits=torch.zeros(5, 3)),
        lambda: D.Independent(D.Categorical(logits=torch.zeros(5, 2, 3)), 1),
        lambda: D.OneHotCategorical(logits=torch.zeros(5, 3)),
        lambda: D.Bernoulli(logits=torch.zeros(5, dtype=torch.float64)),
        lambda: D.Independent(D.Poisson(torch.ones(5, 2)), 1),
    ],
    ids=["Categorical", "Independent(Categorical)", "OneHotCategorical", "Bernoulli", "Independent(Poisson)"],
)
def test_dtype_without_drawing_is_the_drawn_dtype(make, fn):
    """What ``.dtype`` says before the draw is the dtype of the value drawn afterwards."""
    out = as_coercible(make(), fn)
    said = out.dtype
    assert out._tc_value is None
    assert said == out.tensor().dtype


def test_callable_convert_fn_draws_for_its_shape():
    out = as_coercible(D.Normal(torch.zeros(2), 1.0), lambda d: d.sample((3,)))
    assert out.shape == (3, 2)  # only the callable knows: computed
    assert out._tc_value is not None


def test_repr_names_distribution_function_and_shape():
    out = as_coercible(D.Normal(torch.zeros(2, 5), 1.0), "mean")
    text = repr(out)
    assert "Normal(loc: torch.Size([2, 5])" in text and "mean" in text and "(2, 5)" in text
    out.tensor()
    assert "drawn" in repr(out) and "not drawn" not in repr(out)


def test_pickle_keeps_class_value_and_named_fn():
    import pickle

    out = as_coercible(D.Normal(torch.zeros(3), 1.0), "sample")
    value = out.tensor()
    back = pickle.loads(pickle.dumps(out))
    assert type(back) is type(out) and torch.equal(back.tensor(), value)
    assert back._tc_name == "sample" and isinstance(back, D.Normal)


def test_convert_fn_may_return_a_number():
    out = as_coercible(D.Normal(torch.zeros(3), 1.0), lambda d: 2.0)
    assert torch.equal(out + 1, torch.tensor(3.0))
    on_meta = as_coercible(D.Normal(torch.zeros(3, device="meta"), 1.0, validate_args=False), lambda d: 2)
    assert on_meta.tensor().device.type == "meta" and on_meta.tensor().dtype == torch.float32


def test_convert_fn_may_return_a_list_or_a_numpy_array_as_tfp_converts_them():
    """TFP's ``tf.convert_to_tensor`` takes them, with the distribution's dtype as the hint."""
    normal = D.Normal(torch.zeros(2, dtype=torch.float64), 1.0)
    for value in ([1, 2], np.array([1.0, 2.0], dtype=np.float32)):
        out = as_coercible(normal, lambda d, value=value: value)
        assert out.tensor().dtype == torch.float64 and torch.equal(out * 1, torch.tensor([1.0, 2.0]).double())
    with pytest.raises(TypeError, match=r"a number, a list or a numpy array, got tuple"):
        as_coercible(normal, lambda d: (1.0, 2.0)) * 1  # TFP refuses a tuple too


def test_bitwise_operators():
    out = as_coercible(D.Bernoulli(probs=torch.tensor([1.0, 0.0])), lambda d: d.sample().bool())
    assert (out & torch.tensor([True, True])).tolist() == [True, False]
    assert (out | torch.tensor([False, True])).tolist() == [True, True]
    assert (out ^ torch.tensor([True, True])).tolist() == [False, True]
    assert (~out).tolist() == [False, True]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_first_look_with_autograd_off_keeps_the_sample_and_its_gradient_for_the_loss(mode):
    # A metric or a log reads the output's value first (autograd off), the loss next: the loss
    # gets the value looked at, with its graph (before, the cached value had none).
    enc = nn.Sequential(nn.Linear(5, 6), pl.IndependentNormal(3))
    x = torch.randn(4, 5)

    def loss_grad(look: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc.zero_grad()
        torch.manual_seed(1)
        q = enc(x)
        looked = None
        if look:
            with mode():
                looked = q.tensor().clone()
            assert not looked.requires_grad
        (q * torch.arange(3.0)).square().sum().backward()
        if looked is not None:
            torch.testing.assert_close(looked, q.tensor().detach())
        return enc[0].weight.grad.clone(), looked

    reference, _ = loss_grad(look=False)
    grad, _ = loss_grad(look=True)
    torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_same_for_an_output_made_straight_from_parameters(mode):
    # A VariableLayer's distribution holds the parameter itself (no grad_fn in its state).
    torch.manual_seed(0)
    layer = pl.VariableLayer(
        3, initializer="normal", make_distribution_fn=lambda t: D.Independent(D.Normal(t, 1.0), 1)
    )
    q = layer()
    with mode():
        q.tensor().mean()
    (q * torch.arange(3.0)).square().sum().backward()
    assert layer.variable.grad is not None and layer.variable.grad.abs().sum() > 0


def test_a_look_with_autograd_off_compiles_in_one_graph():
    enc = nn.Sequential(nn.Linear(5, 6), pl.IndependentNormal(3))
    x = torch.randn(4, 5)

    def loss(x):
        q = enc(x)
        with torch.no_grad():
            q.tensor().mean()  # a metric, before the loss
        return (q * torch.arange(3.0)).square().sum()

    torch._dynamo.reset()
    torch.compile(loss, backend="eager", fullgraph=True)(x).backward()
    assert enc[0].weight.grad is not None and enc[0].weight.grad.abs().sum() > 0


def test_a_look_with_autograd_off_at_an_output_made_without_it_draws_plainly():
    enc = nn.Sequential(nn.Linear(5, 6), pl.IndependentNormal(3))
    with torch.no_grad():
        q = enc(torch.randn(4, 5))
        v = q.tensor()
    assert not v.requires_grad and v is q.tensor()


@pytest.mark.parametrize("made_from", ["logits", "probs"])
def test_mode_of_a_bernoulli_at_one_half_is_tfps_zero(made_from):
    # torch's Bernoulli.mode is NaN at p = 1/2; TFP's mode (logits > 0, probs > 0.5) is 0, so a
    # decoder whose logits start at zero gives 0s, not NaNs, as its "mode" value.
    logits = torch.tensor([[-1.0, 0.0, 2.0]])
    base = D.Bernoulli(logits=logits) if made_from == "logits" else D.Bernoulli(probs=torch.sigmoid(logits))
    for dist in (base, D.Independent(base, 1)):
        torch.testing.assert_close(pl.as_coercible(dist, "mode").tensor(), torch.tensor([[0.0, 0.0, 1.0]]))
    layer = pl.IndependentBernoulli(3, convert_to_tensor_fn="mode")
    torch.testing.assert_close(layer(logits).tensor(), torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.isnan(layer(logits).mode[0, 1])  # the distribution's own .mode stays torch's


def test_a_convert_fn_torch_does_not_implement_names_itself_and_only_choices_that_work():
    params = torch.zeros(3, pl.MixtureNormal.params_size(2))
    out = pl.MixtureNormal(2, convert_to_tensor_fn="mode")(params)
    with pytest.raises(NotImplementedError) as info:
        out + 1
    assert str(info.value) == (  # no rsample, no mode for a mixture; not torch's internal class name
        "convert_to_tensor_fn='mode': torch's MixtureSameFamily does not implement it; "
        "use 'auto', 'sample', 'mean' or a callable"
    )
    with pytest.raises(
        ValueError, match=r"has no reparameterized sampler .*; use 'auto', 'sample', 'mean' or"
    ):
        pl.MixtureNormal(2, convert_to_tensor_fn="rsample")(params)
    base = D.Independent(D.Normal(torch.zeros(4, 3), 1.0), 1)
    flow = pl.AutoregressiveTransform(pl.AutoregressiveNetwork(2, 3), convert_to_tensor_fn="mean")
    with pytest.raises(NotImplementedError) as info:
        flow(base) * 1
    assert str(info.value) == (  # torch's TransformedDistribution has no mean (and says nothing)
        "convert_to_tensor_fn='mean': torch's TransformedDistribution does not implement it; "
        "use 'auto', 'sample', 'rsample' or a callable"
    )


def test_value_read_under_no_grad_is_detached():
    # A metric read under no_grad gets no graph, while the loss later reuses the graph-carrying value.
    out = nn.Sequential(nn.Linear(2, 4), pl.IndependentNormal(2))(torch.randn(3, 2))
    with torch.no_grad():
        value = out.tensor()
    assert not value.requires_grad
    assert out.tensor().requires_grad


def test_deepcopy_detaches_the_parameters():
    out = nn.Sequential(nn.Linear(2, 5), pl.MultivariateNormalTriL(2))(torch.randn(3, 2))
    copied = copy.deepcopy(out)
    assert copied.loc.grad_fn is None and not copied.loc.requires_grad
    torch.testing.assert_close(copied.loc, out.loc.detach())


def test_log_prob_under_cpu_bf16_autocast_is_the_fp32_density():
    # LowRankMultivariateNormal's log_prob is matrix products: under autocast they would run in bf16.
    g = torch.Generator().manual_seed(0)
    loc, factor = torch.randn(8, generator=g), torch.randn(8, 3, generator=g)
    diag = torch.rand(8, generator=g) + 0.5
    q = as_coercible(D.LowRankMultivariateNormal(loc, factor, diag))
    x = torch.randn(5, 8, generator=g)
    expected = D.LowRankMultivariateNormal(loc, factor, diag).log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = q.log_prob(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_in_fp32_leaves_fp64_as_it_is():
    from problayers.precision import in_fp32

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert in_fp32(lambda t: t, torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
        assert in_fp32(lambda t: t, torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32


def test_scalars_like_keeps_an_explicit_fp64_scalar():
    from problayers.convert import scalars_like

    out = scalars_like((torch.zeros(3), torch.tensor(0.1, dtype=torch.float64)))
    assert out[1].dtype == torch.float64


class _LabelledNormal(D.Normal):
    """A user distribution holding an integer tensor (labels) before its floating parameters."""

    def __init__(self, loc, scale):
        self.labels = torch.arange(loc.shape[-1])  # int64, first in __dict__
        super().__init__(loc, scale)


def test_dtype_and_number_value_skip_integer_state():
    """The value's dtype without drawing is the floating parameters' (int64 labels held first
    in the state are not a parameter), and a number returned by convert_to_tensor_fn takes that
    dtype. Catches the mutation (first_floating_tensor returns any tensor: int64)."""
    out = pl.as_coercible(_LabelledNormal(torch.zeros(3), torch.ones(3)), "mean")
    assert next(iter(vars(out))) == "labels"
    assert out.dtype == torch.float32 == out.tensor().dtype
    number = pl.as_coercible(
        _LabelledNormal(torch.zeros(3, dtype=torch.float64), torch.ones(3)), lambda d: 0.5
    )
    assert number.tensor().dtype == torch.float64


def test_deepcopy_keeps_a_leaf_parameter_requiring_grad():
    """deepcopy detaches graph (non-leaf) tensors only; a parameter held in the state is copied
    as deepcopy copies a parameter (requires_grad kept), as for the plain distribution. Catches the mutation
     (graph_tensors takes every tensor that requires grad)."""
    loc = torch.nn.Parameter(torch.zeros(3))
    out = pl.as_coercible(D.Normal(loc, 1.0), "mean")
    plain_copy = copy.deepcopy(D.Normal(loc, 1.0))
    got = copy.deepcopy(out)
    assert plain_copy.loc.requires_grad
    assert got.loc.requires_grad


def test_mode_of_a_doubly_independent_bernoulli_at_one_half_is_zero():
    """TFP's Bernoulli mode at p = 1/2 is 0 (torch's is NaN), through any number of
    Independent wrappers. Catches the mutation (only one Independent unwrapped)."""
    inner = D.Independent(D.Bernoulli(logits=torch.zeros(2, 3, 4)), 1)
    out = pl.as_coercible(D.Independent(inner, 1), "mode")
    torch.testing.assert_close(out.tensor(), torch.zeros(2, 3, 4))


def test_mode_of_a_bernoulli_made_from_tiny_positive_logits_is_one():
    """Made from logits, the mode is logits > 0 (TFP): logits 1e-9 give 1 although
    sigmoid(1e-9) rounds to exactly 0.5 in float32. Catches the mutation (the probs branch taken first)."""
    logits = torch.full((3,), 1e-9)
    assert torch.sigmoid(logits).eq(0.5).all()  # the case where the two branches differ
    out = pl.as_coercible(D.Bernoulli(logits=logits), "mode")
    torch.testing.assert_close(out.tensor(), torch.ones(3))


def test_broadcast_tensors_keeps_a_non_scalar_tensors_dtype():
    """torch.broadcast_tensors on a coercible and a tensor gives what it gives on the two tensors
    (dtypes kept); only 0-dim default-dtype scalars are adapted. Catches the mutation (the 0-dim condition
    dropped: a float32 tensor beside a float64 value is cast)."""
    c64 = pl.as_coercible(D.Normal(torch.zeros(3, dtype=torch.float64), 1.0), "mean")
    got = torch.broadcast_tensors(c64, torch.zeros(3))
    want = torch.broadcast_tensors(c64.tensor(), torch.zeros(3))
    assert [t.dtype for t in got] == [t.dtype for t in want] == [torch.float64, torch.float32]


def test_a_bool_sample_shape_is_not_an_int():
    """TFP's int sample_shape is (n,); a bool is not taken as 1. Catches the mutation (bool dropped from
    the pass-through types: sample(True) draws one sample)."""
    out = pl.as_coercible(D.Normal(torch.zeros(2), 1.0), "mean")
    with pytest.raises(TypeError):
        out.sample(True)


def test_convert_fn_returning_another_coercible_gives_its_tensor():
    """A convert_to_tensor_fn may return another layer's output: its tensor value is taken.
    Catches the mutation (that unwrapping removed: a TypeError)."""
    inner = pl.as_coercible(D.Normal(torch.arange(3.0), 1.0), "mean")
    out = pl.as_coercible(D.Normal(torch.zeros(3), 1.0), lambda d: inner)
    value = out.tensor()
    assert type(value) is torch.Tensor
    torch.testing.assert_close(value, torch.arange(3.0))


def test_numpy_of_a_value_that_requires_grad():
    """numpy.asarray of an rsample value that carries gradients (a training output). Catches the mutation
    (.detach() dropped: numpy() refuses tensors that require grad)."""
    loc = torch.zeros(3, requires_grad=True)
    out = pl.as_coercible(D.Normal(loc, 1.0), "rsample")
    array = np.asarray(out)
    np.testing.assert_allclose(array, out.tensor().detach().numpy())


def test_le_is_less_or_equal_and_matmul_on_the_right():
    """x <= y is true where equal. Catches the mutation (__le__ as <). (M @ x is checked too; it goes
    through Tensor.__matmul__ and __torch_function__, so __rmatmul__ is not reached.)"""
    m = torch.arange(9.0).reshape(3, 3)
    v = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = pl.as_coercible(D.Independent(D.Normal(v, 1.0), 1), "mean")
    torch.testing.assert_close(m @ out, m @ v)
    assert not torch.equal(m @ v, v @ m)
    torch.testing.assert_close(out <= v, torch.ones(3, 3, dtype=torch.bool))
    assert operator.le(out, v.clone()).all()


def test_torch_function_converts_keyword_arguments():
    """A coercible passed by keyword to a torch function is converted too. Catches the mutation (dicts not
    converted: the kwargs keep the coercible)."""
    out = pl.as_coercible(D.Normal(torch.arange(3.0), 1.0), "mean")
    torch.testing.assert_close(torch.add(torch.ones(3), other=out), torch.arange(3.0) + 1)
    torch.testing.assert_close(
        torch.where(torch.tensor([True, False, True]), torch.zeros(3), other=out),
        torch.tensor([0.0, 1.0, 0.0]),
    )


def test_expand_gives_a_coercible_output_of_its_own():
    """torch's expand built the coercible class without its state: every tensor use of the
    result raised AttributeError (coercion audit)."""
    q = as_coercible(D.Normal(torch.zeros(3), 1.0), "mean")
    e = q.expand((5, 3))
    assert e.batch_shape == (5, 3) and e.shape == (5, 3)
    assert torch.equal(e + 1, torch.ones(5, 3)) and "TensorCoercible" in repr(e)
    assert pickle.loads(pickle.dumps(e)).shape == (5, 3)
    layer_out = pl.IndependentNormal(2)(torch.zeros(4, 4))
    assert (layer_out.expand((3, 4)) * 1).shape == (3, 4, 2)


def test_a_first_look_under_inference_mode_leaves_a_value_autograd_can_use():
    """A frozen encoder's output logged under inference_mode cached an inference tensor: the
    trainable head's backward then raised (coercion audit)."""
    encoder = nn.Sequential(nn.Linear(2, 4), pl.IndependentNormal(2)).requires_grad_(False)
    head = nn.Linear(2, 1)
    q = encoder(torch.randn(3, 2))
    with torch.inference_mode():
        float(q.tensor().mean())
    assert not q.tensor().is_inference()
    head(q).sum().backward()
    assert head.weight.grad is not None


def test_numpy_on_the_left_keeps_the_graph_and_python_conversions_use_the_value():
    q = as_coercible(D.Normal(torch.zeros(2, requires_grad=True), 1.0), "mean")
    for left in (np.float32(0.5), np.ones(2, dtype=np.float32)):
        out = left * q
        assert isinstance(out, torch.Tensor) and out.requires_grad  # it was a detached ndarray
    one = as_coercible(D.Normal(torch.tensor(2.0), 1.0), "mean")
    assert float(one) == 2.0 and int(one) == 2
    bits = as_coercible(D.Categorical(logits=torch.zeros(2, 4)), lambda d: torch.tensor([4, 8]))
    assert (bits >> 2).tolist() == [1, 2] and (bits << 1).tolist() == [8, 16]


def test_iterating_a_scalar_output_raises_as_a_0_dim_tensor_does():
    """It iterated as an empty sequence (__getitem__'s IndexError ended it): list(x) == []."""
    x = as_coercible(D.Normal(torch.tensor(5.0), 1.0), "mean")
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        list(x)
    rows = as_coercible(D.Normal(torch.zeros(3, 2), 1.0), "mean")
    assert [r.shape for r in rows] == [(2,)] * 3


def test_a_convert_fn_that_uses_the_output_as_a_tensor_is_one_line():
    """d + 1, d.shape, torch.exp(d) inside the function ended in a RecursionError."""
    for fn in (lambda d: d + 1, lambda d: torch.exp(d), lambda d: torch.zeros(d.shape)):
        out = as_coercible(D.Normal(torch.zeros(2), 1.0), fn)
        with pytest.raises(RuntimeError, match=r"^convert_to_tensor_fn of a Normal output used the output"):
            out * 1


def test_the_dtype_of_a_mixture_of_categoricals_is_known_before_the_draw():
    mix = D.MixtureSameFamily(
        D.Categorical(logits=torch.zeros(4, 2)), D.Categorical(logits=torch.zeros(4, 2, 3))
    )
    out = as_coercible(mix, "sample")
    assert out.dtype == torch.int64 == out.tensor().dtype  # it said float32 until the draw
