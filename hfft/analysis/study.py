"""The paper's whole experiment from one SGD training run (``hfft study``).

A study trains a model with SGD keeping evenly spaced checkpoints (or reuses
a finished ``hfft train`` folder), then runs the paper's two protocols as one
comparison in ``OUT/runs``:

- Figure 1: from every checkpoint, SGD against HF at several curvature batch
  sizes m and ``auto``, scored 0 (worst) to 1 (best) per checkpoint;
- Figure 2: from the last checkpoint, every late-phase strategy as well
  (the other SGD schedules, SWA, L-BFGS, Adam, AdamW, schedule-free SGD).

The Figure 1 runs from the last checkpoint are also Figure 2's, so nothing
runs twice. Both figures are copied to ``OUT`` and ``OUT/report.md`` gives
the tables (:mod:`hfft.analysis.report`); ``OUT/evaluations.csv`` holds the
evaluations of the training and of every run in one table
(:mod:`hfft.experiment.run.evaluations_csv`). Like ``compare``, a rerun reuses
every verified run, and ``--shard I/N`` divides the runs among processes.
``OUT/study.json`` lists the study's own files and folders; a folder holding
anything else is refused before the training starts
(:mod:`hfft.experiment.run.ownership`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfft._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hfft._text import quoted
from hfft.analysis.compare import (
    CompareConfig,
    CompareResult,
    check_seeds,
    compare,
    hf_sizes,
    hf_sizes_note,
    run_directory,
)
from hfft.analysis.shards import Shard
from hfft.analysis.target import parse_target
from hfft.experiment.interrupts import Interrupted
from hfft.experiment.limits import check
from hfft.experiment.records import STUDY_KIND, StudyRecord
from hfft.experiment.run.budget import parse_budget
from hfft.experiment.run.evaluations_csv import (
    CSV_NAME,
    finetune_rows,
    train_rows,
    write_evaluations,
)
from hfft.experiment.run.starting_point import StartingPointOptions
from hfft.experiment.strategies.catalog import largest_m
from hfft.experiment.strategies.registry import Strategy, suite_members, typed_strategies

__all__ = [
    "STUDY_HF_SIZES",
    "StudyConfig",
    "StudyResult",
    "figure1_strategies",
    "preflight",
    "study",
]


STUDY_HF_SIZES = (256, 1024, 2048, 6144)
"""The paper's curvature batch sizes (§3.2): those that fit the data are studied."""


@dataclass(frozen=True)
class StudyConfig:
    """A study: one training run (``train``, or a finished ``train_run`` folder) and the
    comparison of both protocols from its checkpoints.

    ``strategies`` are Figure 1's (default :func:`figure1_strategies`);
    Figure 2 adds every other strategy from the last checkpoint. ``first_seed``
    and ``target`` are the comparison's (:class:`~hfft.analysis.compare.CompareConfig`).
    """

    out: str
    train: Any = None  # a hfft.experiment.run.train.TrainConfig (hfft writes it to OUT/train)
    train_run: str | None = None
    strategies: tuple[Strategy, ...] | None = None
    seeds: int = 5
    first_seed: int = 0
    budget: str = "10%"
    eval_points: int = 20
    eval_batch_size: int | None = None
    device: str = "cpu"
    source: StartingPointOptions = field(default_factory=StartingPointOptions)
    target: str | None = None
    shard: Shard | None = None

    def __post_init__(self) -> None:
        if (self.train is None) == (self.train_run is None):
            raise ValueError("a study needs a training configuration or a finished training run")
        check_seeds(self.seeds, self.first_seed)
        if self.target is not None:  # its form; its range once the metric is known
            parse_target(self.target)
        check("eval_points", self.eval_points)
        check("eval_batch_size", self.eval_batch_size)
        parse_budget(self.budget)  # bad budgets and strategies before the training
        if self.strategies is not None:
            object.__setattr__(self, "strategies", typed_strategies(self.strategies))


@dataclass(frozen=True)
class StudyResult:
    """The comparison, the training folder, and the report and figures (none while
    other shards' runs are missing)."""

    comparison: CompareResult
    train_dir: Path
    report: Path | None
    figures: list[Path]


def figure1_strategies(n_train: int) -> list[Strategy]:
    """SGD, HF at the paper's batch sizes that fit the data, and ``auto`` with the smallest.

    HF needs B and a disjoint B̄, so ``m ≤ n_train / 2``. Where fewer than two
    of :data:`STUDY_HF_SIZES` fit, 256 and 512 are tried instead (small data
    sets such as digits), and where neither fits, fractions of the training set
    (:func:`hfft.analysis.compare.hf_sizes`).
    """
    sizes = [m for m in STUDY_HF_SIZES if m <= largest_m(n_train)]
    if len(sizes) < 2:
        sizes = [m for m in (256, 512) if m <= largest_m(n_train)] or hf_sizes(n_train)
    auto = Strategy("auto", {"m": sizes[0]}) if sizes else Strategy("auto")
    return [Strategy("sgd"), *(Strategy("hf", {"m": m}) for m in sizes), auto]


def _figure2_extra(figure1: list[str]) -> list[str]:
    """The late-phase strategies Figure 2 adds to Figure 1's (not HF's peers of issue #28,
    soap and muon, which ``compare --suite second-order`` ranks and soap's extra installs)."""
    paper = suite_members("paper")
    peers = {e.name for e in suite_members("second-order") if e not in paper}
    first_order = [e.name for e in suite_members("extended") if e.kind == "first-order"]
    return [s for s in first_order if s not in figure1 and s not in peers]


def study(
    config: StudyConfig,
    run_training: Callable[[Any], Any] | None = None,
    on_run: Callable[[int, int, str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_done: Callable[[str, Path], None] | None = None,
) -> StudyResult:
    """Train (or reuse the training), run both protocols, write the report and figures.

    Args:
        config: The study.
        run_training: Trains a :class:`~hfft.experiment.run.train.TrainConfig`
            (default :func:`hfft.experiment.run.train.train`; the CLI passes one
            with a progress bar).
        on_run: As for :func:`hfft.analysis.compare.compare`.
        on_note: Called with one sentence for what is reused, waited for or redone.
        on_done: Called as ``on_done(name, folder)`` with the finished training
            (``train``), then as for :func:`hfft.analysis.compare.compare`.

    Raises:
        ValueError: For a training folder that did not finish, bad strategies
            or budgets, or an output folder that holds something else.
        Interrupted: On Ctrl-C or SIGTERM; finished runs are kept.
    """
    started = time.perf_counter()
    _claim(config)
    with _what_is_kept(Path(config.out)):
        return _study(config, started, run_training, on_run, on_note, on_done)


@contextlib.contextmanager
def _what_is_kept(out: Path) -> Iterator[None]:
    """An interrupt between the study's steps (the training and the runs say their own)
    says what it keeps: a plain Ctrl-C would claim that nothing was written."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as err:
        if not out.is_dir() or not any(out.iterdir()):
            raise
        raise Interrupted.after(
            err, f"what was finished is kept in {out} (rerun the same command to resume)"
        ) from None


def _study(
    config: StudyConfig,
    started: float,
    run_training: Callable[[Any], Any] | None,
    on_run: Callable[[int, int, str], None] | None,
    on_note: Callable[[str], None] | None,
    on_done: Callable[[str, Path], None] | None = None,
) -> StudyResult:
    """The study once its folder is claimed: :func:`study`'s steps."""
    train_dir = _training(config, run_training, on_note)
    why = _unfinished(train_dir)
    if why is not None:  # a training that diverged, say
        raise ValueError(f"{train_dir} is not a finished hfft train run: {why}")
    if on_done is not None:
        on_done("train", train_dir)
    out = Path(config.out)
    _write_record(config, [], "running")
    manifest = json.loads((train_dir / "run.json").read_text())
    n_train = int(manifest["data"]["train_size"])
    small = largest_m(n_train) < STUDY_HF_SIZES[0]  # HF at fractions of the data, said
    if not config.strategies and small and on_note and (line := hf_sizes_note(n_train)):
        on_note(line)
    both = _protocols(config, train_dir, manifest)
    figure1 = [s.label for s in both.strategies or () if s.label not in both.last_only]
    comparison = _compare(config, both, on_run=on_run, on_note=on_note, on_done=on_done)
    if not comparison.assembled:
        return StudyResult(comparison, train_dir, None, [])
    pairs = _figure_pairs(out, comparison, Path(both.checkpoints[-1]).stem)
    _write_record(config, [target.name for _, target in pairs], "running")
    _write_evaluations(config, train_dir, manifest, comparison)
    figures = _copy_figures(pairs)
    from hfft.analysis.report import report_markdown

    report = out / "report.md"
    seconds = time.perf_counter() - started
    atomic_write_text(
        report, report_markdown(comparison.summary, manifest, figure1, figures, seconds)
    )
    _write_record(config, [f.name for f in figures], "completed")
    return StudyResult(comparison, train_dir, report, figures)


def _protocols(config: StudyConfig, train_dir: Path, manifest: dict[str, Any]) -> CompareConfig:
    """Both protocols as one comparison in ``OUT/runs``: Figure 1's strategies from
    every checkpoint of the training, Figure 2's others from the last alone."""
    n_train = int(manifest["data"]["train_size"])
    typed = list(config.strategies or ()) or figure1_strategies(n_train)
    extra = _figure2_extra([s.label for s in typed])
    return CompareConfig(
        checkpoints=tuple(str(train_dir / c["path"]) for c in manifest["checkpoints"]),
        strategies=(*typed, *(Strategy(name) for name in extra)),
        seeds=config.seeds,
        first_seed=config.first_seed,
        budget=config.budget,
        out=str(Path(config.out) / "runs"),
        eval_points=config.eval_points,
        eval_batch_size=config.eval_batch_size,
        device=config.device,
        source=config.source,
        last_only=tuple(extra),
        target=config.target,
        shard=config.shard,
    )


def preflight(config: StudyConfig) -> None:
    """What :func:`study` would refuse before its first run, as far as that is known
    without training, loading or writing anything (for a job array, whose every task
    would refuse it): the output folder, a ``train_run`` that did not finish, and once
    the training is there, the comparison's folder (:func:`hfft.analysis.compare.preflight`).

    Raises:
        ValueError: One sentence.
    """
    from hfft.analysis.compare import preflight as compare_preflight

    _claim(config)  # the budget and the strategies: checked by StudyConfig
    train_dir = Path(config.train_run or Path(config.out) / "train")
    why = _unfinished(train_dir)
    if why is not None and config.train_run is not None:
        raise ValueError(f"{train_dir} is not a finished hfft train run: {why}")
    if why is None:
        manifest = json.loads((train_dir / "run.json").read_text())
        both = _protocols(config, train_dir, manifest)
        with _other_runs(config, both.out):
            compare_preflight(both)


def _claim(config: StudyConfig) -> None:
    """Refuse an output folder that holds files hfft did not write, or the training run
    the study reads."""
    from hfft.experiment.run.run_folder import (
        FolderTaken,
        check_foreign,
        check_not_input,
        check_owner,
    )

    out = Path(config.out)
    if config.train_run is not None:
        check_not_input(out, [Path(config.train_run)])
    # a study's own folder is the same study's (its comparison checks its settings);
    # a folder that holds another kind of run is refused: a study has no --overwrite
    pending = {"study.json": _record(config, [], "running")}
    check_foreign(out, pending=pending)
    try:
        check_owner(out, lambda d: True, False, "study.json")
    except FolderTaken:
        raise FolderTaken(
            f"{out} holds another hfft run's files (a training, fine-tuning or comparison); "
            "choose another --out"
        ) from None


def _record(config: StudyConfig, figures: list[str], status: str) -> StudyRecord:
    """``study.json``: the study's own files (listed before they are written) and folders."""
    return {
        "kind": STUDY_KIND,
        "status": status,
        "files": ["study.json", "report.md", CSV_NAME, *figures],
        "folders": ["runs"] if config.train_run is not None else ["train", "runs"],
    }


def _write_record(config: StudyConfig, figures: list[str], status: str) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study.json", _record(config, figures, status))


def _write_evaluations(
    config: StudyConfig, train_dir: Path, manifest: dict[str, Any], comparison: CompareResult
) -> None:
    """``evaluations.csv``: the training's epochs and every run's evaluations (read from
    its ``metrics.json``), each run named by its folder in the study (a ``--train-run``
    by the folder as given)."""
    from hfft.experiment.run.ownership import read_record

    rows = train_rows(manifest, run="train" if config.train_run is None else str(train_dir))
    for run in comparison.summary.get("runs", []):
        folder = run_directory(Path("runs"), run["checkpoint"], run["strategy"], run["seed"])
        log = read_record(Path(config.out) / folder / "metrics.json") or {}
        rows += finetune_rows(log, run=folder.as_posix(), checkpoint=run["checkpoint"])
    write_evaluations(Path(config.out) / CSV_NAME, rows)


def _compare(config: StudyConfig, comparison: CompareConfig, **callbacks: Any) -> CompareResult:
    """:func:`compare`, with the study's words for a folder that holds other runs."""
    with _other_runs(config, comparison.out):
        return compare(comparison, **callbacks)


@contextlib.contextmanager
def _other_runs(config: StudyConfig, runs: str) -> Iterator[None]:
    """The study's words for a comparison folder (``runs``) that holds other runs."""
    from hfft.experiment.run.run_folder import FolderTaken

    try:
        yield
    except FolderTaken:
        if config.shard is not None:
            raise
        raise FolderTaken(
            f"{runs} holds the runs of another study (its budget, evaluation points, "
            "B̄ size, device or checkpoint options differ) or other files; choose another --out"
        ) from None


def _figure_pairs(out: Path, comparison: CompareResult, last: str) -> list[tuple[Path, Path]]:
    """Figure 1 (relative performance, one PNG per metric) and Figure 2 (the budget
    curves from the last checkpoint): where the comparison has them, where they go."""
    runs = out / "runs"
    pairs = [(runs / f"curves-{last}.png", out / "figure2.png")]
    for metric in comparison.summary.get("metrics", []):
        pairs.append((runs / f"relative-{metric}.png", out / f"figure1-{metric}.png"))
    return [(source, target) for source, target in pairs if source.is_file()]


def _copy_figures(pairs: list[tuple[Path, Path]]) -> list[Path]:
    """The figures copied (each written atomically); their new paths."""
    for source, target in pairs:
        atomic_write_bytes(target, source.read_bytes())
    return [target for _, target in pairs]


def _training(
    config: StudyConfig,
    run_training: Callable[..., Any] | None,
    on_note: Callable[[str], None] | None,
) -> Path:
    """The finished training folder: given, found in ``OUT/train``, or trained there.

    Shards started together take turns: the first trains while the others
    wait for its lock, then find its run (checked again under the lock, so a
    finished training is never trained over). ``--shard none`` trains nothing.
    """
    from hfft.experiment.run.run_folder import FolderBusy, FolderTaken, locked_folder
    from hfft.experiment.run.train import finished_run, train

    if config.train_run is not None:
        return Path(config.train_run)  # checked by the caller, as a trained one is
    folder = Path(config.out) / "train"
    target = dataclasses.replace(config.train, out=str(folder), overwrite=False)
    if finished_run(folder, target) is not None:
        if on_note is not None:
            on_note(f"using the finished training in {folder}")
        return folder
    if config.shard is not None and config.shard.count == 0:
        raise ValueError(
            f"{folder} holds no finished training of this configuration, and --shard none "
            "runs nothing; run the shards (or hfft train) first"
        )
    waited = False
    while True:
        try:
            (run_training or train)(target, keep_finished=True)
            return folder
        except FolderBusy:
            if on_note is not None and not waited:
                on_note(f"waiting for the training another process is writing to {folder}")
            waited = True
            with locked_folder(folder, wait=True):
                pass
        except FolderTaken:
            raise FolderTaken(
                f"{folder} holds a training of another configuration (or other files); "
                f"choose another --out, or study that training as it is with --train-run {folder}"
            ) from None


def _unfinished(folder: Path) -> str | None:
    """Why ``folder`` does not hold a finished training run that a study can read."""
    try:
        manifest = json.loads((folder / "run.json").read_text())
    except OSError:
        return "it has no run.json"
    except (ValueError, RecursionError):
        return "its run.json is not readable JSON"
    if not isinstance(manifest, dict) or manifest.get("status") != "completed":
        status = manifest.get("status") if isinstance(manifest, dict) else None
        return f"its run.json says {quoted(status, 20)}, not 'completed'"
    entries = manifest.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        return "its run.json lists no checkpoints"
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not (folder / path).is_file():
            return f"its checkpoint {path} is missing"
    data = manifest.get("data")
    size = data.get("train_size") if isinstance(data, dict) else None
    if not isinstance(size, int) or size < 1:
        return "its run.json gives no training-set size"
    return None
