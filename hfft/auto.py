"""``auto``: SGD from the checkpoint, switching to Hessian-free when HF pays more.

The paper's conclusion asks for "hybrid approaches, which autonomously switch
to second-order methods at the end of training". :class:`AutoRunner` runs the
checkpoint's constant-rate SGD (the ``sgd`` strategy) and, once per *window*
of ``interval`` × the budget, takes one HF step as a *probe*. Both optimizers
are measured on the same batch B̄ and on the objective the HF step minimises
(loss + L2, :meth:`hfft.optimizer.HessianFree.objective`):

- SGD's rate: the decrease of the B̄ objective from the start of the window
  to the probe, divided by the seconds of the window's SGD steps. B̄ (and
  the probe's B) are drawn when the window opens, so the decrease is paired —
  the same samples before and after — and its noise is SGD's movement, not
  the difference between two batches.
- HF's rate: the decrease of the same B̄ objective by the probe step, divided
  by the probe step's seconds.

:func:`decide` then applies the rule:

1. HF's rate exceeds ``margin`` × SGD's, or SGD did not lower the B̄
   objective over its window while the probe did → **switch**: the probe
   step is kept and every later step is HF;
2. otherwise the probe is **rolled back**: parameters and buffers are
   restored bit for bit, and since SGD's optimizer state and sampler were
   never touched, SGD goes on exactly as the ``sgd`` strategy with the same
   seed would have (only later, by the probe's time). A probe that does not
   pay off is not taken.

Rolling back even a probe that lowered the objective is deliberate: on the
digits problem, SGD at the training rate resumed after a kept HF step was
often unstable (the B̄ loss of one run jumped from 0.01 to 0.5 in the next
window), while the rolled-back run cannot do worse than its own SGD phase.
Probes, and the one B̄ evaluation that opens each window, run inside
:meth:`AutoRunner.step`, so they are charged to the budget like every step;
neither is counted in the rates. Once switched, ``auto`` stays on HF, which
never applies a step that raises its B̄ objective. HF keeps what rolled-back
probes taught it (its damping and CG warm start). The defaults
(:data:`DEFAULT_INTERVAL`, :data:`DEFAULT_MARGIN`) are the neutral choices;
the README reports how they fare on the digits problem of ``hfft demo``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from hfft import distributed
from hfft.runners import HFRunner, Runner, SGDRunner

if TYPE_CHECKING:
    from torch import nn

    from hfft.data import DataSplits
    from hfft.runners import Batch
    from hfft.strategies import Strategy

__all__ = [
    "ACTIONS",
    "DEFAULT_BACKOFF",
    "DEFAULT_INTERVAL",
    "DEFAULT_MARGIN",
    "HF_SEED_OFFSET",
    "AutoRunner",
    "Decision",
    "ProbeMeasurement",
    "decide",
]

DEFAULT_INTERVAL = 0.1
"""Budget fraction of SGD before each probe."""

DEFAULT_MARGIN = 1.0
"""HF must lower the B̄ objective faster than ``margin`` × SGD per second to switch."""

DEFAULT_BACKOFF = 1.0
"""Factor by which the window grows after each rolled-back probe (1: fixed windows)."""

HF_SEED_OFFSET = 7919
"""HF's batches come from their own stream (seed + offset), SGD's from the run's seed."""

ACTIONS = ("switch", "roll back")
"""What :func:`decide` can choose."""


@dataclass(frozen=True)
class ProbeMeasurement:
    """What one probe measured, all on the same B̄ and the same objective.

    Attributes:
        sgd_gain: Decrease of the B̄ objective over the SGD window.
        sgd_seconds: Seconds of the window's SGD steps.
        sgd_steps: Number of SGD steps in the window.
        hf_gain: Decrease of the B̄ objective by the probe step.
        hf_seconds: Seconds of the probe step.
    """

    sgd_gain: float
    sgd_seconds: float
    sgd_steps: int
    hf_gain: float
    hf_seconds: float

    @property
    def sgd_rate(self) -> float:
        """SGD's decrease per second (NaN without SGD time)."""
        return self.sgd_gain / self.sgd_seconds if self.sgd_seconds > 0 else math.nan

    @property
    def hf_rate(self) -> float:
        """The probe's decrease per second (NaN without HF time)."""
        return self.hf_gain / self.hf_seconds if self.hf_seconds > 0 else math.nan


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


def decide(measurement: ProbeMeasurement, margin: float = DEFAULT_MARGIN) -> Decision:
    """The switching rule of ``auto`` (module docstring).

    Args:
        measurement: The probe's measurements.
        margin: HF's rate must exceed ``margin`` × SGD's rate.

    Returns:
        ``switch`` if the probe lowered the B̄ objective and either SGD did
        not (over its window) or HF's rate exceeds ``margin`` × SGD's;
        ``roll back`` otherwise, also when a rate could not be measured.

    Raises:
        ValueError: If ``margin`` is not positive and finite.
    """
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be positive and finite, got {margin}")
    hf, sgd = measurement.hf_rate, measurement.sgd_rate
    if not (math.isfinite(hf) and hf > 0):
        return Decision("roll back", "the probe did not lower the B̄ loss")
    if not math.isfinite(sgd):
        return Decision("roll back", "SGD's rate over the window could not be measured")
    if sgd <= 0:
        return Decision(
            "switch", f"SGD did not lower the B̄ loss over {measurement.sgd_steps} steps; HF did"
        )
    ratio = hf / sgd
    if ratio > margin:
        return Decision("switch", f"HF lowered the B̄ loss {ratio:.3g}× as fast as SGD per second")
    return Decision(
        "roll back",
        f"HF lowered the B̄ loss only {ratio:.3g}× as fast as SGD (needs > {margin:g}×)",
    )


def _finite(value: Any) -> float:
    # StepRecord.to_dict writes non-finite losses as None
    return float(value) if isinstance(value, (int, float)) else math.nan


class AutoRunner(Runner):
    """Constant-rate SGD with HF probes, switching to HF by :func:`decide`.

    Args:
        strategy: An ``auto`` strategy; see :data:`hfft.strategies.AUTO_OPTIONS`.
        model: The network (shared by both optimizers).
        splits: The data.
        lr: SGD learning rate (the checkpoint's unless the strategy sets it).
        batch_size: SGD batch size (likewise).
        momentum: SGD momentum (likewise).
        weight_decay: L2 of the objective, for both optimizers.
        eval_batch_size: Size of B̄ (default as for ``hf``).
        evaluations: Number of evaluations (for the schedule interface).
        seed: The run's seed; SGD draws the same batches as ``sgd`` does.
    """

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        *,
        lr: float,
        batch_size: int,
        momentum: float,
        weight_decay: float,
        eval_batch_size: int | None,
        evaluations: int,
        seed: int,
    ) -> None:
        sgd, hf = strategy.parts()
        self.sgd = SGDRunner(
            sgd,
            model,
            splits,
            lr=lr,
            batch_size=batch_size,
            momentum=momentum,
            weight_decay=weight_decay,
            evaluations=evaluations,
            seed=seed,
        )
        self.hf = HFRunner(
            hf,
            model,
            splits,
            weight_decay=weight_decay,
            eval_batch_size=eval_batch_size,
            seed=seed + HF_SEED_OFFSET,
        )
        self.model = model
        self.interval = float(strategy.options.get("interval", DEFAULT_INTERVAL))
        self.margin = float(strategy.options.get("margin", DEFAULT_MARGIN))
        self.backoff = float(strategy.options.get("backoff", DEFAULT_BACKOFF))
        self._interval = self.interval
        self.setup_seconds = self.hf.setup_seconds
        self.samples = self.sgd.samples
        self.cuda = splits.train_x.device.type == "cuda"
        self.phase = "sgd"
        self.count = 0
        self.switch: dict[str, Any] | None = None
        self.probes: list[dict[str, Any]] = []
        self._window: tuple[tuple[Batch, Batch], float] | None = None
        self._window_seconds = 0.0
        self._window_steps = 0
        self._next_probe = self.interval

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _open_window(self, fraction: float) -> None:
        """Draw the next probe's batches and measure the B̄ objective where SGD starts."""
        batches = self.hf.draw()
        self._window = (batches, self.hf.objective(batches[1]))
        self._window_seconds = 0.0
        self._window_steps = 0
        self._next_probe = fraction + self._interval

    def step(self, fraction: float) -> dict[str, Any]:
        self.count += 1
        if self.phase == "hf":
            record = self.hf.step(fraction)
            self.samples = self.hf.samples
            return self._tag(record, "hf")
        if self._window is None:
            self._open_window(fraction)
        if fraction >= self._next_probe and self._window_steps > 0:
            return self._probe(fraction)
        start = self._now()
        record = self.sgd.step(fraction)
        self._window_seconds += self._now() - start
        self._window_steps += 1
        self.samples = self.sgd.samples
        self.diverged = self.sgd.diverged
        return self._tag(record, "sgd")

    def _tag(self, record: dict[str, Any], phase: str) -> dict[str, Any]:
        if "step" in record and phase != "sgd":
            record["hf_step"] = record["step"]
        return {**record, "step": self.count, "phase": phase}

    def _probe(self, fraction: float) -> dict[str, Any]:
        assert self._window is not None
        batches, f_start = self._window
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        start = self._now()
        record = self.hf.take(batches, fraction)
        hf_seconds = self._now() - start
        f_now, f_after = _finite(record["loss_before"]), _finite(record["loss_after"])
        sgd_seconds = self._window_seconds
        if distributed.is_distributed():  # every rank decides alike: the slowest rank's times
            device = next(self.model.parameters()).device
            sgd_seconds = distributed.all_reduce_max(sgd_seconds, device)
            hf_seconds = distributed.all_reduce_max(hf_seconds, device)
        measurement = ProbeMeasurement(
            sgd_gain=f_start - f_now,
            sgd_seconds=sgd_seconds,
            sgd_steps=self._window_steps,
            hf_gain=f_now - f_after,
            hf_seconds=hf_seconds,
        )
        decision = decide(measurement, self.margin)
        if decision.rolls_back:
            self.model.load_state_dict(saved)
        self.samples = self.hf.samples
        values = {
            **asdict(measurement),
            "sgd_rate": measurement.sgd_rate,
            "hf_rate": measurement.hf_rate,
        }
        probe = {
            "step": self.count,
            "fraction": fraction,
            # JSON has no NaN: a value that could not be measured is null
            **{k: v if math.isfinite(v) else None for k, v in values.items()},
            "decision": decision.action,
            "reason": decision.reason,
        }
        self.probes.append(probe)
        if decision.action == "switch":
            self.phase = "hf"
            self.switch = probe
        else:
            self._interval *= self.backoff
        # the next window opens with the next SGD step, at the fraction after this probe
        self._window = None
        extra = {k: v for k, v in probe.items() if k not in ("step", "fraction")}
        return {**self._tag(record, "probe"), "probe": extra}

    def hyper(self) -> dict[str, float]:
        return self.hf.hyper() if self.phase == "hf" else self.sgd.hyper()

    def report(self) -> dict[str, Any]:
        return {
            "auto": {
                "interval": self.interval,
                "margin": self.margin,
                "backoff": self.backoff,
                "m": self.hf.m,
                "eval_batch_size": self.hf.m_bar,
                "switched": self.switch is not None,
                "switch": self.switch,
                "probes": self.probes,
            }
        }
