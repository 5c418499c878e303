"""One fine-tuning run as the statistics of ``hfft compare`` see it.

:class:`RunSummary` is read from a run's ``metrics.json``: its checkpoint,
strategy, seed, status and evaluation series, with the best and the final
value of a metric (a diverged run counts with what it reached before it
diverged). :func:`select_runs` checks that a set of runs comes from one
checkpoint with each strategy and seed at most once. Plain Python and NumPy,
no model needed; :mod:`hfft.analysis.ranking` ranks strategies from these summaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from hfft._io import number
from hfft.experiment.records import EvaluationEntry, HFProgressEntry, higher_is_better

__all__ = [
    "RunSummary",
    "by_strategy",
    "hf_progress_entry",
    "higher_is_better",
    "select_runs",
]


def _healthy(evaluation: Mapping[str, Any]) -> bool:
    # A non-finite loss means the model had diverged at this evaluation: its
    # accuracies (argmax of NaN logits) are no score either. metrics.json
    # writes a non-finite loss as null (a loss is always measured).
    return all(number(v) is not None for k, v in evaluation.items() if k.endswith("_loss"))


@dataclass(frozen=True)
class RunSummary:
    """One fine-tuning run as read from its ``metrics.json``.

    Attributes:
        checkpoint: The checkpoint the run started from (a name or path).
        strategy: The strategy label, e.g. ``sgd-cosine`` or ``hf:m=2048``.
        seed: The run's seed; equal seeds of different strategies are paired.
        status: ``completed``, ``diverged``, ``interrupted`` (or ``unknown``).
        evaluations: The evaluation series in the order written, each a dict
            with ``fraction``, ``seconds``, ``step``, the split metrics
            (``train_eval_loss``, ``valid_accuracy``, …) and ``lr`` or
            ``damping``.
        metric: The task's metric (``accuracy``, ``loss``, ``rmse``, ``r2``):
            what the comparison ranks on the test split.
        cg_seconds: Clock seconds per CG iteration over the run's HF steps
            (``None`` for runs without CG).
        hf_progress: The run's ``hf_progress`` entry (HF runs; ``None`` for others and
            for runs written before it existed).
    """

    checkpoint: str
    strategy: str
    seed: int
    status: str
    evaluations: tuple[EvaluationEntry, ...]
    metric: str = "accuracy"
    cg_seconds: float | None = None
    hf_progress: HFProgressEntry | None = None

    @classmethod
    def from_metrics(cls, checkpoint: str, seed: int, metrics: Mapping[str, Any]) -> RunSummary:
        """The summary of a run from the content of its ``metrics.json``.

        Args:
            checkpoint: The name the comparison uses for the starting checkpoint.
            seed: The run's seed.
            metrics: The parsed ``metrics.json``.

        Raises:
            ValueError: If ``metrics`` has no strategy or no evaluation list.
        """
        strategy = metrics.get("strategy")
        evaluations = metrics.get("evaluations")
        if not isinstance(strategy, str) or not strategy:
            raise ValueError("metrics.json has no strategy")
        if not isinstance(evaluations, list):
            raise ValueError(f"metrics.json of {strategy} seed {seed} has no evaluation list")
        task = (metrics.get("source") or {}).get("task") or {}
        metric = task.get("metric") if isinstance(task, dict) else None
        return cls(
            checkpoint=str(checkpoint),
            strategy=strategy,
            seed=int(seed),
            status=str(metrics.get("status", "unknown")),
            evaluations=tuple(cast(EvaluationEntry, dict(e)) for e in evaluations),
            metric=metric if metric in ("accuracy", "loss", "rmse", "r2") else "accuracy",
            cg_seconds=_cg_seconds(metrics.get("steps")),
            hf_progress=hf_progress_entry(metrics.get("hf_progress")),
        )

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The (budget fraction, value) pairs of ``metric``, sorted by fraction.

        Only evaluations with a finite value and finite losses (the model had
        not diverged) are kept; at equal fractions the later one wins.
        """
        points: dict[float, float] = {}
        for e in self.evaluations:
            fraction, value = number(e.get("fraction")), number(e.get(metric))
            if fraction is not None and value is not None and _healthy(e):
                points[fraction] = value
        xs = np.array(sorted(points), dtype=float)
        return xs, np.array([points[x] for x in xs], dtype=float)

    def best(self, metric: str) -> float | None:
        """The best value of ``metric`` the run reached (max for accuracy and R², min for
        losses), after its first step: the evaluation at budget fraction 0 is the
        checkpoint itself, shown as ``compare``'s "start" row, and does not count.

        ``None``/NaN values are ignored, and so are evaluations at which a loss
        is non-finite: a diverged run counts with its best value before it
        diverged. ``None`` when no value is left.
        """
        fractions, values = self.series(metric)
        values = values[fractions > 0]
        if values.size == 0:
            return None
        return float(values.max() if higher_is_better(metric) else values.min())

    def start(self, metric: str) -> float | None:
        """The value of ``metric`` at budget fraction 0: the checkpoint's own."""
        fractions, values = self.series(metric)
        return float(values[0]) if fractions.size and fractions[0] == 0 else None

    def seconds_per_step(self) -> float | None:
        """Clock seconds per optimizer step, at the last evaluation after a step."""
        for e in reversed(self.evaluations):
            steps, seconds = number(e.get("step")), number(e.get("seconds"))
            if steps and seconds is not None:
                return seconds / steps
        return None

    def spent(self) -> float | None:
        """The budget fraction at the run's last evaluation (above 1 when its last step
        ended past the budget)."""
        fractions = [f for e in self.evaluations if (f := number(e.get("fraction"))) is not None]
        return max(fractions) if fractions else None

    def final(self, metric: str) -> float | None:
        """The value of ``metric`` at the last evaluation (``None`` if missing or non-finite)."""
        if not self.evaluations:
            return None
        last = self.evaluations[-1]
        return number(last.get(metric)) if _healthy(last) else None


def _cg_seconds(steps: Any) -> float | None:
    """Seconds per CG iteration over the HF steps of a ``steps`` list (``None``: no CG)."""
    if not isinstance(steps, list):
        return None
    seconds = iterations = 0.0
    for step in steps:
        if isinstance(step, dict):
            n, t = number(step.get("cg_iterations")), number(step.get("time_cg"))
            if n and t is not None:
                seconds, iterations = seconds + t, iterations + n
    return seconds / iterations if iterations else None


def select_runs(runs: Iterable[RunSummary], checkpoint: str | None = None) -> list[RunSummary]:
    """The runs from one checkpoint, each strategy with each seed at most once.

    Args:
        runs: Runs, possibly from several checkpoints.
        checkpoint: The checkpoint to keep; ``None`` when all runs share one.

    Raises:
        ValueError: If ``checkpoint`` is ``None`` but the runs come from several
            checkpoints, or a strategy has two runs with one seed.
    """
    runs = list(runs)
    if checkpoint is not None:
        runs = [r for r in runs if r.checkpoint == checkpoint]
    elif len({r.checkpoint for r in runs}) > 1:
        raise ValueError("runs from several checkpoints: say which checkpoint to use")
    seen: set[tuple[str, int]] = set()
    for r in runs:
        if (r.strategy, r.seed) in seen:
            raise ValueError(f"two runs of {r.strategy} with seed {r.seed} from one checkpoint")
        seen.add((r.strategy, r.seed))
    return runs


def by_strategy(runs: Iterable[RunSummary]) -> dict[str, list[RunSummary]]:
    """The runs grouped by strategy (in order of first appearance), each group by seed."""
    groups: dict[str, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.strategy, []).append(r)
    return {s: sorted(g, key=lambda r: r.seed) for s, g in groups.items()}


def hf_progress_entry(entry: Any) -> HFProgressEntry | None:
    """``metrics.json``'s ``hf_progress`` when it has the fields a note needs, else ``None``."""
    if not isinstance(entry, dict) or entry.get("verdict") not in ("none", "little", "made"):
        return None
    counts = (entry.get("steps"), entry.get("accepted"), entry.get("m"), entry.get("n_train"))
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return None
    if entry["accepted"] > entry["steps"]:
        return None
    return cast(HFProgressEntry, dict(entry))
