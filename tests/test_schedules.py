"""Learning-rate schedules of the SGD baselines, with explicitly written values."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from hfft.experiment.strategies.registry import entries
from hfft.experiment.strategies.schedules import (
    Plateau,
    Schedule,
    constant,
    cosine,
    div10,
    make_schedule,
)


@pytest.mark.parametrize(
    ("name", "values"),
    [
        # f = 0, 0.25, 0.5, 1, 1.2 (a step may overrun the budget)
        ("constant", [0.1, 0.1, 0.1, 0.1, 0.1]),
        ("div10", [0.01, 0.01, 0.01, 0.01, 0.01]),
        ("cosine", [0.1, 0.1 * (2 + math.sqrt(2)) / 4, 0.05, 0.0, 0.0]),
    ],
)
def test_schedule_values(name: str, values: list[float]) -> None:
    schedule = make_schedule(name, 0.1, evaluations=20)
    got = [schedule(f) for f in (0.0, 0.25, 0.5, 1.0, 1.2)]
    assert got == pytest.approx(values, abs=1e-15)


def test_cosine_ends_at_exactly_zero() -> None:
    assert cosine(0.1)(1.0) == 0.0
    assert cosine(0.1)(0.0) == 0.1
    assert cosine(0.1)(-0.5) == 0.1


@pytest.mark.parametrize("factory", [constant, div10, cosine])
@pytest.mark.parametrize("lr", [0.0, -0.1, math.inf, math.nan])
def test_schedules_reject_bad_lr(factory: Callable[[float], Schedule], lr: float) -> None:
    with pytest.raises(ValueError, match="learning rate must be positive"):
        factory(lr)


def test_make_schedule() -> None:
    assert isinstance(make_schedule("plateau", 0.1, 20), Plateau)
    with pytest.raises(ValueError, match="use one of constant, div10, cosine, plateau"):
        make_schedule("sgd-cosine", 0.1, 20)
    named = [e.settings["schedule"] for e in entries() if "schedule" in e.settings]
    assert named == ["constant", "div10", "cosine", "plateau"]  # one entry for each
    for name in named:
        assert make_schedule(name, 0.1, 20)(0.0) > 0


@pytest.mark.parametrize(
    ("evaluations", "max_drops", "patience"),
    [
        # (evaluations − 1) // max_drops − 1, at least 0
        (20, 3, 5),  # drops at 7, 13, 19 ≤ 20
        (19, 3, 5),  # 19 ≤ 19
        (18, 3, 4),  # drops at 6, 11, 16 (patience 5 would need 19)
        (21, 3, 5),
        (22, 3, 6),  # drops at 8, 15, 22
        (10, 3, 2),  # drops at 4, 7, 10
        (4, 3, 0),  # drops at 2, 3, 4
        (2, 3, 0),
        (1, 1, 0),
        (20, 1, 18),  # one drop at 20
    ],
)
def test_plateau_patience(evaluations: int, max_drops: int, patience: int) -> None:
    plateau = Plateau(0.1, evaluations, max_drops=max_drops)
    assert plateau.patience == patience
    # With a loss that never improves after the first observation, the last
    # drop happens at observation 1 + max_drops · (patience + 1): it fits
    # (unless even patience 0 cannot fit), and one more patience would not.
    assert 1 + max_drops * (patience + 1) <= evaluations or patience == 0
    assert 1 + max_drops * (patience + 2) > evaluations


def _drops_at(plateau: Plateau, losses: list[float]) -> list[int]:
    """The 1-based observations at which the rate dropped."""
    out = []
    for i, loss in enumerate(losses, start=1):
        before = plateau.lr
        plateau.observe(loss)
        if plateau.lr < before:
            out.append(i)
    return out


def test_plateau_flat_loss_drops_at_7_13_19() -> None:
    plateau = Plateau(0.1, evaluations=20)
    lrs = [plateau.observe(1.0) for _ in range(21)]
    assert lrs == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001] * 6 + [1e-4] * 3)
    assert plateau.to_dict()["drops"] == 3
    assert plateau.lr == pytest.approx(1e-4)


def test_plateau_improving_loss_never_drops() -> None:
    plateau = Plateau(0.1, evaluations=20)
    assert _drops_at(plateau, [1.0 - 0.01 * i for i in range(20)]) == []
    assert plateau.lr == 0.1


def test_plateau_improvement_resets_patience() -> None:
    plateau = Plateau(0.1, evaluations=20)  # patience 5
    losses = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5] + [0.5] * 14
    # The improvement at 6 restarts the count: drops at 12 and 18.
    assert _drops_at(plateau, losses) == [12, 18]


def test_plateau_threshold_is_relative() -> None:
    plateau = Plateau(0.1, evaluations=4, threshold=0.1)  # patience 0
    # 0.95 is not below 1.0 · (1 − 0.1): no improvement, drop at once.
    assert plateau.observe(1.0) == 0.1
    assert plateau.observe(0.95) == pytest.approx(0.01)
    # 0.85 < 0.9 improves.
    assert plateau.observe(0.85) == pytest.approx(0.01)


def test_plateau_nan_is_no_improvement() -> None:
    plateau = Plateau(0.1, evaluations=4)  # patience 0
    assert _drops_at(plateau, [1.0, math.nan, 0.5, math.inf]) == [2, 4]


def test_plateau_state() -> None:
    plateau = Plateau(0.1, evaluations=20)
    assert plateau.to_dict()["best"] is None
    for loss in (2.0, 1.0, 1.5):
        plateau.observe(loss)
    record = plateau.to_dict()
    assert record == {
        "lr": 0.1,
        "initial_lr": 0.1,
        "factor": 0.1,
        "patience": 5,
        "max_drops": 3,
        "threshold": 1e-4,
        "evaluations": 20,
        "best": 1.0,
        "bad_evaluations": 1,
        "drops": 0,
    }
    json.dumps(record)
    assert plateau(0.7) == 0.1  # also a schedule of the fraction


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "learning rate"),
        ({"evaluations": 0}, "evaluations"),
        ({"factor": 1.0}, "factor"),
        ({"factor": 0.0}, "factor"),
        ({"max_drops": 0}, "max_drops"),
        ({"threshold": -0.1}, "threshold"),
    ],
)
def test_plateau_rejects(kwargs: dict[str, float], message: str) -> None:
    arguments = {"lr": 0.1, "evaluations": 20, **kwargs}
    with pytest.raises(ValueError, match=message):
        Plateau(**arguments)  # type: ignore[arg-type]
