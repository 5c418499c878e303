"""The statistics of ``hfft compare``: rank strategies over seeds (paper §3.1, §3.2, App. B.2).

A run is scored, as in the paper, by the **best** value of a metric it reached
within the budget (best test accuracy, best train loss), not by its last
value. Per strategy the scores of the seeds are summarised by their mean and
quartiles; strategies are ordered by the mean, and pairs that the data cannot
tell apart are marked (:func:`rank_strategies` states the rule). How soon each
strategy reaches a target value is :mod:`hfft.analysis.target`'s (re-exported here).

Everything here is plain Python and NumPy/SciPy on the content of the runs'
``metrics.json`` files (read into :class:`hfft.analysis.run_summary.RunSummary`, which
this module re-exports), so it is cheap and testable without a model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import cast

import numpy as np

from hfft._io import number
from hfft.analysis.run_summary import (
    RunSummary,
    by_strategy,
    higher_is_better,
    select_runs,
)
from hfft.analysis.target import best_baseline_target, time_to_target, time_to_target_entry
from hfft.analysis.wilcoxon import signed_rank_pvalue
from hfft.experiment.records import CompareCheckpoint, CompareSummary, StrategyRanking
from hfft.experiment.strategies.hf_progress import progress_verdict, strategy_note

__all__ = [
    "ALPHA",
    "MIN_PAIRS",
    "RANKED_METRICS",
    "TIE_RULE",
    "RunSummary",
    "StrategyStats",
    "best_baseline_target",
    "compare_summary",
    "higher_is_better",
    "rank_strategies",
    "ranked_metrics",
    "relative_performance",
    "run_notes",
    "select_runs",
    "signed_rank_pvalue",
    "time_to_target",
]

ALPHA = 0.05
"""Significance level of the paired test in :func:`rank_strategies`."""

MIN_PAIRS = 5
"""Fewest common seeds for which the paired test is used."""

RANKED_METRICS = ("test_accuracy", "train_eval_loss")
"""The metrics ``hfft compare`` ranks a classifier by, as in the paper (Figures 1, 2, 5)."""


def ranked_metrics(runs: Iterable[RunSummary]) -> tuple[str, ...]:
    """What a comparison ranks by: the task's metric on test, then the train loss.

    ``("test_accuracy", "train_eval_loss")`` for classification,
    ``("test_loss", "train_eval_loss")`` for regression (or ``test_rmse``,
    ``test_r2`` when ``--metric`` chose them): never an accuracy the task has not.
    """
    metrics = {r.metric for r in runs} or {"accuracy"}
    if len(metrics) > 1:
        raise ValueError(f"runs of different tasks cannot be ranked together: {sorted(metrics)}")
    return tuple(dict.fromkeys((f"test_{metrics.pop()}", "train_eval_loss")))


TIE_RULE = (
    "two strategies are marked as not distinguishable when the interquartile ranges of "
    "their best values over seeds overlap, or when at least 5 common seeds with not all "
    "differences zero give a one-sided exact Wilcoxon signed-rank p-value >= 0.05 for the "
    "better-ranked strategy being better"
)
"""The rule of :func:`rank_strategies` in words (written into ``compare.json``)."""


@dataclass(frozen=True)
class StrategyStats:
    """One strategy's place in a ranking by one metric.

    Attributes:
        strategy: The strategy label.
        metric: The metric ranked by.
        values: The best value of each seed's run, ordered by seed.
        mean: Mean of ``values``.
        q25: Lower quartile of ``values`` (NumPy's linear percentile).
        median: Median of ``values``.
        q75: Upper quartile of ``values``.
        rank: Position in the ranking, 1 = best mean.
        tied_with: Strategies this one cannot be distinguished from, best first.
        seeds: The seeds of ``values``.
        dropped: Seeds whose run had no finite value of the metric.
    """

    strategy: str
    metric: str
    values: tuple[float, ...]
    mean: float
    q25: float
    median: float
    q75: float
    rank: int
    tied_with: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()

    def as_dict(self) -> StrategyRanking:
        """The stats as a JSON-ready record (tuples as lists)."""
        return {
            "strategy": self.strategy,
            "metric": self.metric,
            "values": list(self.values),
            "mean": self.mean,
            "q25": self.q25,
            "median": self.median,
            "q75": self.q75,
            "rank": self.rank,
            "tied_with": list(self.tied_with),
            "seeds": list(self.seeds),
            "dropped": list(self.dropped),
        }


def _iqr_overlap(a: StrategyStats, b: StrategyStats) -> bool:
    return a.q25 <= b.q75 and b.q25 <= a.q75


def _paired_pvalue(better: StrategyStats, worse: StrategyStats, higher: bool) -> float | None:
    """The one-sided p-value that ``better`` is better, or ``None`` when the test does not apply."""
    a = dict(zip(better.seeds, better.values, strict=True))
    b = dict(zip(worse.seeds, worse.values, strict=True))
    common = sorted(a.keys() & b.keys())
    diffs = [(a[s] - b[s]) if higher else (b[s] - a[s]) for s in common]
    if len(diffs) < MIN_PAIRS or all(x == 0.0 for x in diffs):
        return None
    return signed_rank_pvalue(diffs)


def rank_strategies(
    runs: Iterable[RunSummary], metric: str, checkpoint: str | None = None
) -> list[StrategyStats]:
    """Rank strategies by the best value of ``metric`` their runs reached within the budget.

    Each run is scored by :meth:`RunSummary.best` (the paper's "best test
    accuracy" and "best train loss"; a diverged run by its best value before
    divergence). A run with no finite value is dropped (its seed is listed in
    ``dropped``); a strategy with no run left is not ranked. Per strategy the
    mean and the linear-interpolation quartiles (``numpy.percentile``) over
    seeds are reported, and strategies are ordered by the mean — higher first
    for accuracies, lower first for losses — then by the median, then by name.

    **Ties.** Strategies A (better ranked) and B are *not distinguishable* when

    1. their interquartile ranges ``[q25, q75]`` overlap (closed intervals), or
    2. they have at least :data:`MIN_PAIRS` (5) seeds in common, not all paired
       differences are zero, and the one-sided exact Wilcoxon signed-rank test
       (:func:`signed_rank_pvalue`) that A is better than B on the common
       seeds gives ``p ≥ 0.05``.

    With fewer than 5 common seeds, or all differences zero, only rule 1
    applies. The test is one-sided in the direction of the ranking because
    with 5 seeds the smallest two-sided p-value is 2/32 = 0.0625: a two-sided
    test could never separate anything at the paper's 5 seeds. One-sided, 5
    seeds separate A from B only if A is better on every seed (p = 1/32).
    The relation is symmetric but not transitive; ``tied_with`` lists, best
    first, every strategy a strategy is not distinguishable from.

    Args:
        runs: The runs (one per strategy and seed).
        metric: An evaluation key, e.g. ``test_accuracy`` or ``train_eval_loss``.
        checkpoint: Use only runs from this checkpoint; required when the runs
            come from several checkpoints.

    Returns:
        The ranked strategies, best first.

    Raises:
        ValueError: If the metric's direction is unknown, runs come from several
            checkpoints and none is named, or a strategy has two runs with one seed.
    """
    higher = higher_is_better(metric)
    groups = by_strategy(select_runs(runs, checkpoint))
    stats = [st for s, g in groups.items() if (st := _stats(s, g, metric)) is not None]
    sign = -1.0 if higher else 1.0
    stats.sort(key=lambda st: (sign * st.mean, sign * st.median, st.strategy))
    ties = _ties(stats, higher)
    order = {st.strategy: i for i, st in enumerate(stats)}
    return [
        replace(st, rank=i + 1, tied_with=tuple(sorted(ties[st.strategy], key=order.__getitem__)))
        for i, st in enumerate(stats)
    ]


def _stats(strategy: str, group: list[RunSummary], metric: str) -> StrategyStats | None:
    """One strategy's scores over its seeds (unranked); ``None`` if no run has one."""
    scored = [(r.seed, r.best(metric)) for r in group]
    kept = [(s, v) for s, v in scored if v is not None]
    if not kept:
        return None
    values = np.array([v for _, v in kept])
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return StrategyStats(
        strategy=strategy,
        metric=metric,
        values=tuple(float(v) for v in values),
        mean=float(values.mean()),
        q25=float(q25),
        median=float(median),
        q75=float(q75),
        rank=0,
        tied_with=(),
        seeds=tuple(s for s, _ in kept),
        dropped=tuple(s for s, v in scored if v is None),
    )


def _ties(stats: list[StrategyStats], higher: bool) -> dict[str, list[str]]:
    """Which strategies each one cannot be told apart from (the rule of :func:`rank_strategies`)."""
    ties: dict[str, list[str]] = {st.strategy: [] for st in stats}
    for i, a in enumerate(stats):
        for b in stats[i + 1 :]:
            p = _paired_pvalue(a, b, higher)
            if _iqr_overlap(a, b) or (p is not None and p >= ALPHA):
                ties[a.strategy].append(b.strategy)
                ties[b.strategy].append(a.strategy)
    return ties


def relative_performance(
    runs: Iterable[RunSummary], metric: str
) -> dict[str, dict[str, list[float]]]:
    """Each run's best value, scaled per checkpoint from 0 (worst run) to 1 (best run).

    As in the paper's Figures 1 and 5 (App. B.2.1): at each checkpoint the
    best values of all runs are mapped linearly so that the worst is 0 and the
    best 1 (for losses the smallest is best); when all are equal every run
    gets 1.0. Runs with no finite value are left out.

    Returns:
        ``{checkpoint: {strategy: [relative value per seed, by seed]}}``, in
        the order checkpoints and strategies first appear.
    """
    higher = higher_is_better(metric)
    groups: dict[str, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.checkpoint, []).append(r)
    out: dict[str, dict[str, list[float]]] = {}
    for checkpoint, group in groups.items():
        scored = [(r, v) for r in select_runs(group, None) if (v := r.best(metric)) is not None]
        per: dict[str, list[float]] = {}
        if scored:
            lo = min(v for _, v in scored)
            hi = max(v for _, v in scored)
            for r, v in sorted(scored, key=lambda rv: rv[0].seed):
                if hi == lo:
                    scaled = 1.0
                else:
                    scaled = (v - lo) / (hi - lo) if higher else (hi - v) / (hi - lo)
                per.setdefault(r.strategy, []).append(scaled)
        out[checkpoint] = {s: per[s] for s in dict.fromkeys(r.strategy for r in group) if s in per}
    return out


def run_notes(runs: Iterable[RunSummary], metrics: Iterable[str] | None = None) -> list[str]:
    """Sentences on runs that did not simply complete, and on runs left out of a ranking."""
    runs = list(runs)
    metrics = ranked_metrics(runs) if metrics is None else metrics
    notes = []
    for r in runs:
        where = f"{r.strategy} seed {r.seed}"
        spent = number(r.evaluations[-1].get("fraction")) if r.evaluations else None
        at = f" at {100 * spent:.0f} % of the budget" if spent is not None else ""
        if r.status == "diverged":
            notes.append(f"{where} diverged{at}; it counts with its best values before that")
        elif r.status != "completed":
            notes.append(f"{where} is {r.status}{at}; it counts with what it reached")
    for metric in metrics:
        for r in runs:
            if r.best(metric) is None:
                notes.append(f"{r.strategy} seed {r.seed} has no finite {metric}; left out")
    return notes


STEP_TIME_SPREAD = 1.5
"""A strategy whose seconds per step differ more than this factor between its seeds is noted:
on a shared machine a slow spell may then have favoured some runs."""


def step_seconds(group: list[RunSummary]) -> dict[str, dict[str, float]]:
    """Per strategy, the mean seconds per optimizer step over its seeds and their spread
    (slowest over fastest), so that a reader sees whether a slow spell favoured a strategy;
    for strategies with CG steps also the mean seconds per CG iteration (``cg_mean``) and
    its spread (``cg_spread``), which do not vary with the number of iterations a step took."""
    out = {}
    for strategy, runs in by_strategy(select_runs(group)).items():
        times = [t for r in runs if (t := r.seconds_per_step()) is not None and t > 0]
        if not times:
            continue
        entry = {"mean": float(np.mean(times)), "spread": max(times) / min(times)}
        cg = [t for r in runs if (t := r.cg_seconds) is not None and t > 0]
        if cg:
            entry |= {"cg_mean": float(np.mean(cg)), "cg_spread": max(cg) / min(cg)}
        out[strategy] = entry
    return out


def _timing_notes(timing: dict[str, dict[str, float]]) -> list[str]:
    return [
        f"{strategy}: seconds per step differ {t['spread']:.2f}× between its seeds (more than "
        f"{STEP_TIME_SPREAD}×): a slow spell of the machine, or steps of unequal work (CG "
        "iterations, auto's phases), may have favoured some runs"
        for strategy, t in timing.items()
        if t["spread"] > STEP_TIME_SPREAD
    ]


OVERRUN = 1.05
"""A strategy whose runs end on average beyond this multiple of the budget is noted: a step
that starts inside the budget finishes, so long steps (HF at a large m) spend more."""


def overrun_notes(group: list[RunSummary]) -> list[str]:
    """Sentences on strategies whose last step ended well past the budget, on average."""
    notes = []
    for strategy, runs in by_strategy(select_runs(group)).items():
        ends = [f for r in runs if (f := r.spent()) is not None]
        if ends and float(np.mean(ends)) > OVERRUN:
            notes.append(
                f"{strategy}: its runs ended at {np.mean(ends):.2f}× the budget on average (at "
                f"most {max(ends):.2f}×), since a step that starts inside the budget finishes; "
                "its best values include what that last step reached"
            )
    return notes


def hf_progress(group: list[RunSummary]) -> tuple[dict[str, str], list[str]]:
    """HF strategies that made no or little progress in at least half of their seeds:
    strategy → ``"no"`` or ``"little"``, and the note on each."""
    verdicts, notes = {}, []
    for strategy, runs in by_strategy(select_runs(group)).items():
        entries = [r.hf_progress for r in runs if r.hf_progress is not None]
        if (verdict := progress_verdict(entries)) is not None:
            verdicts[strategy] = verdict
            notes.append(cast(str, strategy_note(strategy, entries)))
    return verdicts, notes


def _start(group: list[RunSummary], metric: str) -> float | None:
    """The checkpoint's own value of ``metric`` (the same in every run from it)."""
    return next((v for r in group if (v := r.start(metric)) is not None), None)


def compare_summary(
    runs: Iterable[RunSummary], not_relative: Collection[str] = (), target: float | None = None
) -> CompareSummary:
    """The JSON-ready summary of a comparison (``compare.json``, ``hfft compare --json``).

    Layout::

        {
          "metrics": ["test_accuracy", "train_eval_loss"],  # ranked_metrics(runs)
          "tie_rule": "...",
          "checkpoints": [
            {
              "checkpoint": "ckpt-10",
              "runs": 35,
              "status": {"completed": 34, "diverged": 1},
              "start": {"test_accuracy": 0.91, "train_eval_loss": 0.31},  # the checkpoint's
              "step_seconds": {"sgd": {"mean": 0.008, "spread": 1.1}, ...},
              "rankings": {"test_accuracy": [StrategyStats.as_dict(), ...],
                           "train_eval_loss": [...]},
              "time_to_target": {"metric": "test_accuracy", "baseline": "sgd-cosine",
                                 "target": 0.93, "fractions": {"hf:m=2048": 0.35, ...},
                                 "missed": {"hf:m=2048": 1, ...}, "seeds": {...: 5},
                                 "ratios": {"hf:m=2048": 1.4, ...},
                                 "fastest_first_order": "sgd-div10"}
                                (time_to_target_entry) or null (no SGD baseline with a
                                final test accuracy beyond the start, and no target),
              "notes": ["hf:m=256 seed 3 diverged at 40 % of the budget; ...", ...]
            }, ...
          ],
          "relative_performance": {"test_accuracy": {checkpoint: {strategy: [...]}},
                                   "train_eval_loss": {...}}   # only with > 1 checkpoint
        }

    Args:
        runs: Runs from one or more checkpoints.
        not_relative: Strategies left out of the relative performance (those
            that ran from the last checkpoint alone).
        target: The value of the first ranked metric the time to target is for
            (``--target``); ``None``: the best SGD baseline's final value.

    Returns:
        The summary; every number in it is finite.
    """
    runs = list(runs)
    metrics = ranked_metrics(runs)
    by_checkpoint: dict[str, list[RunSummary]] = {}
    for r in runs:
        by_checkpoint.setdefault(r.checkpoint, []).append(r)
    checkpoints: list[CompareCheckpoint] = []
    for checkpoint, group in by_checkpoint.items():
        status: dict[str, int] = {}
        for r in group:
            status[r.status] = status.get(r.status, 0) + 1
        start = {m: _start(group, m) for m in metrics}
        ttt, target_notes = time_to_target_entry(group, metrics[0], start[metrics[0]], target)
        timing = step_seconds(group)
        stalled, stalled_notes = hf_progress(group)
        checkpoints.append(
            {
                "checkpoint": checkpoint,
                "runs": len(group),
                "status": status,
                "start": start,
                "rankings": {
                    m: [st.as_dict() for st in rank_strategies(group, m)] for m in metrics
                },
                "time_to_target": ttt,
                "step_seconds": timing,
                "hf_progress": stalled,
                "notes": run_notes(group, metrics)
                + stalled_notes
                + _timing_notes(timing)
                + overrun_notes(group)
                + target_notes,
            }
        )
    summary: CompareSummary = {
        "metrics": list(metrics),
        "tie_rule": TIE_RULE,
        "checkpoints": checkpoints,
    }
    if len(by_checkpoint) > 1:
        scored = [r for r in runs if r.strategy not in not_relative]
        summary["relative_performance"] = {m: relative_performance(scored, m) for m in metrics}
    return summary
