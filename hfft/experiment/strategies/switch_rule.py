"""The decisions of ``auto``: when a probe switches to HF, when a trial goes back to SGD.

Pure functions of measured numbers, so that the rule can be tested and
reasoned about without running anything; :mod:`hfft.experiment.strategies.auto` explains the rule
and runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hfft.experiment.strategies.catalog import AUTO_RULE_OPTIONS

__all__ = [
    "ACTIONS",
    "DEFAULT_MARGIN",
    "DEFAULT_RHO_MIN",
    "Decision",
    "ProbeMeasurement",
    "decide",
    "decide_back",
    "rate",
]

DEFAULT_MARGIN: float = AUTO_RULE_OPTIONS["margin"].default
"""With ``margin`` > 0, HF must also lower the B̄ objective faster than ``margin`` × SGD
per second to switch; 0 (the default) leaves the decision to ρ."""

DEFAULT_RHO_MIN: float = AUTO_RULE_OPTIONS["rho_min"].default
"""A probe whose reduction ratio ρ is below this is rolled back (0: no such test).

Between the Levenberg-Marquardt rule's own thresholds (it raises the damping
below 1/4 and lowers it above 3/4). On the digits problem the probes' ρ was
at least 0.5 in 31 of 36 probes from an early checkpoint, where HF keeps its
pace, and in 7 of 35 from a middle and a late one, where it stalls."""

ACTIONS = ("switch", "roll back")
"""What :func:`decide` can choose."""


def rate(gain: float, seconds: float) -> float:
    """Decrease of the B̄ objective per second (NaN without time)."""
    return gain / seconds if seconds > 0 else math.nan


@dataclass(frozen=True)
class ProbeMeasurement:
    """What one probe measured, all on the same B̄ and the same objective.

    Attributes:
        sgd_gain: Decrease of the B̄ objective over the SGD window.
        sgd_seconds: Seconds of the window's SGD steps.
        sgd_steps: Number of SGD steps in the window.
        hf_gain: Decrease of the B̄ objective by the probe step.
        hf_seconds: Seconds of the probe step.
        rho: The probe step's reduction ratio ρ (its B̄ decrease over the
            decrease its quadratic model on B predicted; NaN if not measured).
    """

    sgd_gain: float
    sgd_seconds: float
    sgd_steps: int
    hf_gain: float
    hf_seconds: float
    rho: float = math.nan

    @property
    def sgd_rate(self) -> float:
        """SGD's decrease per second (NaN without SGD time)."""
        return rate(self.sgd_gain, self.sgd_seconds)

    @property
    def hf_rate(self) -> float:
        """The probe's decrease per second (NaN without HF time)."""
        return rate(self.hf_gain, self.hf_seconds)


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` chose: ``switch`` or ``roll back``, and why."""

    action: str
    reason: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")

    @property
    def rolls_back(self) -> bool:
        """Whether the probe step is undone."""
        return self.action == "roll back"


def decide(
    measurement: ProbeMeasurement, margin: float = DEFAULT_MARGIN, rho_min: float = DEFAULT_RHO_MIN
) -> Decision:
    """The switching rule of ``auto`` (module docstring).

    Args:
        measurement: The probe's measurements.
        margin: HF's rate must exceed ``margin`` × SGD's rate (0: no rate test).
        rho_min: The probe's ρ must be at least this (0: not tested).

    Returns:
        ``switch`` if the probe lowered the B̄ objective with ρ ≥ ``rho_min``
        and, when ``margin`` > 0, either SGD did not lower it (over its
        window) or HF's rate exceeds ``margin`` × SGD's — a probe before any
        SGD step (``first=0``) has no SGD rate and is judged by ρ alone;
        ``roll back`` otherwise, also when a rate the rule needs could not be
        measured.

    Raises:
        ValueError: If ``margin`` is negative or not finite.
    """
    _check_margin(margin)
    hf, sgd = measurement.hf_rate, measurement.sgd_rate
    if not (math.isfinite(hf) and hf > 0):
        return Decision("roll back", "the probe did not lower the B̄ loss")
    if rho_min > 0 and not measurement.rho >= rho_min:
        return Decision(
            "roll back",
            f"the probe's reduction ratio ρ = {measurement.rho:.2f} is below {rho_min:g}: "
            "HF's model of the loss does not carry over to B̄",
        )
    if margin == 0:
        return Decision(
            "switch", f"the probe lowered the B̄ loss with ρ = {measurement.rho:.2f} ≥ {rho_min:g}"
        )
    if measurement.sgd_steps == 0:
        return Decision(
            "switch",
            f"the probe lowered the B̄ loss with ρ = {measurement.rho:.2f} ≥ {rho_min:g} "
            "before any SGD step (no rate to compare with)",
        )
    if not math.isfinite(sgd):
        return Decision("roll back", "SGD's rate over the window could not be measured")
    if sgd <= 0:
        return Decision(
            "switch", f"SGD did not lower the B̄ loss over {measurement.sgd_steps} steps; HF did"
        )
    return _faster("HF", hf, "SGD", sgd, margin)


def decide_back(
    sgd_gain: float, sgd_seconds: float, hf_rate: float, margin: float = DEFAULT_MARGIN
) -> Decision:
    """The rule that ends an SGD *trial* after a stretch of HF (module docstring).

    Args:
        sgd_gain: Decrease of the trial's B̄ objective over the trial's SGD steps.
        sgd_seconds: Seconds of those steps.
        hf_rate: HF's decrease of its B̄ objective per second over its last window.
        margin: SGD's rate must exceed ``margin`` × HF's rate.

    Returns:
        ``switch`` (stay on SGD) if SGD lowered the B̄ objective and either HF
        did not (over its window) or SGD's rate exceeds ``margin`` × HF's;
        ``roll back`` (return to HF's parameters) otherwise.
    """
    _check_margin(margin)
    sgd = rate(sgd_gain, sgd_seconds)
    if not (math.isfinite(sgd) and sgd > 0):
        return Decision("roll back", "SGD did not lower the B̄ loss over its trial")
    if not (math.isfinite(hf_rate) and hf_rate > 0):
        return Decision("switch", "HF did not lower its B̄ loss over its last window; SGD did")
    return _faster("SGD", sgd, "HF", hf_rate, margin)


def _check_margin(margin: float) -> None:
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")


def _faster(new: str, new_rate: float, old: str, old_rate: float, margin: float) -> Decision:
    """``switch`` to ``new`` if its rate exceeds ``margin`` × ``old``'s, else ``roll back``."""
    ratio = new_rate / old_rate
    if ratio > margin:
        return Decision(
            "switch", f"{new} lowered the B̄ loss {ratio:.3g}× as fast as {old} per second"
        )
    return Decision(
        "roll back",
        f"{new} lowered the B̄ loss only {ratio:.3g}× as fast as {old} (needs > {margin:g}×)",
    )
