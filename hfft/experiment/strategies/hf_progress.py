"""Whether HF made progress in a run, and if not, why, in the user's terms.

An HF step is taken only when the step computed on B (gradient and curvature)
also lowers the loss on the disjoint batch B̄. When that fails step after step,
ρ on B̄ is negative, the damping climbs to its cap and the run ends with the
weights it started from — "completed", but nothing happened. :class:`HFProgress`
counts the steps as they are taken and says so: ``metrics.json`` keeps
:meth:`HFProgress.to_dict` as ``hf_progress``, and the run's summary,
``compare``'s table and ``report.md`` print its :meth:`HFProgress.note`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfft.experiment.strategies.catalog import largest_m

if TYPE_CHECKING:
    from hfft.experiment.records import HFProgressEntry

__all__ = ["LITTLE", "HFProgress", "progress_note", "progress_verdict", "strategy_note"]

LITTLE = 0.5
"""Below this share of accepted steps a run made little progress."""

NEGLIGIBLE = 1e-4
"""Accepted steps that lowered the B̄ loss by less than this share of it in all made none."""


@dataclass
class HFProgress:
    """The HF steps of one run, counted as they are taken.

    Attributes:
        m: Size of B (gradient and curvature).
        m_bar: Size of B̄ (damping, backtracking, line search).
        n_train: Training samples (the largest B and B̄ together).
        rho_batch: Where the optimizer measured ρ: ``"eval"`` (B̄) or ``"curvature"`` (B).
    """

    m: int
    m_bar: int
    n_train: int
    steps: int = 0
    accepted: int = 0
    rhos: list[float] = field(default_factory=list)
    max_damping: float = 0.0
    decrease: float = 0.0
    """Sum over accepted steps of (loss before − loss after) / loss before, on B̄."""
    rho_batch: str = "eval"

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one HF step record (a :class:`hfft.optim.StepRecord` as a dict)."""
        self.steps += 1
        rho, damping = record.get("rho"), record.get("damping")
        if isinstance(rho, (int, float)) and math.isfinite(rho):
            self.rhos.append(float(rho))
        if isinstance(damping, (int, float)) and math.isfinite(damping):
            self.max_damping = max(self.max_damping, float(damping))
        if record.get("accepted"):
            self.accepted += 1
            before, after = record.get("loss_before"), record.get("loss_after")
            if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
                self.decrease += (before - after) / abs(before)

    @property
    def verdict(self) -> str:
        """``none`` (no step taken, or the steps taken changed the loss on B̄ by float
        noise), ``little`` (fewer than half of the steps taken) or ``made``."""
        if self.accepted == 0 or self.decrease < NEGLIGIBLE:
            return "none"
        if self.accepted < LITTLE * self.steps:
            return "little"
        return "made"

    def to_dict(self) -> HFProgressEntry:
        """The ``hf_progress`` entry of ``metrics.json``."""
        median = statistics.median(self.rhos) if self.rhos else None
        facts = (self.verdict, self.steps, self.accepted, median, self.m, self.n_train)
        return {
            "verdict": self.verdict,
            "steps": self.steps,
            "accepted": self.accepted,
            "median_rho": median,
            "max_damping": self.max_damping or None,
            "m": self.m,
            "eval_batch_size": self.m_bar,
            "n_train": self.n_train,
            "rho_batch": self.rho_batch,
            "note": progress_note(*facts, self.rho_batch),
        }


def _rho_on(rho_batch: Any) -> str:
    """The batch ρ was measured on (``rho_batch``; B̄ for an entry written before it was kept)."""
    return "B" if rho_batch == "curvature" else "B̄"


def progress_note(
    verdict: str,
    steps: int,
    accepted: int,
    median_rho: float | None,
    m: int,
    n_train: int,
    rho_batch: str = "eval",
) -> str | None:
    """One or two sentences on a run where HF made no or little progress (else ``None``)."""
    if verdict == "made":
        return None
    if not steps:
        return "HF took no step: the run ended before its first step did."
    where = _rho_on(rho_batch)
    rho = f" (median ρ on {where} {median_rho:.2f})" if median_rho is not None else ""
    if verdict == "little":
        head = f"HF made little progress: only {accepted} of {steps} steps were taken{rho}."
        return head + _why(m, n_train, "mostly did not lower")
    if accepted == 0:
        head = f"HF made no progress: none of its {steps} steps was taken{rho}."
        return head + _why(m, n_train, "did not lower")
    head = (
        f"HF made no progress: {accepted} of {steps} steps were taken, but together they "
        f"lowered the loss on B̄ by less than {100 * NEGLIGIBLE:g} %{rho}."
    )
    return head + _why(m, n_train, "did not noticeably lower")


def strategy_note(strategy: str, entries: Sequence[Mapping[str, Any]]) -> str | None:
    """The note of ``compare`` on one HF strategy over its seeds (``hf_progress`` entries):
    ``None`` unless at least half of them made no or little progress."""
    verdict = progress_verdict(entries)
    if verdict is None:
        return None
    poor = [e for e in entries if e["verdict"] in ("none", "little")]
    taken = _span([e["accepted"] for e in poor])
    steps = _span([e["steps"] for e in poor])
    rhos = [r for e in poor if isinstance(r := e.get("median_rho"), (int, float))]
    where = _rho_on(poor[0].get("rho_batch"))
    rho = f", median ρ on {where} {statistics.median(rhos):.2f}" if rhos else ""
    how = "did not lower" if verdict == "no" else "mostly did not lower"
    return (
        f"{strategy}: HF made {verdict} progress in {len(poor)} of {len(entries)} seeds "
        f"({taken} of {steps} steps taken{rho})." + _why(poor[0]["m"], poor[0]["n_train"], how)
    )


def progress_verdict(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """``"no"`` or ``"little"`` when at least half of the seeds made no or little progress
    (``"no"``: all of those none), else ``None``."""
    poor = [e for e in entries if e["verdict"] in ("none", "little")]
    if not entries or 2 * len(poor) < len(entries):
        return None
    return "no" if all(e["verdict"] == "none" for e in poor) else "little"


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _why(m: int, n_train: int, how: str) -> str:
    """What no progress means and what to try; ``how`` the steps failed ("did not lower")."""
    why = (
        f" The step fitted to B (m={m}) {how} the loss on B̄, a second batch of training "
        "data: the model fits its training data closely, or m is small for this model."
    )
    larger = min(largest_m(n_train), 4 * m)
    if larger > m:
        return why + f" Try a larger m (hf:m={larger}) or a first-order strategy (sgd-cosine)."
    return why + " m is as large as the data allow: try a first-order strategy (sgd-cosine)."
