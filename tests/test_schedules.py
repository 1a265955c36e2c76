"""Learning-rate schedules (problayers.train.schedules): their shape over a run, and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from problayers.train.schedules import LR_SCHEDULES, make_scheduler


def rates(name: str, total: int, lr: float = 1e-3) -> tuple[list[float], torch.optim.Optimizer]:
    """The learning rate used by each of ``total`` optimizer steps."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = make_scheduler(name, optimizer, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out, optimizer


def test_constant_is_no_scheduler():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    assert make_scheduler("constant", optimizer, 10) is None
    assert rates("constant", 5)[0] == [1e-3] * 5


def test_cosine_warms_up_then_decays_to_zero():
    lrs, _ = rates("cosine", 200)
    warmup = 10  # 5% of 200
    assert lrs[0] == pytest.approx(1e-3 / 25)
    assert all(a < b for a, b in itertools.pairwise(lrs[: warmup + 1]))  # rising
    assert lrs[warmup] == pytest.approx(1e-3)  # the peak
    assert all(a >= b for a, b in itertools.pairwise(lrs[warmup:]))  # then falling
    # halfway through the decay the cosine is at half the peak; the last step is near 0
    assert lrs[warmup + 95] == pytest.approx(0.5e-3, rel=1e-6)
    assert lrs[-1] < 1e-6


def test_wsd_warms_up_holds_then_decays_linearly_to_zero():
    lrs, _ = rates("wsd", 200)
    assert lrs[0] == pytest.approx(1e-3 / 25)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # warm-up: 5% of 200 steps
    assert lrs[10:160] == pytest.approx([1e-3] * 150)  # stable until the last 20%
    decay = lrs[160:]
    assert all(a > b for a, b in itertools.pairwise(decay))
    steps = [a - b for a, b in itertools.pairwise(decay)]
    assert steps == pytest.approx([1e-3 / 40] * 39)  # linear: 40 steps to 0
    assert lrs[-1] == pytest.approx(1e-3 / 40)  # the last step's rate; 0 after it


def test_onecycle_peaks_at_30_percent_and_keeps_adams_betas():
    lrs, optimizer = rates("onecycle", 100)
    assert lrs[0] == pytest.approx(1e-3 / 25)
    peak = max(range(100), key=lrs.__getitem__)
    assert abs(peak - 29) <= 1 and lrs[peak] == pytest.approx(1e-3, rel=1e-3)
    assert lrs[-1] == pytest.approx(1e-3 / 2.5e5, rel=0.05)  # (lr / 25) / 1e4, as the doc says
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # cycle_momentum=False


def test_registry_names():
    assert set(LR_SCHEDULES) == {"constant", "cosine", "onecycle", "wsd"}


@pytest.mark.parametrize(
    "name, total, match",
    [("linear", 10, r"^lr_schedule"), ("cosine", 0, r"^total_steps"), ("cosine", 2.5, r"^total_steps")],
)
def test_errors_name_the_argument(name, total, match):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        make_scheduler(name, optimizer, total)
    with pytest.raises(TypeError, match=r"^optimizer: expected a torch.optim.Optimizer, got str"):
        make_scheduler("cosine", "adam", 10)


@pytest.mark.parametrize("total, expected", [(1, [0.0]), (2, [0.81, 0.0])])
def test_onecycle_over_very_few_steps_is_what_the_docstring_says(total, expected):
    lrs, _ = rates("onecycle", total)
    assert [lr / 1e-3 for lr in lrs] == pytest.approx(expected, abs=0.01)


def test_scheduler_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    from problayers.train.checkpoint import load_checkpoint, save_checkpoint

    for name in ("cosine", "onecycle", "wsd"):
        lrs, _ = rates(name, 40)
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = make_scheduler(name, optimizer, 40)
        for _ in range(15):
            optimizer.step()
            scheduler.step()
        save_checkpoint(tmp_path / "s.pt", {"s": scheduler.state_dict(), "o": optimizer.state_dict()})
        state = load_checkpoint(tmp_path / "s.pt")
        model2 = torch.nn.Linear(2, 1)
        optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
        scheduler2 = make_scheduler(name, optimizer2, 40)
        optimizer2.load_state_dict(state["o"])
        scheduler2.load_state_dict(state["s"])
        assert math.isclose(optimizer2.param_groups[0]["lr"], lrs[15], rel_tol=1e-12)


@pytest.mark.parametrize("name", ["cosine", "wsd"])
def test_decaying_schedules_stay_at_zero_past_the_end(name):
    # Neither rises again (cosine) nor goes negative (wsd: gradient ascent) if stepped past total.
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    scheduler = make_scheduler(name, optimizer, 10)
    after = []
    for step in range(1, 16):
        optimizer.step()
        scheduler.step()
        if step >= 10:
            after.append(optimizer.param_groups[0]["lr"])
    assert after == pytest.approx([0.0] * 6, abs=1e-12)
