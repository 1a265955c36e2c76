"""Transposed convolutions on the convolution's passes (problayers.train.transposed): the same
outputs and gradients as torch's own, under autocast too; the in-place switch; the step option."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from problayers.train.fastpath import make_train_step
from problayers.train.transposed import (
    Conv2dByTransposed,
    ConvTranspose2dByConv,
    conv_transpose_by_conv,
    use_convolution_passes,
    use_transposed_weight_gradient,
)

CASES = [
    (lambda: nn.ConvTranspose2d(4, 6, 5, stride=2, padding=2, output_padding=1), (3, 4, 7, 7)),
    (lambda: nn.ConvTranspose2d(4, 6, 3, stride=(2, 1), padding=(1, 0), dilation=2, groups=2, bias=False),
     (3, 4, 5, 6)),
    (lambda: nn.ConvTranspose2d(16, 8, 7), (3, 16, 1, 1)),  # the seed decoder's first layer
    (lambda: nn.ConvTranspose1d(4, 2, 3, stride=3, padding=1, output_padding=2), (2, 4, 9)),
    (lambda: nn.ConvTranspose3d(2, 4, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 4, 5)),
    # output padding >= stride (a dilation above the stride allows it): torch's own forward; the
    # convolution's passes raised (fast-path audit)
    (lambda: nn.ConvTranspose2d(3, 2, 3, stride=1, dilation=2, output_padding=1), (2, 3, 5, 5)),
    (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, dilation=3, output_padding=2), (2, 3, 5, 5)),
]  # fmt: skip


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def _pair(make, dtype=torch.float64, device="cpu", switch=use_convolution_passes):
    torch.manual_seed(0)
    ref = make().to(device, dtype)
    new = copy.deepcopy(ref)
    assert switch(new) == 1
    return ref, new


def _grads(module, x, g):
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(g)
    return y, x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make, shape", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_as_torch(make, shape, channels_last, device):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        ref, new = _pair(make, dtype, device)
        x = torch.randn(shape, dtype=dtype, device=device)
        if channels_last and len(shape) == 4:
            x = x.to(memory_format=torch.channels_last)
            for m in (ref, new):
                m.to(memory_format=torch.channels_last)
        y_ref = ref(x)
        g = torch.randn_like(y_ref)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 as fp32 on a GPU
            y_ref, dx_ref, dp_ref = _grads(ref, x, g)
            y, dx, dp = _grads(new, x, g)
        assert y.shape == y_ref.shape and y.stride() == y_ref.stride()  # the same layout
        for a, b in zip([y, dx, *dp], [y_ref, dx_ref, *dp_ref], strict=True):
            assert (a - b).abs().max() <= tol * b.abs().max(), (dtype, (a - b).abs().max())


def test_output_size_and_unbatched_input_as_torch():
    ref, new = _pair(lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), torch.float32)
    x = torch.randn(2, 3, 5, 5)
    assert new(x, output_size=[10, 10]).shape == (2, 2, 10, 10)
    torch.testing.assert_close(new(x, output_size=[10, 10]), ref(x, output_size=[10, 10]))
    torch.testing.assert_close(new(x[0]), ref(x[0]))  # (C, H, W): torch's own path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "make, switch, out",
    [
        (lambda: nn.ConvTranspose2d(8, 4, 5, stride=2, padding=2, output_padding=1), use_convolution_passes,
         (4, 4, 14, 14)),
        (lambda: nn.Conv2d(8, 1, 5, padding=2), use_transposed_weight_gradient, (4, 1, 7, 7)),
    ],
    ids=["transposed", "narrow"],
)  # fmt: skip
def test_under_autocast_the_dtypes_are_torchs(device, make, switch, out):
    ref, new = _pair(make, torch.float32, device, switch)
    x = torch.randn(4, 8, 7, 7, device=device).to(memory_format=torch.channels_last)
    g = torch.randn(out, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        y_ref, dx_ref, dp_ref = _grads(ref, x, g)
        y, dx, dp = _grads(new, x, g)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert dx.dtype == torch.float32 and all(p.dtype == torch.float32 for p in dp)
    # bf16 keeps ~3 significant digits; the bias is added after rounding here, inside the kernel there
    for a, b in zip([y, dx, *dp], [y_ref, dx_ref, *dp_ref], strict=True):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()


def test_the_switch_keeps_parameters_state_and_pickles():
    model = nn.Sequential(nn.Linear(2, 8), nn.Unflatten(1, (8, 1, 1)), nn.ConvTranspose2d(8, 2, 3))
    keys = list(model.state_dict())
    weight = model[2].weight
    assert use_convolution_passes(model, dry_run=True) == 1 and type(model[2]) is nn.ConvTranspose2d
    assert use_convolution_passes(model) == 1
    assert type(model[2]) is ConvTranspose2dByConv and isinstance(model[2], nn.ConvTranspose2d)
    assert model[2].weight is weight and list(model.state_dict()) == keys
    x = torch.randn(3, 2)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(twin[2]) is ConvTranspose2dByConv
        torch.testing.assert_close(twin(x), model(x))
    assert use_convolution_passes(model) == 0  # already switched

    class Mine(nn.ConvTranspose2d):  # a user's subclass may compute otherwise: left alone
        pass

    assert use_convolution_passes(nn.Sequential(Mine(2, 2, 3))) == 0
    with pytest.raises(TypeError, match=r"^model: expected a torch.nn.Module"):
        use_convolution_passes("model")  # type: ignore[arg-type]


def test_bad_arguments_name_themselves():
    w = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"^x: expected \(B, C, \*spatial\)"):
        conv_transpose_by_conv(torch.randn(3, 4), w)
    with pytest.raises(ValueError, match=r"^stride: expected an int or 2 ints, got \(1, 2, 3\)"):
        conv_transpose_by_conv(torch.randn(1, 3, 4, 4), w, stride=(1, 2, 3))


@pytest.mark.parametrize(
    "make, switch",
    [
        (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), use_convolution_passes),
        (lambda: nn.Conv2d(3, 1, 3, padding=1), use_transposed_weight_gradient),
    ],
    ids=["transposed", "narrow"],
)
def test_float64_under_autocast_stays_float64_and_torch_func_sees_through(make, switch):
    """Autocast leaves float64 alone (the layers cast it to bf16: 3e-3 off); torch.func.grad
    and vmap needed the Functions' setup_context (fast-path audit)."""
    ref, new = _pair(make, torch.float64, switch=switch)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = new(x), ref(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    params = {k: v.detach() for k, v in new.named_parameters()}

    def loss(p, xs):
        return torch.func.functional_call(new, p, (xs,)).square().sum()

    grads = torch.func.grad(loss)(params, x)
    ref(x).square().sum().backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12)
    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x[:, None])
    torch.testing.assert_close(per_example["weight"].sum(0), grads["weight"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make, switch",
    [
        (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), use_convolution_passes),
        (lambda: nn.Conv2d(3, 2, 3, padding=1), use_transposed_weight_gradient),  # 2 channels: two layouts
    ],
    ids=["transposed", "narrow"],
)
def test_torch_func_takes_channels_last_and_strided_batches(make, switch):
    """Per-example gradients and Jacobians of the fast step's combination (channels_last
    batches): the layouts were queried on vmap's wrappers, which torch does not implement
    (gradient audit)."""
    ref, new = _pair(make, torch.float64, switch=switch)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    params = {k: v.detach() for k, v in new.named_parameters()}
    ref_params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(module, p, xs):
        return torch.func.functional_call(module, p, (xs[None],)).square().sum()

    for xs in (x, x[..., ::2]):  # channels_last; a strided slice per example
        got = torch.func.vmap(torch.func.grad(lambda p, v: loss(new, p, v)), in_dims=(None, 0))(params, xs)
        want = torch.func.vmap(torch.func.grad(lambda p, v: loss(ref, p, v)), in_dims=(None, 0))(
            ref_params, xs
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(new, p, (x,)))(params)
    ref_jac = torch.func.jacrev(lambda p: torch.func.functional_call(ref, p, (x,)))(ref_params)
    torch.testing.assert_close(jac, ref_jac, rtol=1e-10, atol=1e-12)


# torch's forward AD loads its decompositions with torch.jit.script on first use (torch 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "make, switch",
    [
        (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), use_convolution_passes),
        (lambda: nn.Conv2d(3, 1, 3, padding=1), use_transposed_weight_gradient),  # depthwise + sum
        (lambda: nn.Conv2d(3, 2, 3, padding=1, bias=False), use_transposed_weight_gradient),
    ],
    ids=["transposed", "narrow-one-channel", "narrow"],
)
def test_forward_mode_sees_through(make, switch):
    """jvp, jacfwd-based Hessians and forward_ad's dual tensors through a switched layer (they
    raised: the Functions had no jvp, which dynamo does not trace; eager calls take one that has)."""
    ref, new = _pair(make, torch.float64, switch=switch)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)

    def call(module):
        return lambda p, batch: torch.func.functional_call(module, p, (batch,))

    for xs in (x, x.to(memory_format=torch.channels_last)):
        params = {k: v.detach() for k, v in new.named_parameters()}
        tangents = {k: torch.randn_like(v) for k, v in params.items()}
        tx = torch.randn_like(xs)
        got = torch.func.jvp(call(new), (params, xs), (tangents, tx))
        want = torch.func.jvp(call(ref), (params, xs), (tangents, tx))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        for argnums, point in ((0, (params, xs)), (1, (params, xs[:1]))):
            got = torch.func.hessian(lambda p, v: call(new)(p, v).sin().sum(), argnums)(*point)
            want = torch.func.hessian(lambda p, v: call(ref)(p, v).sin().sum(), argnums)(*point)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        tangent = {}
        for name, module in (("got", new), ("want", ref)):
            with torch.autograd.forward_ad.dual_level():
                dual = torch.autograd.forward_ad.make_dual(xs, tx)
                tangent[name] = torch.autograd.forward_ad.unpack_dual(module(dual)).tangent
        torch.testing.assert_close(tangent["got"], tangent["want"], rtol=1e-10, atol=1e-12)


def test_a_wrong_channel_count_is_torchs_own_error():
    _, new = _pair(lambda: nn.ConvTranspose2d(4, 2, 3, stride=2))
    with pytest.raises(RuntimeError, match=r"expected input\[2, 3, 5, 5\] to have 4 channels"):
        new(torch.randn(2, 3, 5, 5, dtype=torch.float64))


# dynamo itself instantiates torch.autograd.Function to trace the Function's ctx (torch 2.13)
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated")
@pytest.mark.parametrize(
    "make, switch",
    [
        (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), use_convolution_passes),
        (lambda: nn.Conv2d(3, 1, 3, padding=1), use_transposed_weight_gradient),
    ],
    ids=["transposed", "narrow"],
)
def test_it_compiles(make, switch):
    ref, new = _pair(make, torch.float32, switch=switch)
    x = torch.randn(2, 3, 5, 5)
    compiled = torch.compile(new, backend="aot_eager", fullgraph=True)  # dynamo + AOTAutograd
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, ref(x))
    ref(x).sum().backward()
    torch.testing.assert_close(new.weight.grad, ref.weight.grad)


@pytest.mark.parametrize(
    "option, switched",
    # base_depth 4: besides the decoder's last layer two stride-1 encoder convolutions are narrow
    [
        ("transposed_as_conv", (ConvTranspose2dByConv, 6)),
        ("narrow_conv_by_transposed", (Conv2dByTransposed, 3)),
    ],
)
def test_the_step_options_train_the_seed_vae_as_before(option, switched):
    from problayers.vae.data import synthetic_mnist
    from problayers.vae.models import ModelConfig, build_model, vae_loss

    images = (synthetic_mnist(16, seed=0)[0] > 127).float().unsqueeze(1)  # (16, 1, 28, 28)
    losses = {}
    kind, count = switched
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(latent_size=4, base_depth=4))
        step = make_train_step(
            model, torch.optim.Adam(model.parameters(), 1e-3), vae_loss, channels_last=True, **{option: on}
        )
        torch.manual_seed(1)
        losses[on] = [step(images)[0].item() for _ in range(3)]
        assert sum(type(m) is kind for m in model.modules()) == (count if on else 0)
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    with pytest.raises(ValueError, match=rf"^{option}: expected True or False"):
        make_train_step(model, torch.optim.Adam(model.parameters()), vae_loss, **{option: 1})


# ------------------------------------------------------- narrow convolutions, exchanged weight gradient

NARROW = [
    (lambda: nn.Conv2d(8, 1, 5, padding=2), (3, 8, 9, 9)),  # the seed decoder's last layer
    (lambda: nn.Conv2d(6, 3, 3, padding=(1, 0), dilation=2, bias=False), (2, 6, 8, 7)),
    (lambda: nn.Conv2d(4, 2, (3, 5), padding=(2, 4)), (2, 4, 6, 6)),  # padding = k - 1: the edge
    (lambda: nn.Conv1d(4, 2, 3, padding=1), (2, 4, 9)),
    (lambda: nn.Conv1d(5, 1, 4, padding=3, dilation=2, bias=False), (2, 5, 11)),
    (lambda: nn.Conv3d(2, 1, 3, padding=1), (2, 2, 4, 5, 3)),
]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make, shape", NARROW)
@pytest.mark.parametrize("channels_last", [False, True])
def test_narrow_convolutions_keep_torchs_outputs_and_gradients(make, shape, channels_last, device):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        ref, new = _pair(make, dtype, device, use_transposed_weight_gradient)
        x = torch.randn(shape, dtype=dtype, device=device)
        if channels_last and len(shape) == 4:
            x = x.to(memory_format=torch.channels_last)
            for m in (ref, new):
                m.to(memory_format=torch.channels_last)
        g = torch.randn_like(ref(x))
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            y_ref, dx_ref, dp_ref = _grads(ref, x, g)
            y, dx, dp = _grads(new, x, g)
        # one output channel: depthwise + channel sum (another summation order); else torch's own
        assert y.stride() == y_ref.stride() and (ref.out_channels == 1 or torch.equal(y, y_ref))
        for a, b in zip([y, dx, *dp], [y_ref, dx_ref, *dp_ref], strict=True):
            err = (a - b).abs().max()
            assert a.shape == b.shape and err <= tol * b.abs().max(), (dtype, err)


def test_only_narrow_stride_one_convolutions_switch():
    class Mine(nn.Conv2d):  # a user's subclass may compute otherwise: left alone
        pass

    left = [
        nn.Conv2d(4, 16, 3),  # as many channels as the vector lanes: no gain
        nn.Conv2d(4, 1, 3, stride=2),
        nn.Conv2d(4, 2, 3, groups=2),
        nn.Conv2d(4, 1, 3, padding="same"),
        nn.Conv2d(4, 1, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 1, 3, padding=3),  # beyond the kernel: the transposed one would need negative padding
        Mine(4, 1, 3),
    ]
    assert use_transposed_weight_gradient(nn.Sequential(*left)) == 0
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 1, 3, padding=1))
    weight, keys = model[1].weight, list(model.state_dict())
    assert use_transposed_weight_gradient(model, dry_run=True) == 1 and type(model[1]) is nn.Conv2d
    assert use_transposed_weight_gradient(model) == 1 and type(model[0]) is nn.Conv2d
    assert type(model[1]) is Conv2dByTransposed and isinstance(model[1], nn.Conv2d)
    assert model[1].weight is weight and list(model.state_dict()) == keys
    x = torch.randn(2, 1, 6, 6)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(twin[1]) is Conv2dByTransposed
        torch.testing.assert_close(twin(x), model(x))
    torch.testing.assert_close(model(x[0]), model(x[0:1])[0])  # unbatched: torch's own path
    with pytest.raises(TypeError, match=r"^model: expected a torch.nn.Module"):
        use_transposed_weight_gradient(None)  # type: ignore[arg-type]


def test_switched_narrow_conv_changed_afterwards_computes_as_torch():
    # A switched layer whose stride is changed after the switch is no longer exchangeable: it
    # must take torch's own path, not the exchanged one at its old settings.
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 1, 3, padding=1)
    new = copy.deepcopy(ref)
    assert use_transposed_weight_gradient(new) == 1
    for m in (ref, new):
        m.stride = (2, 2)
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(new(x), ref(x))


def test_a_conv_strided_in_a_later_dim_is_not_switched():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 1, 3, stride=(1, 2))
    new = copy.deepcopy(ref)
    assert use_transposed_weight_gradient(new) == 0
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(new(x), ref(x))


def test_conv_transpose_by_conv_one_value_options_apply_to_every_dim():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 5, 4), torch.randn(3, 2, 3, 3), torch.randn(2)
    torch.testing.assert_close(conv_transpose_by_conv(x, w, b), nn.functional.conv_transpose2d(x, w, b))
    torch.testing.assert_close(
        conv_transpose_by_conv(x, w, b, stride=(2,), padding=(1,), output_padding=(1,)),
        nn.functional.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
    )
