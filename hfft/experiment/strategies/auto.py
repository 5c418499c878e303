"""``auto``: SGD from the checkpoint, switching to Hessian-free when HF pays more.

The paper's conclusion asks for "hybrid approaches, which autonomously switch
to second-order methods at the end of training". :class:`AutoRunner` runs the
checkpoint's constant-rate SGD (the ``sgd`` strategy) and, once per *window*
of ``interval`` × the budget, takes one HF step as a *probe* (the first after
``first`` × the budget; ``first=0`` probes before any SGD step). Both optimizers
are measured on the same batch B̄ and on the objective the HF step minimises
(loss + L2, :meth:`hfft.optim.optimizer.HessianFree.objective`):

- SGD's rate: the decrease of the B̄ objective from the start of the window
  to the probe, divided by the seconds of the window's SGD steps. B̄ (and
  the probe's B) are drawn when the window opens, so the decrease is paired —
  the same samples before and after — and its noise is SGD's movement, not
  the difference between two batches.
- HF's rate: the decrease of the same B̄ objective by the probe step, divided
  by the probe step's seconds.

:func:`decide` then applies the rule:

1. the probe lowered the B̄ objective, its reduction ratio ρ (that decrease
   over the decrease HF's quadratic model on B predicted) is at least
   ``rho_min``, and — only if ``margin`` > 0 — HF's rate exceeds ``margin`` ×
   SGD's or SGD did not lower the objective over its window → **switch**:
   the probe step is kept and the following steps are HF;
2. otherwise the probe is **rolled back**: parameters and buffers are
   restored bit for bit, and since SGD's optimizer state and sampler were
   never touched, SGD goes on exactly as the ``sgd`` strategy with the same
   seed would have (only later, by the probe's time). A probe that does not
   pay off is not taken. The next window is ``backoff`` times longer.

The defaults (``rho_min`` 0.5, ``margin`` 0, ``backoff`` 2) decide by ρ alone.
ρ says whether HF will keep its pace: where HF's model of the loss on B does
not carry over to B̄, its damping grows at every step and it stalls within a
few steps, which the rate of one probe step cannot see; on the digits problem
the first HF step's ρ was 1.0–1.4 from an early checkpoint, where HF then
kept its pace for the whole budget, and 0.1–0.4 from later ones, where it
stalled. Comparing one HF step's rate with SGD's over a window (``margin`` >
0) was measured too and is the worse rule there (docs/auto.md).

Rolling back even a probe that lowered the objective is deliberate: on the
digits problem, SGD at the training rate resumed after a kept HF step was
often unstable (the B̄ loss of one run jumped from 0.01 to 0.5 in the next
window), while the rolled-back run cannot do worse than its own SGD phase.
Probes, and the one B̄ evaluation that opens each window, run inside
:meth:`AutoRunner.step`, so they are charged to the budget like every step;
neither is counted in the rates. HF keeps what rolled-back probes taught it
(its damping and CG warm start).

Once switched, HF can stall: with a small B its steps stop lowering the loss
that matters long before SGD's do. With ``switch_back`` (off by default), after
every window of HF steps auto computes HF's rate over the window (the sum of
its steps' B̄ decreases over their seconds) and, if it has fallen below
SGD's last measured rate or below ``stall`` × HF's best rate so far (or HF
made no progress), starts an SGD **trial**
from HF's parameters: SGD's momentum is reset, a fresh B̄ is drawn and
evaluated, and SGD runs for one window. :func:`decide_back` then judges it
like a probe, the other way round: if SGD lowered that B̄ objective faster
than ``margin`` × HF's rate, auto stays on SGD (windows and probes as at the
start); otherwise — also when SGD diverges — parameters and buffers are
restored to HF's, HF goes on, and the next check waits twice as long. The
trial, like a probe, is taken only when it pays, so the instability noted
above cannot cost more than the trial's time. docs/auto.md reports how the
rule and its variants fare on the digits problem of ``hfft demo``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

from hfft._io import number
from hfft.experiment.records import AutoStepEntry, ProbeEntry, RunnerReport, TrialEntry
from hfft.experiment.snapshot import snapshot
from hfft.experiment.strategies.catalog import AUTO_RULE_OPTIONS
from hfft.experiment.strategies.registry import Strategy
from hfft.experiment.strategies.runners import (
    HFRunner,
    Runner,
    SGDRunner,
    SGDSettings,
    check_hf,
    check_sgd,
    sgd_settings,
)
from hfft.experiment.strategies.switch_rule import (
    ACTIONS,
    DEFAULT_MARGIN,
    DEFAULT_RHO_MIN,
    Decision,
    ProbeMeasurement,
    decide,
    decide_back,
    rate,
)
from hfft.optim import distributed
from hfft.optim.step_context import synced_time

if TYPE_CHECKING:
    from torch import nn

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.strategies.registry import RunnerContext, StartingFacts
    from hfft.experiment.strategies.runners import Batch

__all__ = [
    "ACTIONS",
    "DEFAULT_BACKOFF",
    "DEFAULT_INTERVAL",
    "DEFAULT_MARGIN",
    "DEFAULT_RHO_MIN",
    "DEFAULT_STALL",
    "DEFAULT_SWITCH_BACK",
    "HF_SEED_OFFSET",
    "AutoRunner",
    "Decision",
    "ProbeMeasurement",
    "build_auto",
    "check_auto",
    "decide",
    "decide_back",
    "parts",
]

DEFAULT_INTERVAL: float = AUTO_RULE_OPTIONS["interval"].default
"""Budget fraction of SGD before each probe."""

DEFAULT_BACKOFF: float = AUTO_RULE_OPTIONS["backoff"].default
"""Factor by which the window grows after each rolled-back probe (1: fixed windows).

Doubling bounds the probes' cost where HF never pays (about log2 of 1/interval
probes): on digits one probe cost about a tenth of a 30 % budget."""

HF_SEED_OFFSET = 7919
"""HF's batches come from their own stream (seed + offset), SGD's from the run's seed."""

DEFAULT_SWITCH_BACK: bool = AUTO_RULE_OPTIONS["switch_back"].default
"""Whether ``auto`` tries SGD again when HF slows down (see :data:`DEFAULT_STALL`).

Off by default: on the digits problem 22 of 23 SGD trials after HF steps were
rolled back (SGD at the training rate raised the loss from HF's parameters),
so trials only cost time there (docs/auto.md)."""

DEFAULT_STALL: float = AUTO_RULE_OPTIONS["stall"].default
"""HF has slowed down when its rate over a window is below this fraction of its best."""


def _value(value: Any) -> float:
    """A number of a step record (``None`` there when not finite) as a float, NaN if none."""
    read = number(value)
    return math.nan if read is None else read


def parts(strategy: Strategy) -> tuple[Strategy, Strategy]:
    """The constant-rate ``sgd`` and the ``hf`` strategy that ``auto`` is made of: its SGD
    options, and ``m`` with its ``hf_*`` options without the prefix."""
    from hfft.experiment.strategies.catalog import AUTO_HF_PREFIX, SGD_OPTIONS

    sgd = {k: v for k, v in strategy.options.items() if k in SGD_OPTIONS}
    hf = {
        k.removeprefix(AUTO_HF_PREFIX): v
        for k, v in strategy.options.items()
        if k == "m" or k.startswith(AUTO_HF_PREFIX)
    }
    return Strategy("sgd", sgd), Strategy("hf", hf)


def check_auto(strategy: Strategy, facts: StartingFacts) -> None:
    """HF's batches fit the data (and its preconditioner the loss: ``hf_preconditioner=kfac``),
    and SGD's rate and batch size are known and fit it."""
    check_hf(parts(strategy)[1], facts)
    check_sgd(strategy, facts)


def build_auto(strategy: Strategy, context: RunnerContext) -> AutoRunner:
    """The runner of ``auto``."""
    c = context
    return AutoRunner(
        strategy,
        c.model,
        c.splits,
        c.settings,
        eval_batch_size=c.eval_batch_size,
        evaluations=c.evaluations,
    )


class AutoRunner(Runner):
    """Constant-rate SGD with HF probes, switching to HF by :func:`decide`.

    Args:
        strategy: An ``auto`` strategy (:data:`hfft.experiment.strategies.catalog.AUTO_OPTIONS`).
        model: The network (shared by both optimizers).
        splits: The data.
        settings: The checkpoint's loss, SGD rate, batch size and momentum (the
            strategy's options take precedence), L2 of the objective for both
            optimizers, and the run's seed (SGD draws the same batches as ``sgd``).
        eval_batch_size: Size of B̄ (default as for ``hf``).
        evaluations: Number of evaluations (for the schedule interface).
    """

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        settings: SGDSettings,
        *,
        eval_batch_size: int | None,
        evaluations: int,
    ) -> None:
        sgd_settings(strategy, settings.lr, settings.batch_size)  # auto's own words if missing
        sgd, hf = parts(strategy)
        self.sgd = SGDRunner(sgd, model, splits, settings, evaluations=evaluations)
        self.hf = HFRunner(
            hf,
            model,
            splits,
            loss_fn=settings.loss_fn,
            weight_decay=settings.weight_decay,
            eval_batch_size=eval_batch_size,
            seed=settings.seed + HF_SEED_OFFSET,
        )
        self.model = model
        self.interval = float(strategy.get("interval"))
        self.first = float(strategy.options.get("first", self.interval))
        self.margin = float(strategy.get("margin"))
        self.backoff = float(strategy.get("backoff"))
        self.rho_min = float(strategy.get("rho_min"))
        self._interval = self.interval
        self.setup_seconds = self.hf.setup_seconds
        self.step_samples = self.sgd.step_samples
        self.cuda = splits.train_y.device.type == "cuda"
        self.phase = "sgd"
        self.count = 0
        self.switch: ProbeEntry | None = None
        self.probes: list[ProbeEntry] = []
        self._window: tuple[tuple[Batch, Batch], float] | None = None
        self._window_seconds = 0.0
        self._window_steps = 0
        self._next_probe = self.first
        self.switch_back = bool(strategy.get("switch_back"))
        self.trials: list[TrialEntry] = []
        self.stall = float(strategy.get("stall"))
        self._sgd_rate = math.nan  # SGD's rate over its last measured window
        self._hf_best = math.nan  # HF's best rate: a probe's or a window's
        self._hf_window = [0.0, 0.0]  # HF's B̄ gain and seconds since the last check
        self._check_interval = self.interval
        self._next_check = math.inf
        self._trial: dict[str, Any] | None = None

    def _slowest(self, seconds: float) -> float:
        """Data-parallel: the slowest rank's seconds, so every rank decides alike."""
        return distributed.all_reduce_max(seconds, next(self.model.parameters()).device)

    def _now(self) -> float:
        return synced_time(self.cuda)

    def _open_window(self, fraction: float) -> None:
        """Draw the next probe's batches and measure the B̄ objective where SGD starts."""
        batches = self.hf.draw()
        self._window = (batches, self.hf.objective(batches[1]))
        self._window_seconds = 0.0
        self._window_steps = 0
        self._next_probe = fraction + (self._interval if self.probes else self.first)

    def step(self, fraction: float) -> AutoStepEntry:
        self.count += 1
        return cast(AutoStepEntry, self._dispatch(fraction))

    def _dispatch(self, fraction: float) -> dict[str, Any]:
        if self.phase == "hf":
            if self.switch_back and fraction >= self._next_check:
                self._check_hf(fraction)
            if self.phase == "hf":
                return self._hf_step(fraction)
        if self.phase == "trial":
            assert self._trial is not None
            if self.sgd.diverged or (fraction >= self._trial["end"] and self._trial["steps"] > 0):
                extra = self._end_trial(fraction)
                return {**self._dispatch(fraction), "trial": extra}
            return self._sgd_step(fraction)
        if self._window is None:
            self._open_window(fraction)
        # a probe follows a window of SGD steps; only the first may come at once (first=0)
        if fraction >= self._next_probe and (self._window_steps > 0 or not self.probes):
            return self._probe(fraction)
        return self._sgd_step(fraction)

    def _sgd_step(self, fraction: float) -> dict[str, Any]:
        start = self._now()
        record = self.sgd.step(fraction)
        seconds = self._now() - start
        if self._trial is not None:
            self._trial["seconds"] += seconds
            self._trial["steps"] += 1
        else:
            self._window_seconds += seconds
            self._window_steps += 1
        self.step_samples = self.sgd.step_samples
        self.diverged = self.sgd.diverged
        return self._tag(record, "trial" if self._trial is not None else "sgd")

    def _hf_step(self, fraction: float) -> dict[str, Any]:
        start = self._now()
        record = self.hf.step(fraction)
        seconds = self._now() - start
        gain = _value(record["loss_before"]) - _value(record["loss_after"])
        self._hf_window[0] += gain if math.isfinite(gain) else 0.0
        self._hf_window[1] += seconds
        self.step_samples = self.hf.step_samples
        return self._tag(record, "hf")

    def _enter_hf(self, fraction: float) -> None:
        self.phase = "hf"
        self._hf_window = [0.0, 0.0]
        self._next_check = fraction + self._check_interval

    def _check_hf(self, fraction: float) -> None:
        """After a window of HF: start an SGD trial if HF has slowed down (module docstring)."""
        gain, seconds = self._hf_window[0], self._slowest(self._hf_window[1])
        hf_rate = rate(gain, seconds)
        self._hf_window = [0.0, 0.0]
        self._next_check = fraction + self._check_interval
        slowed = (
            not (hf_rate > 0) or hf_rate < self._sgd_rate or hf_rate < self.stall * self._hf_best
        )
        self._hf_best = max(self._hf_best, hf_rate) if math.isfinite(self._hf_best) else hf_rate
        if not slowed:
            return
        # SGD restarts from HF's parameters: fresh momentum, its window on a new B̄
        saved = snapshot(self.model)
        eval_batch = self.hf.draw()[1]
        self.sgd.opt.state.clear()
        self.phase = "trial"
        self._trial = {
            "saved": saved,
            "eval_batch": eval_batch,
            "start_loss": self.hf.objective(eval_batch),
            "hf_rate": hf_rate,
            "end": fraction + self.interval,
            "seconds": 0.0,
            "steps": 0,
            "start_step": self.count,
            "start_fraction": fraction,
        }

    def _end_trial(self, fraction: float) -> dict[str, Any]:
        """Judge an SGD trial by :func:`decide_back`: stay on SGD or restore HF's parameters."""
        assert self._trial is not None
        trial, self._trial = self._trial, None
        sgd_gain = trial["start_loss"] - self.hf.objective(trial["eval_batch"])
        sgd_seconds = self._slowest(trial["seconds"])
        decision = decide_back(sgd_gain, sgd_seconds, trial["hf_rate"], self.margin)
        sgd_rate = rate(sgd_gain, sgd_seconds)
        if decision.rolls_back:
            self.model.load_state_dict(trial["saved"])
            self.sgd.diverged = self.diverged = False  # a diverged trial is undone
            self._check_interval *= 2  # a trial that did not pay: try less often
            self._enter_hf(fraction)
        else:  # back on SGD: windows and probes as at the start (the next step opens one)
            self.phase = "sgd"
            self._sgd_rate = sgd_rate
            self._window = None
        values = {
            "sgd_gain": sgd_gain,
            "sgd_seconds": sgd_seconds,
            "sgd_steps": trial["steps"],
            "sgd_rate": sgd_rate,
            "hf_rate": trial["hf_rate"],
        }
        entry = {
            "step": trial["start_step"],
            "fraction": trial["start_fraction"],
            "end_step": self.count,
            "end_fraction": fraction,
            **values,
            "decision": "back to sgd" if decision.action == "switch" else "back to hf",
            "reason": decision.reason,
        }
        self.trials.append(cast(TrialEntry, entry))
        return {k: v for k, v in entry.items() if k not in ("step", "fraction")}

    def _tag(self, record: Mapping[str, Any], phase: str) -> dict[str, Any]:
        hf_step = (
            {"hf_step": record["step"]} if "step" in record and phase in ("hf", "probe") else {}
        )
        return {**record, **hf_step, "step": self.count, "phase": phase}

    def _probe(self, fraction: float) -> dict[str, Any]:
        assert self._window is not None
        batches, f_start = self._window
        saved = snapshot(self.model)
        start = self._now()
        try:
            record = self.hf.step_on(batches, fraction)
        except BaseException:  # interrupted or failed inside the probe: it was never accepted
            self.model.load_state_dict(saved)
            raise
        hf_seconds = self._now() - start
        f_now, f_after = _value(record["loss_before"]), _value(record["loss_after"])
        measurement = ProbeMeasurement(
            sgd_gain=f_start - f_now,
            sgd_seconds=self._slowest(self._window_seconds),
            sgd_steps=self._window_steps,
            hf_gain=f_now - f_after,
            hf_seconds=self._slowest(hf_seconds),
            rho=_value(record.get("rho")),
        )
        decision = decide(measurement, self.margin, self.rho_min)
        if decision.rolls_back:
            self.model.load_state_dict(saved)
        self.step_samples = self.hf.step_samples
        values = {
            **asdict(measurement),
            "sgd_rate": measurement.sgd_rate,
            "hf_rate": measurement.hf_rate,
        }
        probe = {
            "step": self.count,
            "fraction": fraction,
            **values,
            "decision": decision.action,
            "reason": decision.reason,
        }
        self.probes.append(cast(ProbeEntry, probe))
        self._sgd_rate = measurement.sgd_rate
        if decision.action == "switch":
            self._hf_best = measurement.hf_rate
            self._enter_hf(fraction)
            self.switch = self.switch or cast(ProbeEntry, probe)
        elif measurement.sgd_steps > 0:  # the window grows; a probe at once (first=0) had none
            self._interval *= self.backoff
        # the next window opens with the next SGD step, at the fraction after this probe
        self._window = None
        extra = {k: v for k, v in probe.items() if k not in ("step", "fraction")}
        return {**self._tag(record, "probe"), "probe": extra}

    def settings(self) -> dict[str, float]:
        return self.hf.settings() if self.phase == "hf" else self.sgd.settings()

    def settle(self) -> None:
        """A trial in progress was never accepted: put HF's parameters back."""
        if self._trial is not None:
            self.model.load_state_dict(self._trial["saved"])
            self._trial = None
            self.phase = "hf"
            self.sgd.diverged = self.diverged = False

    def report(self) -> RunnerReport:
        return {
            "auto": {
                "interval": self.interval,
                "first": self.first,
                "margin": self.margin,
                "backoff": self.backoff,
                "rho_min": self.rho_min,
                "m": self.hf.m,
                "curvature_products": self.hf.opt.product_path,
                "eval_batch_size": self.hf.m_bar,
                "switch_back": self.switch_back,
                "stall": self.stall,
                "switched": self.switch is not None,
                "switch": self.switch,
                "probes": self.probes,
                "trials": self.trials,
            }
        }
