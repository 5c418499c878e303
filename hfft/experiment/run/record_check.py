"""Whether a ``metrics.json`` is one hfft could have written: what ``compare`` checks before reuse.

:func:`check_finetune_log` holds a fine-tuning record to
:class:`hfft.experiment.records.FinetuneLog` where a ranking reads it: the
types of ``strategy``, ``status``, ``budget``, ``spent``, every evaluation and
every step; finite numbers, or ``null`` where a value may be unmeasured (a
non-finite loss is written as ``null``); metrics within their ranges
(accuracies in [0, 1], R² ≤ 1, RMSE and the built-in losses ≥ 0); budget
fractions, clock seconds and step counts that agree with each other and with
the budget as :class:`hfft.experiment.run.budget.BudgetClock` records them. Every
record hfft writes passes (completed, diverged or interrupted); a hand-edited
or damaged one fails with its first implausible field, in a few words.

Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hfft.experiment.records import FINETUNE_KIND, SCHEMA_VERSION

__all__ = ["RecordError", "check_finetune_log", "shown"]

STATUSES = ("completed", "diverged", "interrupted")
BUDGET_KINDS = ("seconds", "steps", "epochs")
SPLITS = ("train_eval", "valid", "test")

#: The range of each metric: (lowest, highest), ``None`` for no bound.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "accuracy": (0.0, 1.0),
    "r2": (None, 1.0),
    "rmse": (0.0, None),
    "loss": (0.0, None),  # cross-entropy, MSE, BCE; a custom loss (--loss) may be negative
}

_SHOWN = 24  # characters of a value a message shows

_ARTICLES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}

#: The fields of an evaluation that run forward, with their names in ``spent``.
_FORWARD = {"fraction": "spent.fraction", "seconds": "spent.seconds", "step": "spent.steps"}


class RecordError(ValueError):
    """A record hfft could not have written; the message follows the file's name
    ("has test_accuracy 5.0 at evaluation 4, outside [0, 1]")."""


@dataclass(frozen=True)
class _Point:
    """Where a run stood on its budget: at an evaluation, or at its end (``spent``)."""

    fraction: float
    seconds: float
    step: int
    epochs: float | None


@dataclass(frozen=True)
class _Budget:
    kind: str
    limit: float

    def check(self, point: _Point, where: str, prefix: str = "") -> None:
        """Check that ``point``'s fraction is what the clock reports: what was spent of the
        budget's kind (seconds, steps or epochs) over its limit."""
        if self.kind == "epochs" and point.epochs is None:
            raise RecordError(f"has no {prefix}epochs{where} although its budget counts epochs")
        spent, unit = {"seconds": (point.seconds, "s"), "steps": (point.step, "steps")}.get(
            self.kind, (point.epochs or 0.0, "epochs")
        )
        if not math.isclose(point.fraction, spent / self.limit, rel_tol=1e-9, abs_tol=1e-12):
            raise RecordError(
                f"has {prefix}fraction {shown(point.fraction)}{where}, not "
                f"{spent:.6g} {unit} / {self.limit:.6g} {unit}"
            )


def check_finetune_log(log: Any) -> None:
    """Check that ``log`` (a parsed ``metrics.json``) is a record hfft could have written.

    Args:
        log: The parsed JSON.

    Raises:
        RecordError: Naming the first field that is missing, of the wrong type,
            not finite, out of its range or inconsistent with the budget, in
            words that follow "its metrics.json" ("is incomplete (no spent)").
    """
    if not isinstance(log, dict):
        raise RecordError("is not a JSON object")
    _check_header(log)
    budget = _check_budget(_field(log, "budget", dict))
    task = _field(_field(log, "source", dict), "task", dict, prefix="source.")
    if _field(task, "metric", str, prefix="source.task.") not in RANGES:
        raise RecordError(f"has source.task.metric {shown(task['metric'])}, not a metric")
    custom = _field(task, "kind", str, prefix="source.task.") == "custom"
    spent = _check_spent(_field(log, "spent", dict), budget)
    _check_evaluations(log, budget, spent, custom)
    _check_steps(_field(log, "steps", list), spent)


def _check_header(log: dict[str, Any]) -> None:
    if _field(log, "schema_version") != SCHEMA_VERSION:
        version = shown(log["schema_version"])
        raise RecordError(f"has schema_version {version}, not {SCHEMA_VERSION}")
    if _field(log, "kind") != FINETUNE_KIND:
        raise RecordError(f"has kind {shown(log['kind'])}, not {json.dumps(FINETUNE_KIND)}")
    if _field(log, "status") not in STATUSES:
        raise RecordError(f"has status {shown(log['status'])}, not {', '.join(STATUSES)}")
    if not _field(log, "strategy", str):
        raise RecordError("has an empty strategy")


def _check_budget(budget: dict[str, Any]) -> _Budget:
    kind = _field(budget, "kind", str, prefix="budget.")
    if kind not in BUDGET_KINDS:
        raise RecordError(f"has budget.kind {shown(kind)}, not {', '.join(BUDGET_KINDS)}")
    limit = _finite(_field(budget, "limit", prefix="budget."), "budget.limit")
    if limit <= 0 or (kind == "steps" and limit != int(limit)):
        raise RecordError(f"has budget.limit {shown(budget['limit'])}, not a budget of {kind}")
    return _Budget(kind, limit)


def _check_spent(spent: dict[str, Any], budget: _Budget) -> _Point:
    """What the run spent: a point on its budget (never past a step budget)."""
    _field(spent, "budget", str, prefix="spent.")
    _count(_field(spent, "samples", prefix="spent."), "spent.samples")
    point = _point(spent, "steps", "", "spent.")
    if budget.kind == "steps" and point.step > budget.limit:
        limit = f"{budget.limit:.0f}"
        raise RecordError(f"has spent.steps {point.step}, more than its {limit}-step budget")
    budget.check(point, "", "spent.")
    return point


def _check_evaluations(log: dict[str, Any], budget: _Budget, spent: _Point, custom: bool) -> None:
    """Every evaluation: a point on the budget at or after the one before and within what
    was spent (the first one at the start), and metrics within their ranges."""
    evaluations = _field(log, "evaluations", list)
    if not evaluations and log["status"] != "interrupted":  # Ctrl-C during the first one
        raise RecordError("is incomplete (no evaluation)")
    before = _Point(0.0, 0.0, 0, None)
    for i, entry in enumerate(evaluations):
        where = f" at evaluation {i}"
        if not isinstance(entry, dict):
            raise RecordError(f"has evaluation {i} {shown(entry)}, not an object")
        point = _point(entry, "step", where)
        for name, of in _FORWARD.items():
            value, first, most = (getattr(p, name) for p in (point, before, spent))
            if i == 0 and value != 0:
                raise RecordError(f"has {name} {shown(value)}{where}, not 0 (the start)")
            _in_order(name, value, where, first, most, of)
        budget.check(point, where)
        _check_metrics(entry, where, custom)
        before = point


def _point(record: dict[str, Any], step: str, where: str, prefix: str = "") -> _Point:
    """The fraction, seconds, step count and epochs of an evaluation or of ``spent``."""

    def get(name: str) -> Any:
        return _field(record, name, where=where, prefix=prefix)

    return _Point(
        _finite(get("fraction"), prefix + "fraction", where, 0.0),
        _finite(get("seconds"), prefix + "seconds", where, 0.0),
        _count(get(step), prefix + step, where),
        _optional(record.get("epochs"), prefix + "epochs", where, 0.0),
    )


def _in_order(name: str, value: float, where: str, before: float, most: float, of: str) -> None:
    """Check that the clock ran forward to ``value`` and no further than ``most`` (``of``)."""
    if value < before:
        raise RecordError(f"has {name} {shown(value)}{where}, less than the one before")
    if value > most:
        raise RecordError(f"has {name} {shown(value)}{where}, more than {of} ({shown(most)})")


def _check_metrics(entry: dict[str, Any], where: str, custom: bool) -> None:
    """The task's metrics within their ranges, or ``null`` (not finite when measured)."""
    for split in SPLITS:
        for metric, (low, high) in RANGES.items():
            key = f"{split}_{metric}"
            if key in entry:
                low = None if custom and metric == "loss" else low
                _optional(entry[key], key, where, low, high)
    for key in ("lr", "damping"):
        if key in entry:
            _optional(entry[key], key, where, 0.0)


def _check_steps(steps: list[Any], spent: _Point) -> None:
    """One entry per step spent, each started inside the budget (its fraction, taken at its
    start, below 1: the last may end anywhere past it), the clock running forward (a step
    cut short by Ctrl-C may lack its seconds)."""
    if len(steps) != spent.step:
        raise RecordError(f"lists {len(steps)} steps, not the {spent.step} of spent.steps")
    before = 0.0
    for i, step in enumerate(steps, start=1):
        where = f" at step {i}"
        if not isinstance(step, dict):
            raise RecordError(f"has step {i} {shown(step)}, not an object")
        started = _finite(_field(step, "fraction", where=where), "fraction", where, 0.0)
        if started >= 1.0:  # the loop starts a step only while the budget lasts
            raise RecordError(f"has fraction {shown(started)}{where}: it started past the budget")
        seconds = _optional(step.get("seconds"), "seconds", where, 0.0)
        if seconds is not None:
            _in_order("seconds", seconds, where, before, spent.seconds, "spent.seconds")
            before = seconds
        if "cg_iterations" in step:
            _count(step["cg_iterations"], "cg_iterations", where)
        if "time_cg" in step:
            _optional(step["time_cg"], "time_cg", where, 0.0)


def _field(
    record: dict[str, Any], name: str, kind: type | None = None, where: str = "", prefix: str = ""
) -> Any:
    """``record[name]``, of type ``kind`` if given; ``prefix`` and ``where`` place it in
    messages ("spent.", " at evaluation 3")."""
    if name not in record:
        raise RecordError(f"is incomplete (no {prefix}{name}{where})")
    value = record[name]
    if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        article = _ARTICLES.get(kind, kind.__name__)
        raise RecordError(f"has {prefix}{name} {shown(value)}{where}, not {article}")
    return value


def _finite(
    value: Any, name: str, where: str = "", low: float | None = None, high: float | None = None
) -> float:
    """``value`` as a finite float within ``[low, high]`` (``None``: no bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"has {name} {shown(value)}{where}, not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise RecordError(f"has {name} {shown(value)}{where}, not a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        if low is not None and high is not None:
            bounds = f"outside [{low:g}, {high:g}]"
        else:
            bounds = f"below {low:g}" if low is not None else f"above {high:g}"
        raise RecordError(f"has {name} {shown(value)}{where}, {bounds}")
    return number


def _optional(
    value: Any, name: str, where: str = "", low: float | None = None, high: float | None = None
) -> float | None:
    """:func:`_finite`, or ``None`` for ``null``: a value that was not measured, or not
    finite when it was (a diverged model's loss)."""
    return None if value is None else _finite(value, name, where, low, high)


def _count(value: Any, name: str, where: str = "") -> int:
    """``value`` as a count: a whole number ≥ 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"has {name} {shown(value)}{where}, not a count")
    return value


def shown(value: Any) -> str:
    """A value read from a record as a message shows it: JSON, cut short (a message never
    echoes a huge value); a list or an object by its kind."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a huge number"
    if isinstance(value, str) and len(value) > _SHOWN - 4:
        return json.dumps(value[: _SHOWN - 4])[:-1] + '…"'
    return json.dumps(value)
