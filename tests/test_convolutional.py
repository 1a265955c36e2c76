"""Weight-uncertainty convolutions in 1-3 dimensions and transposed: nn's shapes and numbers (at a
zero-variance posterior), Flipout's signs, the KL term, errors and the old import path."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

import problayers as pl
import problayers.layers.reparameterization as reparameterization

#: (layer class, its nn twin)
CONVS = [
    (pl.Conv1dReparameterization, nn.Conv1d),
    (pl.Conv1dFlipout, nn.Conv1d),
    (pl.Conv2dReparameterization, nn.Conv2d),
    (pl.Conv2dFlipout, nn.Conv2d),
    (pl.Conv3dReparameterization, nn.Conv3d),
    (pl.Conv3dFlipout, nn.Conv3d),
]
TRANSPOSED = [
    (pl.ConvTranspose1dReparameterization, nn.ConvTranspose1d),
    (pl.ConvTranspose1dFlipout, nn.ConvTranspose1d),
    (pl.ConvTranspose2dReparameterization, nn.ConvTranspose2d),
    (pl.ConvTranspose2dFlipout, nn.ConvTranspose2d),
    (pl.ConvTranspose3dReparameterization, nn.ConvTranspose3d),
    (pl.ConvTranspose3dFlipout, nn.ConvTranspose3d),
]
ALL = CONVS + TRANSPOSED
SIZES = {1: (9,), 2: (7, 6), 3: (5, 4, 6)}


def _ids(pair) -> str:
    return pair[0].__name__


def _kwargs(cls) -> dict:
    if cls.transposed:
        return {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1, "groups": 2, "dilation": 1}
    return {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "groups": 2}


def _frozen_at(layer, ref: nn.Module) -> None:
    """Posterior means := ``ref``'s weights, scales ~ 0 (softplus(-60) underflows to 0 + eps)."""
    with torch.no_grad():
        for q, w in ((layer.kernel_posterior, ref.weight), (layer.bias_posterior, ref.bias)):
            q.loc.copy_(w)
            if q.untransformed_scale is not None:  # the default bias is a point estimate already
                q.untransformed_scale.fill_(-60.0)


@pytest.mark.parametrize("pair", ALL, ids=_ids)
def test_shapes_and_numbers_match_nn_at_a_zero_variance_posterior(pair):
    cls, ref_cls = pair
    torch.manual_seed(0)
    layer, ref = cls(4, 6, **_kwargs(cls)), ref_cls(4, 6, **_kwargs(cls))
    assert layer.kernel_shape == tuple(ref.weight.shape) and layer.bias_shape == tuple(ref.bias.shape)
    _frozen_at(layer, ref)
    x = torch.randn(2, 4, *SIZES[cls.spatial_dims])
    out = layer(x)
    assert out.shape == ref(x).shape
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[0]), ref(x[0]), rtol=1e-5, atol=1e-5)  # unbatched


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [2, "same"], ids=["int", "same"])
def test_padding_mode_matches_nn(mode, padding):
    torch.manual_seed(0)
    for cls, ref_cls in CONVS:
        kwargs = {"kernel_size": 4, "padding": padding, "dilation": 2}
        layer, ref = cls(2, 3, **kwargs, padding_mode=mode), ref_cls(2, 3, **kwargs, padding_mode=mode)
        _frozen_at(layer, ref)
        x = torch.randn(2, 2, *SIZES[cls.spatial_dims])
        torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)
        assert f"padding_mode='{mode}'" in repr(layer)


@pytest.mark.parametrize("pair", [p for p in ALL if "Flipout" in p[0].__name__], ids=_ids)
def test_flipout_signs_per_example_and_channel(pair):
    """Copies of one example get different outputs; with one input channel and a constant
    image, the perturbation's sign is shared over the spatial positions (away from the borders)."""
    cls = pair[0]
    torch.manual_seed(0)
    layer = cls(1, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        layer.kernel_posterior.untransformed_scale.fill_(0.5)
    x = torch.ones(64, 1, *SIZES[cls.spatial_dims])
    out = layer(x)
    mean = layer._op(x, layer.kernel_posterior().mean, None)
    delta = (out - mean).flatten(2)  # (N, C_out, positions): one value per example and channel
    torch.testing.assert_close(delta, delta[..., :1].expand_as(delta))
    assert delta[:, :, 0].std(0).min() > 0


@pytest.mark.parametrize("pair", ALL, ids=_ids)
def test_kl_term_is_the_exact_kl(pair):
    """TFP's defaults: the kernel's KL only (a point-estimate bias without a prior); with a
    Gaussian bias posterior and prior, the bias's KL is added."""
    cls = pair[0]
    x = torch.randn(1, 2, *SIZES[cls.spatial_dims])
    layer = cls(2, 2, 3, kl_weight=0.5)
    layer(x)
    assert layer.bias_posterior.is_singular and layer.bias_prior is None
    kl = D.kl_divergence(layer.kernel_posterior(), layer.kernel_prior())
    torch.testing.assert_close(pl.collect_losses(layer), 0.5 * kl)
    layer = cls(2, 2, 3, kl_weight=0.5, bias_posterior_fn=pl.MeanFieldNormal, bias_prior_fn=pl.StandardNormal)
    layer(x)
    kl = D.kl_divergence(layer.kernel_posterior(), layer.kernel_prior())
    kl = kl + D.kl_divergence(layer.bias_posterior(), layer.bias_prior())
    torch.testing.assert_close(pl.collect_losses(layer), 0.5 * kl)


def test_old_import_path_and_pickles():
    assert reparameterization.Conv2dFlipout is pl.Conv2dFlipout
    assert reparameterization.Conv2dReparameterization is pl.Conv2dReparameterization
    with pytest.raises(AttributeError, match="Conv4d"):
        reparameterization.Conv4d  # noqa: B018
    layer = pl.ConvTranspose3dFlipout(2, 2, 2)
    again = pickle.loads(pickle.dumps(layer))
    assert type(again) is pl.ConvTranspose3dFlipout and again.kernel_shape == (2, 2, 2, 2, 2)


@pytest.mark.parametrize(
    "make,error,argument",
    [
        (lambda: pl.Conv1dFlipout(3, 4, (1, 2)), ValueError, "kernel_size"),
        (lambda: pl.Conv3dFlipout(3, 4, (1, 2)), ValueError, "kernel_size"),
        (lambda: pl.Conv3dFlipout(3, 4, 2.0), TypeError, "kernel_size"),
        (
            lambda: pl.Conv1dReparameterization(2, 4, 3, stride=2, dilation=2, padding="same"),
            ValueError,
            "padding",
        ),
        (lambda: pl.Conv1dReparameterization(2, 4, 3, padding=-1), ValueError, "padding"),
        (lambda: pl.Conv2dReparameterization(2, 4, 3, padding_mode="edge"), ValueError, "padding_mode"),
        (
            lambda: pl.ConvTranspose2dFlipout(2, 4, 3, stride=2, output_padding=2),
            ValueError,
            "output_padding",
        ),
        (lambda: pl.ConvTranspose1dReparameterization(2, 3, 3, groups=2), ValueError, "groups"),
        (lambda: pl.ConvTranspose3dReparameterization(2, 3, 3, dilation=0), ValueError, "dilation"),
    ],
)
def test_bad_constructor_arguments_are_named(make, error, argument):
    with pytest.raises(error, match=argument):
        make()


@pytest.mark.parametrize(
    "layer,x",
    [
        (pl.Conv1dFlipout(3, 2, 3), torch.randn(2, 4, 5)),
        (pl.Conv3dReparameterization(3, 2, 3), torch.randn(3, 5, 5)),
        (pl.ConvTranspose2dReparameterization(3, 2, 3), torch.randn(2, 2, 5, 5)),
    ],
    ids=["channels", "rank", "transposed"],
)
def test_bad_input_shape_is_named(layer, x):
    with pytest.raises(
        ValueError, match=rf"{type(layer).__name__}: expected input of shape.*{tuple(x.shape)}"
    ):
        layer(x)


def test_integer_likes_are_accepted():
    np = pytest.importorskip("numpy")
    layer = pl.Conv2dFlipout(np.int64(2), 3, (np.int64(3), 2), stride=torch.tensor(2), padding=np.int32(1))
    assert layer.kernel_size == (3, 2) and layer.stride == (2, 2) and layer.padding == (1, 1)
    assert all(type(v) is int for v in (*layer.kernel_size, *layer.stride, *layer.padding, layer.in_channels))
    with pytest.raises(TypeError, match="stride"):
        pl.ConvTranspose1dFlipout(2, 2, 3, stride=1.5)


def _point_mass(cls, *args, **kwargs):
    """A reparameterization conv layer whose kernel and bias are their posterior means."""
    singular = pl.default_mean_field_normal_fn(is_singular=True)
    return cls(*args, kernel_posterior_fn=singular, bias_posterior_fn=singular, **kwargs)


@pytest.mark.parametrize(
    ("cls", "conv", "kernel", "padding", "shape"),
    [
        (pl.Conv1dReparameterization, nn.Conv1d, 4, "same", (2, 2, 9)),  # even kernel: uneven pads
        (pl.Conv2dReparameterization, nn.Conv2d, (3, 5), (1, 2), (2, 2, 7, 8)),  # per-axis pads
        (pl.Conv2dReparameterization, nn.Conv2d, (2, 4), "same", (2, 2, 7, 8)),
    ],
)
def test_padding_modes_match_torch_conv(cls, conv, kernel, padding, shape):
    torch.manual_seed(0)
    layer = _point_mass(cls, 2, 3, kernel, padding=padding, padding_mode="reflect")
    reference = conv(2, 3, kernel, padding=padding, padding_mode="reflect")
    with torch.no_grad():
        reference.weight.copy_(layer.kernel_posterior().mean)
        reference.bias.copy_(layer.bias_posterior().mean)
    x = torch.randn(shape)
    torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("size", [7, 8])
def test_same_padding_at_a_stride_is_tfs(size):
    # TF's "same" at stride 2: ceil(n / 2) outputs, the odd padding after (TFP's
    # Convolution2DFlipout(6, 5, strides=2, padding="same") on 8x8 gave (2, 4, 4, 6)); torch
    # refuses it.
    torch.manual_seed(0)
    layer = pl.Conv2dReparameterization(2, 6, 3, stride=2, padding="same")
    x = torch.randn(2, 2, size, size)
    torch.manual_seed(1)
    out = layer(x)
    assert out.shape == (2, 6, (size + 1) // 2, (size + 1) // 2)
    total = max(((size + 1) // 2 - 1) * 2 + 3 - size, 0)
    padded = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    torch.manual_seed(1)
    kernel = layer.kernel_posterior(x).rsample()
    bias = layer.bias_posterior(x).rsample() if layer.bias_posterior is not None else None
    torch.testing.assert_close(out, F.conv2d(padded, kernel, bias, stride=2))
    with pytest.raises(ValueError, match="needs dilation 1"):
        pl.Conv2dFlipout(2, 6, 3, stride=2, dilation=2, padding="same")
