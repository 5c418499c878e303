"""The Levenberg-Marquardt rule with explicitly written expected values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hfft import HessianFree
from hfft.optim.damping import (
    MAX_DAMPING_FACTOR,
    adapt_damping,
    adapt_radius,
    raise_damping,
    reduction_ratio,
)
from hfft.optim.flat import flatten


@pytest.mark.parametrize(
    ("rho", "expected"),
    [
        (-1.0, 1.5),
        (0.0, 1.5),
        (0.2499, 1.5),
        (0.25, 1.0),
        (0.5, 1.0),
        (0.75, 1.0),
        (0.7501, 2 / 3),
        (2.0, 2 / 3),
        (-math.inf, 1.5),
    ],
    ids=lambda v: f"{v}",
)
def test_lm_rule(rho: float, expected: float) -> None:
    assert adapt_damping(1.0, rho) == pytest.approx(expected)


def test_lm_rule_scales_with_damping() -> None:
    assert adapt_damping(4.0, 0.0) == pytest.approx(6.0)
    assert adapt_damping(3.0, 1.0) == pytest.approx(2.0)


def test_reduction_ratio() -> None:
    assert reduction_ratio(f_new=0.5, f_old=1.0, q_new=-1.0) == pytest.approx(0.5)
    assert reduction_ratio(f_new=1.5, f_old=1.0, q_new=-1.0) == pytest.approx(-0.5)
    assert reduction_ratio(f_new=0.5, f_old=1.0, q_new=0.0) == -math.inf
    assert reduction_ratio(f_new=math.nan, f_old=1.0, q_new=-1.0) == -math.inf


def test_non_positive_damping_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        adapt_damping(0.0, 0.5)


def test_lm_rule_stops_growing_at_its_upper_end() -> None:
    assert adapt_damping(8.0, -1.0, upper=10.0) == 10.0
    assert adapt_damping(10.0, -1.0, upper=10.0) == 10.0
    assert adapt_damping(10.0, 1.0, upper=10.0) == pytest.approx(20 / 3)
    assert raise_damping(50.0, upper=10.0) == 10.0  # a λ above the cap comes down to it
    assert raise_damping(2.0) == 3.0


def _conflicting_steps(steps: int, **options: float) -> tuple[list, torch.Tensor, torch.Tensor]:
    """HF where B̄'s targets are the negation of B's: every step fitted to B raises
    the loss on B̄ (ρ < 0), so only the damping rule decides what happens."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 1.0
    opt = HessianFree(model.parameters(), cg_max_iter=10, **options)
    before = flatten(model.parameters()).clone()
    records = [opt.step(model, nn.MSELoss(), (x, y), (x, -y)) for _ in range(steps)]
    return records, before, flatten(model.parameters())


def test_damping_stays_bounded_while_rho_stays_negative_for_hundreds_of_steps() -> None:
    records, before, after = _conflicting_steps(300)
    assert all(r.rho < 0 for r in records)
    assert max(r.next_damping for r in records) == pytest.approx(MAX_DAMPING_FACTOR)
    assert not any(r.accepted for r in records)
    assert torch.equal(before, after)
    for r in records:
        assert r.cg_stop_reason != "non-finite"
        numbers = (r.loss_before, r.loss_after, r.damping, r.next_damping, r.cg_q, r.rho)
        assert all(math.isfinite(v) for v in numbers), r
    # without the cap, the same 300 steps drive λ past float32's range (3.4e38): the
    # products (C + λI)v overflow, which is what a user's run saw
    unbounded, _, _ = _conflicting_steps(300, max_damping=math.inf)
    assert max(r.damping for r in unbounded) > 1e38


def test_max_damping_below_damping_is_refused() -> None:
    with pytest.raises(ValueError, match="max_damping must be at least damping"):
        HessianFree(nn.Linear(2, 1).parameters(), damping=2.0, max_damping=1.0)


@pytest.mark.parametrize(
    ("rho", "at_boundary", "expected"),
    [(-1.0, True, 0.5), (0.1, False, 0.5), (0.5, True, 2.0), (0.9, True, 4.0), (0.9, False, 2.0)],
    ids=["rho<0", "rho<1/4", "rho-middle", "rho>3/4-boundary", "rho>3/4-inside"],
)
def test_trust_region_rule(rho: float, at_boundary: bool, expected: float) -> None:
    assert adapt_radius(2.0, rho, at_boundary) == expected


def test_non_positive_radius_rejected() -> None:
    with pytest.raises(ValueError, match="radius"):
        adapt_radius(0.0, 0.5, True)
