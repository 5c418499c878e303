"""Fine-tune a checkpoint with one strategy under one budget.

The loop reads top to bottom:

1. load the checkpoint into its model with its data split and hyperparameters,
   and check the strategy against the data — before anything is written;
2. evaluate at budget fraction 0;
3. take steps while the budget lasts — the clock runs only inside a step —
   and evaluate (clock paused) whenever the spent fraction passes the next of
   the evaluation points, the same points for every strategy;
4. evaluate at the end; write ``final.safetensors``, ``best.safetensors``
   (best on validation by the task's metric, never test; not written when the
   data has no validation split), ``evaluations.csv`` (the evaluations as a
   long table, :mod:`hfft.experiment.run.evaluations_csv`) and ``metrics.json``.

The files are written into a staging folder and swapped into ``--out`` at the
end (:class:`hfft.experiment.run.run_folder.RunFolder`), so the folder holds exactly one run's
files. What is written describes what is saved:

* Ctrl-C or SIGTERM inside a step puts back the weights from before that step
  (a trial point of HF's line search is never saved); the run evaluates the
  saved weights (off the clock), writes its files with status
  ``"interrupted"`` while further signals wait, and raises
  :class:`hfft.experiment.interrupts.Interrupted`.
* A strategy that diverges (a non-finite loss) ends with status
  ``"diverged"``, and its final weights are the last ones whose loss was
  finite; ``best`` is never an evaluation with a non-finite loss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from hfft._io import atomic_write_json, number, sha256_file
from hfft._version import __version__
from hfft.experiment.data.factories import absolute_spec
from hfft.experiment.interrupts import (
    Interrupted,
    as_interrupt,
    first_signal_stops,
    interruptible,
    signals_held,
)
from hfft.experiment.limits import check
from hfft.experiment.records import (
    FINETUNE_KIND,
    SCHEMA_VERSION,
    EvaluationEntry,
    FinetuneConfigEntry,
    FinetuneLog,
    SpentEntry,
    higher_is_better,
)
from hfft.experiment.run.budget import (
    BudgetClock,
    evaluation_fractions,
    parse_budget,
    resolve_budget,
)
from hfft.experiment.run.checkpoint import save_checkpoint
from hfft.experiment.run.evaluation import evaluate_splits
from hfft.experiment.run.evaluations_csv import CSV_NAME, finetune_rows, write_evaluations
from hfft.experiment.run.ownership import slug
from hfft.experiment.run.run_folder import RunFolder, check_not_input
from hfft.experiment.run.starting_point import StartingPointOptions
from hfft.experiment.run.train import versions
from hfft.experiment.snapshot import StepHistory
from hfft.experiment.strategies.make import make_runner
from hfft.experiment.strategies.registry import (
    Strategy,
    canonical_label,
    parse_strategy,
)
from hfft.optim import distributed

if TYPE_CHECKING:
    from collections.abc import Callable

    from hfft.experiment.run.budget import BudgetClock
    from hfft.experiment.run.starting_point import StartingPoint
    from hfft.experiment.strategies.runners import Runner

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "default_out",
    "finetune",
    "same_finetune_run",
]

WEIGHT_FILES = ("final.safetensors", "best.safetensors")
EXPORTS = (None, "lightning")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run (the command line's options, validated)."""

    checkpoint: str
    strategy: Strategy = field(default_factory=lambda: Strategy("hf"))
    budget: str = "10%"
    out: str = "finetune"
    source: StartingPointOptions = field(default_factory=StartingPointOptions)
    eval_batch_size: int | None = None
    eval_points: int = 20
    seed: int = 0
    device: str = "cpu"
    overwrite: bool = False
    export: str | None = None
    """``"lightning"``: the final weights also written into a copy of the input ``.ckpt``
    (``final.ckpt``, :mod:`hfft.experiment.run.export`)."""

    def __post_init__(self) -> None:
        if isinstance(self.strategy, str):  # a library caller's text: parsed here, once
            object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        check("eval_batch_size", self.eval_batch_size)
        check("eval_points", self.eval_points)
        check("seed", self.seed)
        if self.export not in EXPORTS:
            raise ValueError(
                f"--export takes {', '.join(e for e in EXPORTS if e)}, not {self.export!r}"
            )

    def record(self) -> FinetuneConfigEntry:
        """The configuration as ``metrics.json`` stores it under ``config`` (JSON types; the
        strategy as its label; ``export`` only when given, so that a record written before
        it existed is still the same run)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["strategy"], data["source"] = self.strategy.label, self.source.record()
        if data["export"] is None:
            del data["export"]
        return cast(FinetuneConfigEntry, json.loads(json.dumps(data)))

    def key(self) -> FinetuneConfigEntry:
        """What makes two runs the same run: the config without where it goes.

        As JSON types, as ``metrics.json`` stores it under ``config``.
        """
        data = self.record()
        del data["out"], data["overwrite"]
        return data


@dataclass(frozen=True)
class FinetuneResult:
    """How the run ended and where its files are.

    Attributes:
        files: The files written into ``out`` (names).
        missing: Weight files not written, with the reason.
    """

    out: Path
    status: str
    steps: int
    seconds: float
    fraction: float
    initial: Mapping[str, Any]
    final: Mapping[str, Any]
    best: Mapping[str, Any]
    metrics_path: Path
    log: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    missing: dict[str, str] = field(default_factory=dict)


def default_out(checkpoint: Path, strategy: Strategy) -> Path:
    """Where a run writes without ``--out``: ``finetune-STRATEGY`` beside the checkpoint."""

    return checkpoint.parent / ("finetune-" + slug(strategy.label))


def same_finetune_run(folder: Path, key: Mapping[str, Any]) -> bool:
    """Whether ``folder`` holds a run of the configuration ``key`` (its ``metrics.json``)."""
    try:
        log = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        return False
    if not isinstance(log, dict) or not isinstance(log.get("config"), dict):
        return False
    stored = {k: v for k, v in log["config"].items() if k not in ("out", "overwrite")}
    stored["strategy"] = canonical_label(stored.get("strategy"))
    return bool(stored == key)


def _finite_state(model: torch.nn.Module) -> bool:
    """Finite parameters and no NaN in buffers (a buffer may hold ±inf: an attention mask)."""
    params = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    buffers = all(not bool(b.isnan().any()) for b in model.buffers() if b.is_floating_point())
    return params and buffers


def _finite_losses(entry: Mapping[str, Any]) -> bool:
    return all(
        isinstance(v, (int, float)) and math.isfinite(v)
        for k, v in entry.items()
        if k.endswith("_loss")
    )


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _brief(entry: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("fraction", "seconds", "step")
    return {k: v for k, v in entry.items() if k in keep or k.startswith(("valid_", "test_"))}


class _Run:
    """One run's state between the steps: the log, the best point, the files."""

    def __init__(
        self,
        config: FinetuneConfig,
        src: StartingPoint,
        runner: Runner,
        clock: BudgetClock,
        out: Path,
        on_progress: Callable[[float, Mapping[str, Any]], None] | None,
    ) -> None:

        self.src, self.export, self.key = src, config.export, config.source.checkpoint_key
        self.model, self.splits, self.runner, self.clock = src.model, src.splits, runner, clock
        self.device = next(self.model.parameters()).device
        self.out, self.on_progress = out, on_progress
        self.main = distributed.is_main()  # data-parallel: rank 0 alone writes
        self.task = src.task
        self.loss_fn = src.task.loss()
        self.best_key = f"valid_{src.task.best_metric}"
        self.sign = 1.0 if higher_is_better(src.task.best_metric) else -1.0
        self.best: EvaluationEntry = {}
        self.files: dict[str, str] = {}
        self.stepping = False  # inside a step: its trial weights are not yet accepted
        label = config.strategy.label
        self.log: FinetuneLog = {
            "schema_version": SCHEMA_VERSION,
            "kind": FINETUNE_KIND,
            "status": "running",
            "config": config.record(),
            "strategy": label,
            "budget": {
                "kind": clock.budget.kind,
                "limit": clock.budget.value,
                "requested": config.budget,
            },
            "source": src.describe(),
            "versions": versions(),
            "device": str(self.device),
            "world_size": distributed.world_size(),
            "seed": config.seed,
            # one-time setup outside the clock (HF: tracing the linearisation)
            "setup_seconds": runner.setup_seconds,
            "evaluations": [],
            "steps": [],
            "initial": {},
            "final": {},
            "best": {},
        }
        self.meta = {
            "model": absolute_spec(src.model_name),
            "model_args": src.model_args,
            "data": absolute_spec(src.data_name),
            "data_seed": src.data_seed,
            "num_classes": self.splits.num_classes,
            "in_channels": self.splits.in_channels,
            "input_size": self.splits.input_size,
            "task": src.task.describe(),
            # what a later load must apply and hold out, so that every load agrees
            "normalization": self.splits.normalization,
            "valid_fraction": (src.metadata or {}).get("valid_fraction"),
            "lr": src.lr,
            "batch_size": src.batch_size,
            "momentum": src.momentum,
            "weight_decay": src.weight_decay,
            "source_checkpoint": str(src.path),
            "source_sha256": src.sha256,
            "strategy": label,
            "hfft_version": __version__,
        }

    def measure(self, charged: bool = True, keep_best: bool = False) -> EvaluationEntry:
        """The metrics of the weights the strategy stands for now (clock paused), as an
        evaluation entry; with ``keep_best``, those weights are saved if they are the best.

        What the strategy must do before an evaluation (``swa``'s and schedule-free's
        BatchNorm statistics) is ``charged`` to the budget like a step, once steps ran
        (after an interrupt it is done off the clock).
        """
        if self.clock.steps and not charged:
            self.runner.prepare_evaluation()
        elif self.clock.steps:
            self.clock.resume()
            try:
                self.runner.prepare_evaluation()
            finally:
                self.clock.pause()
        with self.runner.evaluated() as model:
            metrics = evaluate_splits(model, self.splits, self.task, self.loss_fn)
            entry = cast(
                EvaluationEntry,
                {
                    "fraction": self.clock.fraction,
                    "seconds": self.clock.seconds,
                    "step": self.clock.steps,
                    "epochs": self.clock.epochs,
                    **self.runner.settings(),
                    **metrics,
                },
            )
            if keep_best and self._better(entry) and _finite_losses(entry) and _finite_state(model):
                self.best = entry.copy()
                self._save("best.safetensors", entry, model)
        return entry

    def evaluate(self) -> EvaluationEntry:
        """Evaluate at an evaluation point; keep the weights if they are the best so far."""
        entry = self.measure(keep_best=True)
        self.log["evaluations"].append(entry)
        self.runner.observe(entry)
        if self.on_progress is not None:
            self.on_progress(self.clock.fraction, entry)
        return entry

    def _better(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry`` beats the best so far on validation (first wins ties)."""
        value = entry.get(self.best_key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        best = number(self.best.get(self.best_key))
        return best is None or self.sign * value > self.sign * best

    def _save(self, name: str, entry: Mapping[str, Any], model: torch.nn.Module) -> None:
        if self.main:
            save_checkpoint(self.out / name, _cpu_state(model), {**self.meta, **_brief(entry)})
            self.files[name] = sha256_file(self.out / name)

    def loop(self, points: list[float], history: StepHistory) -> str:
        """Steps until the budget is spent; the status they end with."""
        clock, runner = self.clock, self.runner
        next_point = 1
        while not clock.exhausted:
            history.save()
            self.stepping = True
            clock.resume()
            record = runner.step(clock.fraction)
            with signals_held():  # the step counts once it is logged, and not before
                clock.pause()
                clock.step_done(runner.step_samples)
                self.log["steps"].append(record)
                self.stepping = False
            if distributed.is_distributed():  # the slowest rank's clock, so all stop together
                clock.synchronize(distributed.all_reduce_max(clock.seconds, self.device))
            record["seconds"] = clock.seconds
            if runner.diverged:
                return "diverged"
            if self.on_progress is not None:
                self.on_progress(clock.fraction, record)
            crossed = next_point
            while next_point < len(points) - 1 and clock.fraction >= points[next_point]:
                next_point += 1
            if next_point > crossed:
                self.evaluate()
        return "completed"

    def finish(self, status: str, final: EvaluationEntry) -> None:
        """Write ``final.safetensors``, ``evaluations.csv`` and ``metrics.json`` (the caller
        holds signals)."""
        self.log["status"] = status
        self.log.update(self.runner.report())
        self.log["final"], self.log["best"] = final, self.best.copy()
        self.log["spent"] = cast(SpentEntry, self.clock.to_dict())
        with self.runner.evaluated() as model:
            if _finite_state(model):
                self._save("final.safetensors", final, model)
        if self.main:
            self._export()
            # the evaluations as a table, listed and hashed like the weights
            write_evaluations(self.out / CSV_NAME, finetune_rows(self.log))
            self.files[CSV_NAME] = sha256_file(self.out / CSV_NAME)
        self.log["files"] = dict(self.files)
        if self.main:
            atomic_write_json(self.out / "metrics.json", self.log)

    def _export(self) -> None:
        """The weight files again as the user's tools load them (:mod:`.export`)."""
        from hfft.experiment.run.export import export_weights

        names = [n for n in WEIGHT_FILES if n in self.files]
        for name in export_weights(self.out, names, self.src, self.export, self.key):
            self.files[name] = sha256_file(self.out / name)

    def _why_missing(self, name: str) -> str:
        if name == "final.safetensors":
            return "the weights were not finite"
        if not self.splits.valid_y.shape[0]:
            return "the data has no validation split to choose it on"
        return "no evaluation had finite losses"

    def result(self, out: Path) -> FinetuneResult:
        missing = {name: self._why_missing(name) for name in WEIGHT_FILES if name not in self.files}
        return FinetuneResult(
            out,
            self.log["status"],
            self.clock.steps,
            self.clock.seconds,
            self.clock.fraction,
            self.log["initial"],
            self.log["final"],
            self.best.copy(),
            out / "metrics.json",
            self.log,
            tuple([*self.files, "metrics.json"]),
            missing,
        )


def _final_after_interrupt(run: _Run, history: StepHistory) -> EvaluationEntry:
    """Put the last accepted weights back and measure them (clock paused).

    Runs after the first signal, so further signals wait
    (:func:`hfft.experiment.interrupts.first_signal_stops`) — except during the
    measurement, which a second Ctrl-C skips: ``final`` is then empty, and
    nothing claims numbers it does not have.
    """
    if run.clock.running:
        run.clock.pause()
    if run.stepping:
        history.restore_current()
    run.runner.settle()
    last = run.log["evaluations"][-1] if run.log["evaluations"] else None
    if last is not None and last["step"] == run.clock.steps:
        return last.copy()
    try:
        with interruptible():
            return run.measure(charged=False)
    except KeyboardInterrupt:
        return {}


def _final_after_divergence(run: _Run, history: StepHistory) -> EvaluationEntry:
    """Go back to the last weights whose loss was finite, and measure them."""
    if not history.restore_previous():
        history.restore_current()
    return run.measure()


def finetune(
    config: FinetuneConfig,
    source: StartingPoint | None = None,
    on_progress: Callable[[float, Mapping[str, Any]], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Run one strategy from a checkpoint under a budget and write its outputs.

    Args:
        config: The run.
        source: The loaded checkpoint (loaded from ``config`` when ``None``).
        on_progress: Called as ``on_progress(fraction, info)`` after every step
            (with its record) and every evaluation (with its entry), for progress
            bars and for ``auto``'s switch line.
        on_note: Called with one sentence for what the user should know
            (a checkpoint cast to another precision, an earlier run replaced).

    Returns:
        The :class:`FinetuneResult`.

    Raises:
        Interrupted: On Ctrl-C or SIGTERM, after the outputs were written with
            status ``"interrupted"``.
        ValueError: For a malformed strategy or budget, an unknown training
            time with a percentage budget, batches that do not fit the data,
            an output folder that holds another run's files or the checkpoint,
            or files hfft did not write — all before anything is written.
    """
    out = Path(config.out)
    check_not_input(out, [Path(config.checkpoint)], replaces=True)
    with first_signal_stops():
        src, runner, clock, points = _prepare(config, source, on_note)
        if not distributed.is_main():  # data-parallel: rank 0 alone writes
            run, status, final, stop = _run(config, src, runner, clock, out, points, on_progress)
            with signals_held(deliver=False) as late:
                run.finish(status, final)
            result = run.result(out)
        else:
            key = config.key()
            with RunFolder(out, lambda d: same_finetune_run(d, key), config.overwrite) as folder:
                if folder.note is not None and on_note is not None:
                    on_note(folder.note)
                staging = folder.staging
                run, status, final, stop = _run(
                    config, src, runner, clock, staging, points, on_progress
                )
                # the files are written and swapped into place while signals wait
                with signals_held(deliver=False) as late:
                    run.finish(status, final)
                    folder.commit()
            result = replace(run.result(staging), out=out, metrics_path=out / "metrics.json")
        stop = stop or as_interrupt(late)
        if stop is not None:
            raise Interrupted.after(stop, _saved_sentence(result.status, out)) from None
        return result


def _prepare(
    config: FinetuneConfig, source: StartingPoint | None, on_note: Callable[[str], None] | None
) -> tuple[StartingPoint, Runner, BudgetClock, list[float]]:
    """The checkpoint loaded, the strategy's runner and the clock: all checked, nothing written."""

    strategy = config.strategy
    budget = parse_budget(config.budget)
    if config.export == "lightning":
        from hfft.experiment.run.export import check_exportable

        said = check_exportable(Path(config.checkpoint), config.source.checkpoint_key)
        if said is not None and on_note is not None:
            on_note(said)
    src = source or config.source.load(config.checkpoint, config.device)
    if source is None and on_note is not None:
        for note in (*src.notes, src.budget_note(budget)):
            if note is not None:
                on_note(note)
    budget = resolve_budget(budget, src.train_seconds, src.train_time_problem)
    torch.manual_seed(config.seed)
    points = evaluation_fractions(config.eval_points)
    runner = make_runner(
        strategy,
        src.model,
        src.splits,
        loss_fn=src.task.loss(),
        lr=src.lr,
        batch_size=src.batch_size,
        momentum=src.momentum,
        weight_decay=src.weight_decay,
        eval_batch_size=config.eval_batch_size,
        evaluations=len(points),
        seed=config.seed,
        optimizer_state=src.optimizer_state,
    )
    device = next(src.model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return src, runner, BudgetClock(budget, train_size=src.splits.num_train, sync=sync), points


def _saved_sentence(status: str, out: Path) -> str:
    if status == "interrupted":
        return f"what was finished is saved in {out} and marked interrupted"
    return f"the run had {status} when it was stopped: its files are saved in {out}"


def _run(
    config: FinetuneConfig,
    src: StartingPoint,
    runner: Runner,
    clock: BudgetClock,
    out: Path,
    points: list[float],
    on_progress: Callable[[float, Mapping[str, Any]], None] | None,
) -> tuple[_Run, str, EvaluationEntry, KeyboardInterrupt | None]:
    """The steps and evaluations, writing ``best.safetensors`` into ``out`` as they go.

    Returns:
        The run, its status, its final evaluation and the interrupt that
        stopped it (if one did); :meth:`_Run.finish` writes the rest.
    """
    run = _Run(config, src, runner, clock, out, on_progress)
    history = StepHistory(run.model, run.runner.step_state())
    try:
        run.log["initial"] = run.evaluate()
        status = run.loop(points, history)
        final = _final_after_divergence(run, history) if status == "diverged" else run.evaluate()
    except KeyboardInterrupt as err:
        return run, "interrupted", _final_after_interrupt(run, history), err
    return run, status, final, None
