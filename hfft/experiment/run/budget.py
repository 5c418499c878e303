"""Fine-tuning budgets and the clock that spends them.

A budget is a percentage of the original training time (``10%``), a
wall-clock duration (``600s``, ``10m``, ``1h``), a number of optimizer steps
(``200steps``) or of epochs of data (``3epochs``). A percentage is turned into
seconds with :func:`resolve_budget` once the training time is known: the
training's robust time (:func:`robust_training_seconds`, the median epoch ×
the epochs) where ``run.json`` records it, so that a slow spell of the machine
during training does not multiply every budget taken from it.

:class:`BudgetClock` measures what a strategy has spent. It runs only while the
optimizer works: evaluation happens between :meth:`BudgetClock.pause` and
:meth:`BudgetClock.resume`, at the fractions :func:`evaluation_fractions`
gives, the same for every strategy.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUDGET_KINDS",
    "Budget",
    "BudgetClock",
    "evaluation_fractions",
    "parse_budget",
    "parse_duration",
    "resolve_budget",
    "robust_training_seconds",
]

BUDGET_KINDS = ("seconds", "steps", "epochs", "percent")

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(
    rf"""\s*(?:(?P<h>{_NUM})\s*(?:hours|hour|hrs|hr|h))?
        \s*(?:(?P<m>{_NUM})\s*(?:minutes|minute|mins|min|m))?
        \s*(?:(?P<s>{_NUM})\s*(?:seconds|second|secs|sec|s))?\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_PLAIN = re.compile(rf"\s*(?P<v>{_NUM})\s*")
_PERCENT = re.compile(rf"\s*(?P<v>{_NUM})\s*%\s*")
_STEPS = re.compile(rf"\s*(?P<v>{_NUM})\s*steps?\s*", re.IGNORECASE)
_EPOCHS = re.compile(rf"\s*(?P<v>{_NUM})\s*epochs?\s*", re.IGNORECASE)


def _number(value: float) -> str:
    """A float without a trailing ``.0`` when it is whole (``600``, ``0.5``)."""
    return f"{value:.12g}"


@dataclass(frozen=True)
class Budget:
    """How much a fine-tuning run may spend.

    Attributes:
        kind: One of ``"seconds"``, ``"steps"``, ``"epochs"``, ``"percent"``
            (of the original training time).
        value: The amount, positive and finite; a whole number for steps.
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(
                f"budget kind must be one of {', '.join(BUDGET_KINDS)}, got {self.kind!r}"
            )
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"a budget must be positive and finite, got {self.value} {self.kind}")
        if self.kind == "steps" and self.value != int(self.value):
            raise ValueError(f"a step budget must be a whole number of steps, got {self.value}")

    def __str__(self) -> str:
        value = _number(self.value)
        if self.kind == "percent":
            return f"{value}%"
        if self.kind == "seconds":
            return f"{value} s"
        unit = self.kind if self.value != 1 else self.kind[:-1]
        return f"{value} {unit}"


def _duration_seconds(text: str) -> float | None:
    """Seconds from a duration, or ``None`` when the text is not one."""
    plain = _PLAIN.fullmatch(text)
    if plain is not None:
        return float(plain["v"])
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        return None
    hours, minutes, seconds = (float(match[unit] or 0.0) for unit in "hms")
    return 3600.0 * hours + 60.0 * minutes + seconds


def parse_duration(text: str) -> float:
    """Seconds from a duration such as ``600``, ``600s``, ``10m``, ``90min``, ``1.5h`` or ``2h30m``.

    A duration is a plain number of seconds, or up to three parts in the order
    hours, minutes, seconds (``h``/``hr``/``hour(s)``, ``m``/``min``/``minute(s)``,
    ``s``/``sec``/``second(s)``), each a non-negative decimal number, with
    optional spaces; the unit letters are case-insensitive.

    Args:
        text: The duration as typed.

    Returns:
        The duration in seconds, positive and finite.

    Raises:
        ValueError: If the text is not a duration or is zero.
    """
    seconds = _duration_seconds(text)
    if seconds is None:
        raise ValueError(
            f"duration {text!r} is not understood; use seconds (600 or 600s), minutes "
            "(10m, 90min), hours (1h, 1.5h) or a combination such as 2h30m"
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"duration {text!r} must be positive and finite")
    return seconds


def parse_budget(text: str) -> Budget:
    """A :class:`Budget` from ``10%``, ``600s``/``10m``/``1h``, ``200steps`` or ``3epochs``.

    Units may be separated from the number by spaces and be singular
    (``1 step``, ``1 epoch``); durations are as in :func:`parse_duration`,
    except that a bare number is refused: ``10`` could mean any unit.

    Args:
        text: The budget as typed on the command line.

    Returns:
        The budget; a duration is given in seconds.

    Raises:
        ValueError: If the text is not a budget, or the amount is not positive
            and finite (or not whole, for steps).
    """
    if _PLAIN.fullmatch(text) is not None:
        raise ValueError(
            f"budget {text!r} has no unit; write {text.strip()}% (of the training time), "
            f"{text.strip()}s, {text.strip()}steps or {text.strip()}epochs"
        )
    kind, value = "seconds", _duration_seconds(text)
    for unit, pattern in (("percent", _PERCENT), ("steps", _STEPS), ("epochs", _EPOCHS)):
        match = pattern.fullmatch(text)
        if match is not None:
            kind, value = unit, float(match["v"])
    if value is None:
        raise ValueError(
            f"budget {text!r} is not understood; use a percentage of the training time "
            "(10%), a duration (600s, 10m, 1h), optimizer steps (200steps) or epochs "
            "(3epochs)"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"budget {text!r} must be positive and finite")
    if kind == "steps" and value != int(value):
        raise ValueError(f"budget {text!r} must be a whole number of steps")
    return Budget(kind, value)


def resolve_budget(
    budget: Budget, train_seconds: float | None, unknown_because: str | None = None
) -> Budget:
    """Turn a percentage of the training time into seconds; other budgets pass through.

    ``p%`` of a training run that took ``T`` seconds is ``p / 100 · T`` seconds.

    Args:
        budget: The budget as parsed.
        train_seconds: The original training time in seconds (from the run
            manifest), or ``None`` when unknown.
        unknown_because: Why it is unknown, when a run manifest was there but
            gives no usable time (the error message then).

    Returns:
        A budget whose kind is ``"seconds"``, ``"steps"`` or ``"epochs"``.

    Raises:
        ValueError: If the budget is a percentage and the training time is
            unknown, or the training time is not positive and finite.
    """
    if budget.kind != "percent":
        return budget
    if train_seconds is None and unknown_because is not None:
        raise ValueError(unknown_because)
    if train_seconds is None:
        raise ValueError(
            f"budget {budget} needs the original training time, which is unknown for this "
            "checkpoint; pass --train-time (e.g. --train-time 2h) or give an absolute budget "
            "such as 600s or 200steps"
        )
    if not (math.isfinite(train_seconds) and train_seconds > 0):
        raise ValueError(f"the training time must be positive and finite, got {train_seconds}")
    return Budget("seconds", budget.value / 100.0 * train_seconds)


def robust_training_seconds(epoch_seconds: Sequence[float]) -> float:
    """The training time without its slow spells: the median epoch's seconds × the epochs.

    ``T_robust = n · median(t_1, …, t_n)`` for ``n`` epochs that took ``t_i``
    seconds each. Every epoch does the same work (the same number of SGD
    steps), so on a quiet machine ``T_robust`` is the summed time ``Σ t_i``
    up to noise; a spell of other load that slows fewer than half of the
    epochs leaves it unchanged, where it adds its whole length to ``Σ t_i``.
    A machine loaded for most of the training still slows it: no clock can
    tell that load from the work.

    Args:
        epoch_seconds: Each epoch's training seconds (evaluation excluded).

    Returns:
        ``len(epoch_seconds) · median(epoch_seconds)``.

    Raises:
        ValueError: If there is no epoch, or a time is negative or not finite.
    """
    times = [float(t) for t in epoch_seconds]
    if not times:
        raise ValueError("a robust training time needs at least one epoch")
    if not all(math.isfinite(t) and t >= 0 for t in times):
        raise ValueError(f"epoch times must be finite and non-negative, got {times}")
    return len(times) * statistics.median(times)


def evaluation_fractions(points: int = 20) -> list[float]:
    """The budget fractions at which every strategy is evaluated.

    ``[0, 1/points, 2/points, …, 1]``: the start and ``points`` evenly spaced
    points, the last one being the end of the budget (``points + 1`` values).

    Args:
        points: Number of evaluations after the start, at least 1.

    Raises:
        ValueError: If ``points`` is not a positive integer.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(
            f"the number of evaluation points must be a positive integer, got {points!r}"
        )
    return [i / points for i in range(points + 1)]


class BudgetClock:
    """What a run has spent of its budget: running time, optimizer steps and epochs.

    The clock starts paused and measures time only between :meth:`resume` and
    :meth:`pause`, so evaluation is not charged to the strategy. Steps and
    samples are counted by :meth:`step_done`; epochs are ``samples /
    train_size``.

    Args:
        budget: A resolved budget (not a percentage; see :func:`resolve_budget`).
        train_size: Number of training examples, needed for epoch budgets and
            for :attr:`epochs`.
        time_fn: Monotonic clock in seconds.
        sync: Called before every reading of the clock, e.g.
            ``torch.cuda.synchronize`` so that queued GPU work is charged to the
            interval that queued it.

    Raises:
        ValueError: If the budget is a percentage, or it counts epochs and
            ``train_size`` is missing, or ``train_size`` is not positive.
    """

    def __init__(
        self,
        budget: Budget,
        train_size: int | None = None,
        *,
        time_fn: Callable[[], float] = time.perf_counter,
        sync: Callable[[], Any] | None = None,
    ) -> None:
        if budget.kind == "percent":
            raise ValueError(
                f"budget {budget} must be resolved to seconds first (see resolve_budget)"
            )
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be a positive integer, got {train_size}")
        if budget.kind == "epochs" and train_size is None:
            raise ValueError(f"budget {budget} needs the size of the training set (train_size)")
        self.budget = budget
        self.train_size = train_size
        self._time_fn = time_fn
        self._sync = sync
        self._elapsed = 0.0
        self._started: float | None = None
        self._steps = 0
        self._samples = 0

    def _now(self) -> float:
        if self._sync is not None:
            self._sync()
        return self._time_fn()

    @property
    def running(self) -> bool:
        """Whether the clock is running."""
        return self._started is not None

    def resume(self) -> None:
        """Start charging time to the budget.

        Raises:
            RuntimeError: If the clock is already running.
        """
        if self._started is not None:
            raise RuntimeError("the budget clock is already running")
        self._started = self._now()

    def pause(self) -> None:
        """Stop charging time to the budget.

        Raises:
            RuntimeError: If the clock is not running.
        """
        if self._started is None:
            raise RuntimeError("the budget clock is not running")
        self._elapsed += self._now() - self._started
        self._started = None

    def synchronize(self, seconds: float) -> None:
        """Set the paused clock to ``seconds`` (data-parallel: the slowest rank's).

        Raises:
            RuntimeError: If the clock is running.
            ValueError: If ``seconds`` is less than the time already charged.
        """
        if self._started is not None:
            raise RuntimeError("pause the budget clock before synchronising it")
        if seconds < self._elapsed:
            raise ValueError(f"cannot set the clock back from {self._elapsed} to {seconds}")
        self._elapsed = seconds

    def step_done(self, samples: int = 0) -> None:
        """Count one optimizer step that drew ``samples`` training examples.

        Raises:
            ValueError: If ``samples`` is negative.
        """
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self._steps += 1
        self._samples += samples

    @property
    def seconds(self) -> float:
        """Running time so far, paused intervals excluded, the current interval included."""
        if self._started is None:
            return self._elapsed
        return self._elapsed + (self._now() - self._started)

    @property
    def steps(self) -> int:
        """Optimizer steps so far."""
        return self._steps

    @property
    def samples(self) -> int:
        """Training examples drawn so far."""
        return self._samples

    @property
    def epochs(self) -> float | None:
        """Epochs of data so far (``samples / train_size``), ``None`` without ``train_size``."""
        if self.train_size is None:
            return None
        return self._samples / self.train_size

    @property
    def fraction(self) -> float:
        """Spent / limit in the budget's own unit; may exceed 1."""
        if self.budget.kind == "seconds":
            spent = self.seconds
        elif self.budget.kind == "steps":
            spent = float(self._steps)
        else:
            assert self.train_size is not None  # checked in __init__ for epoch budgets
            spent = self._samples / self.train_size
        return spent / self.budget.value

    @property
    def exhausted(self) -> bool:
        """Whether the whole budget is spent (``fraction >= 1``)."""
        return self.fraction >= 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of what was spent, for logs."""
        return {
            "budget": str(self.budget),
            "seconds": self.seconds,
            "steps": self._steps,
            "samples": self._samples,
            "epochs": self.epochs,
            "fraction": self.fraction,
        }
