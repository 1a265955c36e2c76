"""EMA weight averaging: the update rule (against torch's AveragedModel), buffers, state, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from problayers.train.averaging import EMA


def small_model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(model, generator):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))


def test_matches_torch_averaged_model_with_the_warmed_up_decay():
    """torch's AveragedModel with an avg_fn of the same warmed-up decay is the reference."""
    torch.manual_seed(0)
    model, decay = small_model(), 0.9

    def reference_fn(avg, p, n):  # n: updates before this one, as EMA.updates
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        return d * avg + (1 - d) * p

    ours = EMA(model, decay)
    ref = AveragedModel(model, avg_fn=reference_fn)
    g = torch.Generator().manual_seed(1)
    for _ in range(120):  # the warm-up decay until n = 80, then 0.9
        perturb(model, g)
        ours.update(model)
        ref.update_parameters(model)
    assert ours.updates == 120
    for a, b in zip(ours.module.parameters(), ref.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_decay_binds_after_the_warm_up():
    model = nn.Linear(2, 1)
    ema = EMA(model, 0.5)
    assert ema.current_decay() == 0.0  # the first update copies the weights
    ema.updates = 1
    assert ema.current_decay() == pytest.approx(2 / 11)  # (1 + 1) / (10 + 1)
    ema.updates = 100
    assert ema.current_decay() == 0.5
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.module.weight.data.fill_(0.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, torch.full_like(model.weight, 0.5))


def test_a_model_of_other_shapes_is_named():
    ema = EMA(nn.Linear(4, 2), 0.9)
    with pytest.raises(
        ValueError, match=r"^model: parameter 0: expected the averaged model's shape \(2, 4\), got \(2, 5\)"
    ):
        ema.update(nn.Linear(5, 2))


def test_first_update_copies_and_buffers_follow_the_model():
    torch.manual_seed(0)
    model = small_model()
    ema = EMA(model, 0.99)
    perturb(model, torch.Generator().manual_seed(0))
    model.train()(torch.randn(8, 3))  # changes BatchNorm's running statistics
    ema.update(model)
    for a, b in zip(ema.module.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_state_dict_round_trip():
    model = small_model()
    ema = EMA(model, 0.95)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        perturb(model, g)
        ema.update(model)
    other = EMA(small_model(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert (other.updates, other.decay) == (3, 0.95)
    for a, b in zip(other.state_dict().values(), ema.state_dict().values(), strict=True):
        assert a == b if isinstance(a, dict) else torch.equal(a, b)


def test_the_average_is_less_noisy_than_the_last_iterate():
    """Noisy SGD on ``(w - 1)^2`` at a constant step is an AR(1) process around 1 (coefficient
    0.8, standard deviation about 0.8); an EMA over ~100 steps should be about 5x closer
    (variance ratio (1 - d) / (1 + d) * (1 + 0.8) / (1 - 0.8)); asserted: 3x (seeded)."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    ema = EMA(model, 0.99)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    errors = []
    for step in range(3000):
        opt.zero_grad()
        ((model.weight - 1.0) ** 2).sum().add(model.weight.sum() * torch.randn(()) * 5).backward()
        opt.step()
        ema.update(model)
        if step >= 1000:
            errors.append(((model.weight - 1).abs().item(), (ema.module.weight - 1).abs().item()))
    online, averaged = (sum(e) / len(e) for e in zip(*errors, strict=True))
    assert averaged < online / 3


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5, True, "0.9", None])
def test_decay_must_be_in_the_open_unit_interval(decay):
    with pytest.raises(ValueError, match=r"^decay: expected a number in \(0, 1\)"):
        EMA(nn.Linear(2, 1), decay)


def test_update_with_another_architecture_is_an_error():
    ema = EMA(nn.Linear(2, 1), 0.9)
    with pytest.raises(ValueError, match=r"^model: expected the averaged model's 2 parameters, got 4"):
        ema.update(nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 1)))


def test_an_average_of_weight_normed_layers_is_not_initialized_again():
    # The EMA is made before the model's first forward (as Trainer(averaged=...) is used): its
    # WeightNorm gets the initialized flag from the model's buffer, and its first forward must
    # not run the data-dependent init over the averaged g and bias.
    import problayers as pl

    torch.manual_seed(0)
    model = nn.Sequential(pl.WeightNorm(nn.Linear(3, 4), data_init=True), nn.Linear(4, 2))
    ema = EMA(model, 0.9)
    model(torch.randn(64, 3))  # the model's own data-dependent init
    ema.update(model)  # the first update copies the weights
    x = torch.randn(8, 3) * 5 + 2  # another distribution: an init here would change g and the bias
    torch.testing.assert_close(ema.module(x), model(x))
    torch.testing.assert_close(ema.module[0].g, model[0].g)
