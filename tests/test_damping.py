"""The Levenberg-Marquardt rule with explicitly written expected values."""

from __future__ import annotations

import math

import pytest

from hfft.optim.damping import adapt_damping, reduction_ratio


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
