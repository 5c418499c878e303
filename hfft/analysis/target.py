"""Time to target: how much of the budget each strategy needs to reach a value (issue #28).

The target is a value of the first metric a comparison ranks by (the test
accuracy of a classifier): by default the best SGD baseline's mean final
value, the level the paper's SGD schedules end at, or the user's own
(``--target``). A run reaches it at its first evaluation after its first step
where the metric is at least the target (at most, for losses); a strategy
reaches it when half of its seeds do, and its *time to target* is that budget
fraction, the median over seeds. Each time is set against the fastest
first-order strategy's (:func:`time_to_target_entry`), so that "HF needs 2.7×
the budget of ``sgd-div10``" is read off one number: a ratio below 1 is faster
than every first-order method. The words every table says it in (what the target
is, a row per strategy: :func:`target_words`, :func:`target_rows`) are here too;
the terminal (:mod:`hfft.cli.render.summaries`) and ``report.md``
(:mod:`hfft.analysis.report`) render them.

Plain Python on :class:`hfft.analysis.run_summary.RunSummary`, no model needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hfft.analysis.run_summary import RunSummary, by_strategy, higher_is_better, select_runs
from hfft.experiment.records import TimeToTarget
from hfft.experiment.strategies.registry import entry_of, kind_of

__all__ = [
    "REFERENCE_KIND",
    "USER",
    "TargetRow",
    "best_baseline_target",
    "fastest_reference",
    "metric_label",
    "parse_target",
    "ratio_text",
    "reach_times",
    "shown_value",
    "soonest_first",
    "target_header",
    "target_rows",
    "target_words",
    "time_to_target",
    "time_to_target_entry",
]

USER = "user"
"""``baseline`` of a :class:`~hfft.experiment.records.TimeToTarget` whose target the user gave."""

REFERENCE_KIND = "first-order"
"""The registry kind whose fastest strategy the ratios refer to (not ``hf``, ``auto`` nor
any other curvature method)."""


def parse_target(text: str, metric: str | None = None) -> float:
    """The value of ``--target``: ``0.981`` as the metric is recorded, or ``98.1%``.

    A percentage is an accuracy's, as hfft prints accuracies (``98.10%``);
    a plain number is the value as ``metrics.json`` records it (an accuracy
    as a fraction, a loss as it is). Without ``metric`` only the form is
    checked (the metric is known once the checkpoints are loaded).

    Args:
        text: The value as given.
        metric: The metric it is a value of (``test_accuracy``, ``test_loss``, …).

    Returns:
        The target as the metric is recorded (``98.1%`` gives 0.981).

    Raises:
        ValueError: One sentence, for anything but a finite number in the metric's range.
    """
    stripped = text.strip()
    percent = stripped.endswith("%")
    try:
        value = float(stripped.removesuffix("%").strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (percent and not 0 <= value <= 100):
        raise ValueError(
            f"--target must be a number such as 0.981 or a percentage from 0% to 100% such as "
            f"98.1%, not {text!r}"
        )
    if metric is None:
        return value / 100 if percent else value
    name = metric.rsplit("_", 1)[-1]
    if percent and name != "accuracy":
        raise ValueError(
            f"--target {text} is a percentage, but the comparison ranks first by "
            f"{metric_label(metric)}; give its value as a plain number"
        )
    value = value / 100 if percent else value
    if name == "accuracy" and not 0 <= value <= 1:
        raise ValueError(
            f"--target {text} is no accuracy (a fraction from 0 to 1); write {text}% for a "
            "percentage"
        )
    if name in ("loss", "rmse") and value < 0:
        raise ValueError(f"--target {text} is negative, but {metric_label(metric)} is at least 0")
    if name == "r2" and value > 1:
        raise ValueError(f"--target {text} is above 1, the largest {metric_label(metric)}")
    return value


def metric_label(metric: str) -> str:
    """A recorded metric in words, as every report and table names it: ``train_eval_loss``
    is ``train loss``, ``test_accuracy`` ``test accuracy``."""
    return metric.replace("train_eval", "train").replace("_", " ")


def shown_value(metric: str, value: float) -> str:
    """A value of ``metric`` as reports show it: ``98.10 %`` for an accuracy."""
    return f"{100 * value:.2f} %" if metric.endswith("accuracy") else f"{value:.4g}"


def ratio_text(ratio: float) -> str:
    """A ratio of budgets: ``2.7×``, ``0.74×`` (two digits below 1, where they matter)."""
    return f"{ratio:.1f}×" if ratio >= 1 else f"{ratio:.2f}×"


def reach_times(
    runs: Iterable[RunSummary],
    target: float,
    metric: str = "test_accuracy",
    checkpoint: str | None = None,
) -> dict[str, list[float]]:
    """Per strategy, the budget fraction at which each seed's run first reached ``target``.

    The first evaluation after the run's first step (budget fraction > 0; the
    one at 0 is the checkpoint itself, as for :meth:`RunSummary.best`) where
    ``metric ≥ target`` (``≤`` for losses); ``math.inf`` for a run that never
    does, or whose model diverged before.

    Returns:
        ``{strategy: [fraction per seed, by seed]}`` in the order strategies first appear.
    """
    higher = higher_is_better(metric)
    out: dict[str, list[float]] = {}
    for strategy, group in by_strategy(select_runs(runs, checkpoint)).items():
        times = []
        for r in group:
            fractions, values = r.series(metric)
            hit = values >= target if higher else values <= target
            hits = fractions[(fractions > 0) & hit]
            times.append(float(hits[0]) if hits.size else math.inf)
        out[strategy] = times
    return out


def _median(times: list[float]) -> float | None:
    """The ⌈n/2⌉-th smallest time: ``None`` exactly when fewer than half are finite."""
    t = sorted(times)[math.ceil(len(times) / 2) - 1]
    return None if math.isinf(t) else t


def time_to_target(
    runs: Iterable[RunSummary],
    target: float,
    metric: str = "test_accuracy",
    checkpoint: str | None = None,
) -> dict[str, float | None]:
    """Per strategy, the budget fraction by which half of its seeds reached ``target``.

    A run reaches the target as :func:`reach_times` says; one that never does
    counts as reaching it at +∞. The result is the median of these fractions
    over seeds, taken as the ⌈n/2⌉-th smallest (the ordinary median for odd
    n, the lower median for even n), so it is ``None`` exactly when fewer
    than half of the seeds reach the target.

    Args:
        runs: The runs.
        target: The value to reach, e.g. from :func:`best_baseline_target`.
        metric: An evaluation key.
        checkpoint: Use only runs from this checkpoint; required when the runs
            come from several checkpoints.

    Returns:
        ``{strategy: fraction or None}`` in the order the strategies first appear.
    """
    return {s: _median(t) for s, t in reach_times(runs, target, metric, checkpoint).items()}


def best_baseline_target(
    runs: Iterable[RunSummary], checkpoint: str | None = None, metric: str = "test_accuracy"
) -> tuple[str, float]:
    """The SGD strategy with the best mean final ``metric``, and that mean.

    The SGD strategies are those the registry marks as a baseline (``sgd``,
    ``sgd-div10``, ``sgd-cosine``, ``sgd-plateau`` and ``sgd-schedulefree``); runs
    without a finite final value are left out of the mean.

    Raises:
        ValueError: If no SGD run has a finite final value.
    """
    sign = 1.0 if higher_is_better(metric) else -1.0
    best: tuple[str, float] | None = None
    for strategy, group in by_strategy(select_runs(runs, checkpoint)).items():
        found = entry_of(strategy)
        if found is None or not found.baseline:
            continue
        finals = [v for v in (r.final(metric) for r in group) if v is not None]
        if finals and (best is None or sign * float(np.mean(finals)) > sign * best[1]):
            best = (strategy, float(np.mean(finals)))
    if best is None:
        raise ValueError(f"no SGD run with a final {metric} to take as the target")
    return best


def fastest_reference(fractions: Mapping[str, float | None]) -> str | None:
    """The :data:`REFERENCE_KIND` strategy with the smallest time to target (the first
    listed among equals), or ``None`` when none reached it."""
    reached = [
        (f, s) for s, f in fractions.items() if f is not None and kind_of(s) == REFERENCE_KIND
    ]
    return min(reached, key=lambda fs: fs[0])[1] if reached else None


def soonest_first(entry: Mapping[str, Any]) -> list[str]:
    """The strategies of a :class:`~hfft.experiment.records.TimeToTarget`, soonest first;
    those that did not reach the target after them, fewest seeds missed first (equals in
    the comparison's order)."""
    fractions, missed = entry["fractions"], entry.get("missed") or {}

    def key(s: str) -> tuple[bool, float, int]:
        f = fractions[s]
        return (f is None, 0.0 if f is None else f, missed.get(s, 0))

    return sorted(fractions, key=key)


def time_to_target_entry(
    group: list[RunSummary], metric: str, start: float | None, target: float | None = None
) -> tuple[TimeToTarget | None, list[str]]:
    """One checkpoint's time to target, and the notes a reader needs beside it.

    Without ``target`` the best SGD baseline's final value is the target, and
    only where it lies beyond the start (else reaching it says nothing: from a
    late checkpoint SGD may end where it began); ``None`` then, with a note
    saying why. A ``target`` the user gave is always used; where the
    checkpoint already reaches it, a note says that the times are those at
    which each strategy is still there after its first step.

    Each strategy's ``ratio`` is its time over that of the fastest first-order
    strategy (``fastest_first_order``): below 1 it reached the target sooner
    than every first-order strategy. Where no first-order strategy reached it,
    every ratio is null and a note says so.

    Args:
        group: The runs from one checkpoint.
        metric: The first ranked metric.
        start: The checkpoint's own value of it (``None``: unknown).
        target: The user's target (``--target``), or ``None`` for the SGD baseline's.

    Returns:
        The ``compare.json`` entry (or ``None``) and the notes.
    """
    chosen = _chosen_target(group, metric, start, target)
    if isinstance(chosen, str):
        return None, [chosen]
    baseline, value = chosen
    notes = []
    if start is not None and not _beyond(metric, value, start):
        notes.append(
            f"the checkpoint itself reaches the target ({metric_label(metric)} "
            f"{shown_value(metric, start)}, target {shown_value(metric, value)}): the time to "
            "target is when each strategy is still there after its first step"
        )
    entry = _entry(group, metric, baseline, value)
    if entry["fastest_first_order"] is None:
        notes.append(
            "no first-order strategy reached the target in half of its seeds or more, so no "
            "strategy's time to target has a ratio to the fastest first-order one"
        )
    return entry, notes


def _chosen_target(
    group: list[RunSummary], metric: str, start: float | None, target: float | None
) -> tuple[str, float] | str:
    """The target's ``baseline`` (:data:`USER` for ``target``) and value, or the note that
    says why there is none (no SGD baseline's value, or one that does not lie beyond the
    start)."""
    if target is not None:
        return USER, target
    try:
        baseline, value = best_baseline_target(group, metric=metric)
    except ValueError:
        return (
            f"no time to target: no SGD strategy has a final {metric_label(metric)} to take as "
            "the target (--target sets one)"
        )
    if start is not None and not _beyond(metric, value, start):
        return (
            f"no time to target: {baseline}'s final {metric_label(metric)} "
            f"({shown_value(metric, value)}) does not lie beyond the start "
            f"({shown_value(metric, start)}); --target sets a value to reach"
        )
    return baseline, value


def _beyond(metric: str, value: float, start: float) -> bool:
    """Whether ``value`` is better than the checkpoint's ``start`` (above it, or below it for
    a loss)."""
    return value > start if higher_is_better(metric) else value < start


def _entry(group: list[RunSummary], metric: str, baseline: str, value: float) -> TimeToTarget:
    """The ``compare.json`` entry: each strategy's time to ``value``, the seeds that missed
    it and the ratio to the fastest first-order strategy's time (null where there is none)."""
    times = reach_times(group, value, metric)
    fractions = {s: _median(t) for s, t in times.items()}
    fastest = fastest_reference(fractions)
    reference = None if fastest is None else fractions[fastest]
    ratios = {
        s: None if f is None or reference is None else f / reference for s, f in fractions.items()
    }
    return {
        "metric": metric,
        "baseline": baseline,
        "target": value,
        "fractions": fractions,
        "missed": {s: sum(math.isinf(x) for x in t) for s, t in times.items()},
        "seeds": {s: len(t) for s, t in times.items()},
        "ratios": ratios,
        "fastest_first_order": fastest,
    }


# --- the time to target in words, for the terminal's tables and report.md ----------------


def target_words(ttt: Mapping[str, Any], shown: Callable[[str, float], str] = shown_value) -> str:
    """What a :class:`~hfft.experiment.records.TimeToTarget`'s target is, in words:
    ``sgd-cosine's final test accuracy 98.10 %``, or ``test accuracy 98.10 % (--target)``
    for the user's; ``shown(metric, value)`` writes the value as the caller's tables do."""
    metric = ttt["metric"]
    value = f"{metric_label(metric)} {shown(metric, ttt['target'])}"
    if ttt.get("baseline") == USER:
        return f"{value} (--target)"
    return f"{ttt['baseline']}'s final {value}"


def target_header(ttt: Mapping[str, Any]) -> list[str]:
    """The columns of a time-to-target table (:meth:`TargetRow.cells`)."""
    fastest = ttt.get("fastest_first_order")
    return ["strategy", "to target", f"× {fastest or 'fastest first-order'}", "seeds missed"]


@dataclass(frozen=True)
class TargetRow:
    """One strategy's line of a time-to-target table.

    Attributes:
        strategy: The strategy's label.
        fraction: Its time to target (``None``: not reached).
        ratio: That over the fastest first-order strategy's (``None``: no ratio).
        missed: Its seeds that never reached the target (``None``: not recorded).
        seeds: Its seeds (``None``: not recorded).
    """

    strategy: str
    fraction: float | None
    ratio: float | None
    missed: int | None
    seeds: int | None

    def cells(self, percent: str = "{:.0f} %", of: str = "{} of {}") -> list[str]:
        """The row in words under :func:`target_header`: ``27 %`` or ``not reached``,
        ``2.7×`` or ``–``, ``1 of 5`` or ``–``; ``percent`` and ``of`` are the caller's
        formats of a percentage and of seeds missed out of all."""
        counted = self.missed is not None and self.seeds is not None
        return [
            self.strategy,
            "not reached" if self.fraction is None else percent.format(100 * self.fraction),
            "–" if self.ratio is None else ratio_text(self.ratio),
            of.format(self.missed, self.seeds) if counted else "–",
        ]


def target_rows(ttt: Mapping[str, Any]) -> list[TargetRow]:
    """A :class:`~hfft.experiment.records.TimeToTarget`'s strategies, soonest first
    (:func:`soonest_first`); an older ``compare.json`` without ratios or seed counts
    gives ``None`` for them."""
    ratios, missed, seeds = (ttt.get(k) or {} for k in ("ratios", "missed", "seeds"))
    both = set(missed) & set(seeds)  # seeds missed are shown only with all the seeds
    return [
        TargetRow(
            s,
            ttt["fractions"][s],
            ratios.get(s),
            missed[s] if s in both else None,
            seeds[s] if s in both else None,
        )
        for s in soonest_first(ttt)
    ]
