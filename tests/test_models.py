"""The VAE container, the registry, and the seed architecture."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributions as D

import problayers as pl
from problayers.vae.models import MODELS, ModelConfig, build_model, register_model, registry, vae_loss


def test_seed_shapes_forward_backward():
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    q = model.encode(x)
    assert isinstance(q, D.MultivariateNormal) and q.batch_shape == (5,) and q.event_shape == (16,)
    rv_x = model(x)
    assert isinstance(rv_x, D.Independent) and rv_x.batch_shape == (5,) and rv_x.event_shape == (1, 28, 28)
    assert model.decode(torch.randn(7, 16)).batch_shape == (7,)
    loss, metrics = vae_loss(model, x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert set(metrics) == {"recon", "kl"} and metrics["kl"] > 0
    assert model.prior().event_shape == (16,)


def test_vae_loss_is_nll_plus_weighted_kl():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    model = build_model(ModelConfig(beta=2.5, exact_kl=True))
    loss, metrics = vae_loss(model, x)
    q = model.encode(x)
    exact = D.kl_divergence(q, model.prior()).mean()
    torch.testing.assert_close(metrics["kl"], 2.5 * exact)
    torch.testing.assert_close(loss, metrics["recon"] + metrics["kl"])


def test_options_change_the_architecture():
    model = build_model(ModelConfig(latent_size=4, base_depth=8))
    assert model.encode(torch.zeros(2, 1, 28, 28)).event_shape == (4,)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in build_model(ModelConfig()).parameters()
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "nope"}, "name: expected a registered model"),
        ({"latent_size": 0}, "latent_size"),
        ({"base_depth": 2.5}, "base_depth"),
        ({"beta": -1.0}, "beta"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_registry():
    assert "seed" in MODELS
    with pytest.raises(ValueError, match="already registered"):
        register_model("seed")(lambda cfg: None)
    # a misspelt field was accepted, to fail later in ModelConfig; a builder's None was a model
    with pytest.raises(
        ValueError, match=r"register_model\('x'\): \['hiddn_size'\] are not ModelConfig fields"
    ):
        register_model("x", hiddn_size=3)
    with pytest.raises(ValueError, match=r"\['hiddn'\] are not ModelConfig fields"):
        register_model("x", fields={"hiddn"})
    register_model("returns-none")(lambda cfg: None)
    try:
        with pytest.raises(
            TypeError, match="model 'returns-none': its builder returned a NoneType, expected a VAE"
        ):
            build_model(ModelConfig(name="returns-none"))
    finally:
        for table in (MODELS, registry.MODEL_DEFAULTS, registry.MODEL_FIELDS):
            table.pop("returns-none")
    with pytest.raises(
        ValueError,
        match=r"got 'mine' \(a model of your own: import its module first; problayers COMMAND --import",
    ):
        ModelConfig(name="mine")


def test_model_skeleton_has_the_models_state_dict_without_memory():
    """The shapes a file's weights are checked against before the model is built (hostile-files
    audit); a user's builder that reads values while it builds (``.item()``, as torch's
    orthogonal parametrization) is built for real (diff review: loading its runs crashed)."""
    from problayers.vae.models import model_skeleton

    for name in ("seed", "mlp", "hvae", "resnet"):
        cfg = ModelConfig.for_model(name)
        want = {k: v.shape for k, v in build_model(cfg).state_dict().items() if isinstance(v, torch.Tensor)}
        skeleton = model_skeleton(cfg).state_dict()
        assert {k: v.shape for k, v in skeleton.items() if isinstance(v, torch.Tensor)} == want, name
        assert all(v.is_meta for v in skeleton.values() if isinstance(v, torch.Tensor)), name

    @register_model("reads-values")
    def reads_values(cfg):
        model = build_model(ModelConfig(latent_size=cfg.latent_size))
        next(model.decoder.parameters()).detach().numpy()  # a TypeError on meta (re-review)
        model.decoder[0] = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(2, 2))
        return model

    try:
        cfg = ModelConfig(name="reads-values", latent_size=2)
        assert not any(v.is_meta for v in model_skeleton(cfg).state_dict().values())
    finally:
        for table in (MODELS, registry.MODEL_DEFAULTS, registry.MODEL_FIELDS):
            table.pop("reads-values")


def test_seed_written_with_library_layers():
    model = build_model(ModelConfig())
    assert isinstance(model.encoder[-1], pl.MultivariateNormalTriL)
    assert isinstance(model.encoder[-1].activity_regularizer, pl.KLDivergenceRegularizer)
    assert isinstance(model.decoder[-1], pl.IndependentBernoulli)


def test_keras_init_glorot_weights_zero_biases():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_size=4, base_depth=8, init="keras"))
    layers = [
        m
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    assert len(layers) == 13  # encoder: 5 convs + linear; decoder: 6 transposed convs + conv
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.8 * bound  # uniform over the whole range, not smaller
    torch.manual_seed(0)
    default = build_model(ModelConfig(latent_size=4, base_depth=8))
    assert any(torch.count_nonzero(m.bias) > 0 for m in default.modules() if isinstance(m, torch.nn.Linear))


def test_he_init_gains_and_activation_scale():
    torch.manual_seed(0)
    model = build_model(ModelConfig(init="he"))
    enc, dec = model.encoder, model.decoder
    # (layer, its true fan-in, gain): before a LeakyReLU(0.2) sqrt(2 / 1.04), else 1
    leaky = (2.0 / (1 + 0.2**2)) ** 0.5
    cases = [(enc[1], 1 * 25, leaky), (enc[9], 2 * 32 * 49, leaky), (enc[12], 64, 1.0)]
    cases += [(dec[1], 16 * 49, leaky), (dec[3], 64 * 25, leaky), (dec[13], 32 * 25, 1.0)]
    for layer, fan_in, gain in cases:
        assert torch.count_nonzero(layer.bias) == 0
        expected = gain / fan_in**0.5
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.1 if fan_in > 100 else 0.3)
    # The point of it: PyTorch's default initialization shrinks the encoder's activations
    # layer after layer (0.4x to 0.6x per layer here); He's keeps their scale.
    x = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3))

    def feature_std(m):
        h = enc[0](x)
        for layer in list(m.encoder)[1:12]:
            h = layer(h)
        return h.std().item()  # after the 5th convolution and its activation

    torch.manual_seed(0)
    default = build_model(ModelConfig())
    assert feature_std(model) > 0.3 and feature_std(default) < 0.05


def test_init_errors_and_old_configs_without_init():
    with pytest.raises(ValueError, match=r"^init"):
        ModelConfig(init="glorot")
    assert ModelConfig(
        **{"name": "seed", "latent_size": 16, "base_depth": 32, "beta": 1.0, "exact_kl": False}
    ) == (ModelConfig())


def test_saved_configs_before_tril_order_keep_the_row_order():
    from problayers.vae.models import ModelConfig, build_model

    new = ModelConfig()
    assert new.tril_order == "tfp"  # new models read their scale as TFP does
    old = ModelConfig.from_dict({"name": "seed", "latent_size": 2, "base_depth": 4})  # a 0.1 config
    assert old.tril_order == "rows"
    assert ModelConfig.from_dict(dataclasses.asdict(new)) == new
    assert build_model(old).encoder[-1].tril_order == "rows"
    # the zoo came after tril_order: a config of a zoo model without it is not given the seed's
    assert ModelConfig.from_dict({"name": "mlp", "latent_size": 4}).tril_order == "tfp"
    with pytest.raises(ValueError, match="tril_order"):
        ModelConfig(tril_order="cols")


def test_seed_is_the_tfp_examples_architecture():
    # TFP's example: the encoder sees x - 0.5, every hidden activation is LeakyReLU(0.2), and the
    # KL regularizer is Monte Carlo unless exact_kl is asked for.
    model = build_model(ModelConfig())
    shift = model.encoder[0]
    assert type(shift).__name__ == "Shift" and shift.offset == -0.5
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.2}
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in model.modules()) == 11  # 5 + 6
    assert model.regularizer.use_exact_kl is False and model.regularizer.weight == 1.0
    exact = build_model(ModelConfig(exact_kl=True, beta=0.5)).regularizer
    assert exact.use_exact_kl is True and exact.weight == 0.5


def test_zoo_models_weight_the_kl_by_beta():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    model = build_model(ModelConfig.for_model("mlp", beta=2.5, latent_size=4, hidden_size=16))
    _, metrics = vae_loss(model, x)
    exact = D.kl_divergence(model.encode(x), model.prior()).mean()
    torch.testing.assert_close(metrics["kl"], 2.5 * exact)


def test_he_init_takes_the_gain_of_the_leaky_slope_that_follows():
    # gain sqrt(2 / (1 + a^2)): 1.051 for a = 0.9, against ReLU's 1.414 and a linear layer's 1.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(500, 400), torch.nn.LeakyReLU(0.9), torch.nn.Linear(400, 300))
    registry.INITS["he"](net)
    assert net[0].weight.std().item() == pytest.approx((2 / 1.81) ** 0.5 / 500**0.5, rel=0.02)
    assert net[2].weight.std().item() == pytest.approx(1 / 400**0.5, rel=0.02)
