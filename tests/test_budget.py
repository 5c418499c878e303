"""Budgets: parsing, resolution of percentages, the pausable clock, evaluation points."""

from __future__ import annotations

import pytest

from hfft.experiment.run.budget import (
    Budget,
    BudgetClock,
    evaluation_fractions,
    parse_budget,
    parse_duration,
    resolve_budget,
)


class FakeTime:
    """A clock that moves only when told, counting how often it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("600", 600.0),
        ("600s", 600.0),
        ("600 s", 600.0),
        ("45sec", 45.0),
        ("10m", 600.0),
        ("90min", 5400.0),
        ("2 minutes", 120.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (".5h", 1800.0),
        ("2 hours", 7200.0),
        ("2h30m", 9000.0),
        ("1h 30m 15s", 5415.0),
        ("1m30s", 90.0),
        ("1H", 3600.0),
        (" 12.5 ", 12.5),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "10 parsecs", "10ms", "2h30", "30m2h", "-5", "1e3", "inf", "1h1h"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not understood; use seconds \(600 or 600s\)") as err:
        parse_duration(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("text", ["0", "0s", "0h0m"])
def test_parse_duration_rejects_zero(text: str) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "budget", "shown"),
    [
        ("10%", Budget("percent", 10.0), "10%"),
        ("12.5 %", Budget("percent", 12.5), "12.5%"),
        ("150%", Budget("percent", 150.0), "150%"),
        ("600s", Budget("seconds", 600.0), "600 s"),
        ("10m", Budget("seconds", 600.0), "600 s"),
        ("1h", Budget("seconds", 3600.0), "3600 s"),
        ("2h30m", Budget("seconds", 9000.0), "9000 s"),
        ("200steps", Budget("steps", 200.0), "200 steps"),
        ("200 steps", Budget("steps", 200.0), "200 steps"),
        ("1step", Budget("steps", 1.0), "1 step"),
        ("3epochs", Budget("epochs", 3.0), "3 epochs"),
        ("0.5epochs", Budget("epochs", 0.5), "0.5 epochs"),
        ("1 epoch", Budget("epochs", 1.0), "1 epoch"),
        ("2 Epochs", Budget("epochs", 2.0), "2 epochs"),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_parse_budget(text: str, budget: Budget, shown: str) -> None:
    assert parse_budget(text) == budget
    assert str(budget) == shown


@pytest.mark.parametrize("text", ["10", " 2.5 ", "600"])
def test_a_bare_number_is_no_budget(text: str) -> None:
    # "10" could be seconds, a percentage, steps or epochs: the user must say which
    with pytest.raises(ValueError, match=r"has no unit; write .*%.*s, .*steps or .*epochs"):
        parse_budget(text)


def test_parse_budget_message_lists_the_forms() -> None:
    expected = (
        "budget '10 parsecs' is not understood; use a percentage of the training time (10%), "
        "a duration (600s, 10m, 1h), optimizer steps (200steps) or epochs (3epochs)"
    )
    with pytest.raises(ValueError) as err:
        parse_budget("10 parsecs")
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0%", "must be positive"),
        ("0s", "must be positive"),
        ("0 steps", "must be positive"),
        ("0epochs", "must be positive"),
        ("1.5steps", "whole number of steps"),
        ("-10%", "is not understood"),
        ("steps", "is not understood"),
    ],
)
def test_parse_budget_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_budget(text)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("minutes", 1.0),
        ("seconds", 0.0),
        ("seconds", -1.0),
        ("epochs", float("inf")),
        ("steps", 2.5),
    ],
)
def test_budget_validates(kind: str, value: float) -> None:
    with pytest.raises(ValueError):
        Budget(kind, value)


def test_resolve_budget() -> None:
    assert resolve_budget(Budget("percent", 10.0), 7200.0) == Budget("seconds", 720.0)
    assert resolve_budget(Budget("percent", 150.0), 100.0) == Budget("seconds", 150.0)
    for budget in (Budget("seconds", 60.0), Budget("steps", 5.0), Budget("epochs", 2.0)):
        assert resolve_budget(budget, None) is budget


def test_resolve_budget_needs_training_time() -> None:
    expected = (
        "budget 10% needs the original training time, which is unknown for this checkpoint; "
        "pass --train-time (e.g. --train-time 2h) or give an absolute budget such as 600s or "
        "200steps"
    )
    with pytest.raises(ValueError) as err:
        resolve_budget(Budget("percent", 10.0), None)
    assert str(err.value) == expected
    with pytest.raises(ValueError, match="training time must be positive"):
        resolve_budget(Budget("percent", 10.0), 0.0)


def test_evaluation_fractions() -> None:
    assert evaluation_fractions(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert evaluation_fractions(1) == [0.0, 1.0]
    fractions = evaluation_fractions()
    assert len(fractions) == 21
    assert (fractions[0], fractions[10], fractions[-1]) == (0.0, 0.5, 1.0)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            evaluation_fractions(bad)  # type: ignore[arg-type]


def test_clock_counts_only_running_time() -> None:
    now = FakeTime()
    clock = BudgetClock(Budget("seconds", 10.0), time_fn=now)
    assert not clock.running
    now.now = 5.0
    assert clock.seconds == 0.0  # starts paused
    clock.resume()
    now.now = 8.0
    assert clock.seconds == 3.0  # the current interval counts
    now.now = 10.0
    clock.pause()
    now.now = 100.0  # an evaluation, not charged
    assert clock.seconds == 5.0
    clock.resume()
    now.now = 102.0
    assert clock.seconds == 7.0
    assert clock.fraction == pytest.approx(0.7)
    assert not clock.exhausted
    now.now = 105.0
    assert clock.fraction == 1.0
    assert clock.exhausted
    now.now = 110.0
    assert clock.fraction == 1.5  # may overrun


def test_clock_syncs_before_reading_time() -> None:
    now = FakeTime()
    calls: list[int] = []
    clock = BudgetClock(Budget("seconds", 1.0), time_fn=now, sync=lambda: calls.append(now.reads))
    clock.resume()
    _ = clock.seconds
    clock.pause()
    _ = clock.seconds  # paused: the time is not read
    assert calls == [0, 1, 2]
    assert now.reads == 3


def test_clock_misuse() -> None:
    clock = BudgetClock(Budget("steps", 1.0), time_fn=FakeTime())
    with pytest.raises(RuntimeError, match="not running"):
        clock.pause()
    clock.resume()
    with pytest.raises(RuntimeError, match="already running"):
        clock.resume()
    with pytest.raises(ValueError, match="samples"):
        clock.step_done(-1)


def test_clock_steps() -> None:
    clock = BudgetClock(Budget("steps", 3.0), train_size=100, time_fn=FakeTime())
    clock.step_done(32)
    clock.step_done(32)
    assert (clock.steps, clock.samples, clock.epochs) == (2, 64, 0.64)
    assert clock.fraction == pytest.approx(2 / 3)
    assert not clock.exhausted
    clock.step_done(32)
    assert clock.exhausted


def test_clock_epochs() -> None:
    clock = BudgetClock(Budget("epochs", 0.5), train_size=100, time_fn=FakeTime())
    clock.step_done(25)
    assert clock.fraction == 0.5
    clock.step_done(25)
    assert clock.epochs == 0.5
    assert clock.fraction == 1.0
    assert clock.exhausted
    assert clock.to_dict() == {
        "budget": "0.5 epochs",
        "seconds": 0.0,
        "steps": 2,
        "samples": 50,
        "epochs": 0.5,
        "fraction": 1.0,
    }


def test_clock_without_train_size_has_no_epochs() -> None:
    assert BudgetClock(Budget("steps", 3.0), time_fn=FakeTime()).epochs is None


@pytest.mark.parametrize(
    ("budget", "train_size", "message"),
    [
        (Budget("percent", 10.0), None, "resolved to seconds"),
        (Budget("epochs", 1.0), None, "train_size"),
        (Budget("steps", 1.0), 0, "train_size"),
    ],
)
def test_clock_rejects(budget: Budget, train_size: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BudgetClock(budget, train_size)
