"""Rank strategies from shared checkpoints: strategies × seeds under one budget (paper §3).

Every run is an ordinary ``hfft finetune`` run written to
``OUT/<checkpoint>/<strategy>/seed-<k>/``. Runs go one after another on the
device (timings stay fair). Seeds are paired: seed k gives every strategy the
same sampler seed, hence the same data order where the strategy allows it; the
seeds run from ``first_seed`` (0), so that held-out seeds add runs beside the others.

A rerun of the same command reuses every finished run whose stored
configuration and checkpoint hash match, and runs only the missing ones, so
an interrupted compare loses at most the run in progress.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hfft._io import atomic_write_json, sha256_file, to_json
from hfft.analysis.shards import Shard, compare_shard, folder_lock
from hfft.analysis.target import metric_label, parse_target
from hfft.experiment.interrupts import Interrupted, first_signal_stops
from hfft.experiment.limits import MAX_SEED, check
from hfft.experiment.records import COMPARE_KIND, CompareConfigEntry, CompareSummary
from hfft.experiment.run.ownership import slug
from hfft.experiment.run.record_check import RecordError, check_finetune_log, shown
from hfft.experiment.run.starting_point import StartingPointOptions
from hfft.experiment.strategies.catalog import DEFAULT_EVAL_BATCH, largest_m
from hfft.experiment.strategies.registry import (
    SUITES,
    Strategy,
    canonical_label,
    suite_members,
    typed_strategies,
)
from hfft.optim import distributed

__all__ = [
    "CompareConfig",
    "CompareResult",
    "Shard",
    "check_seeds",
    "compare",
    "default_strategies",
    "preflight",
    "run_directory",
    "run_order",
]

HF_BATCH_SIZES = (256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: checkpoints × strategies × seeds under one budget.

    ``last_only`` names strategies (normalised labels, among the compared
    ones) that run from the last checkpoint alone, as the paper's Figure 2
    strategies do in ``hfft study``. ``shard`` makes this process one of
    several sharing the runs (:class:`Shard`); ``None`` runs them all.

    The seeds are ``first_seed`` … ``first_seed + seeds − 1`` (held-out seeds 5–9:
    ``seeds=5, first_seed=5``). ``target`` is the value of the first ranked metric
    the time to target is for, as ``--target`` takes it (``0.981`` or ``98.1%``,
    :func:`hfft.analysis.target.parse_target`); ``None``: the best SGD baseline's
    final value.
    """

    checkpoints: tuple[str, ...]
    strategies: tuple[Strategy, ...] | None = None
    seeds: int = 5
    first_seed: int = 0
    budget: str = "10%"
    out: str = "compare"
    eval_points: int = 20
    eval_batch_size: int | None = None
    device: str = "cpu"
    source: StartingPointOptions = field(default_factory=StartingPointOptions)
    overwrite: bool = False
    suite: str = "paper"
    last_only: tuple[str, ...] = ()
    target: str | None = None
    shard: Shard | None = None

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("compare needs at least one checkpoint")
        if self.strategies is not None:
            object.__setattr__(self, "strategies", typed_strategies(self.strategies))
        if self.shard is not None and self.overwrite:
            raise ValueError(
                "--overwrite cannot be combined with --shard (one shard would delete the others' "
                "runs); empty the folder once before starting the shards"
            )
        if self.suite not in SUITES:
            raise ValueError(f"the suite must be one of {', '.join(SUITES)}, not {self.suite!r}")
        check_seeds(self.seeds, self.first_seed)
        check("eval_points", self.eval_points)
        check("eval_batch_size", self.eval_batch_size)
        if self.target is not None:
            parse_target(self.target)  # its form; its range once the metric is known


def check_seeds(seeds: int, first_seed: int) -> None:
    """Refuse a number of seeds, or a first seed, whose seeds are not all valid seeds.

    Raises:
        ValueError: One sentence naming the option.
    """
    check("seeds", seeds)
    check("seed", first_seed, "--first-seed")
    if first_seed + seeds - 1 > MAX_SEED:
        raise ValueError(
            f"--first-seed {first_seed} with --seeds {seeds} goes beyond the largest seed, "
            f"{MAX_SEED}"
        )


@dataclass(frozen=True)
class CompareResult:
    """The summary (as in ``compare.json``) and the files written.

    A shard that ended while others still run has ``assembled`` false, its
    ``summary`` the running header, no plots, and in ``missing`` the runs
    not there yet.
    """

    summary: CompareSummary
    compare_json: Path
    plots: list[Path]
    reused: int
    ran: int
    missing: list[str] = field(default_factory=list)
    """Runs of other shards not there yet."""
    assembled: bool = True
    """False when this shard left the ranking to another that still runs."""


def default_strategies(
    n_train: int, suite: str = "paper", eval_batch_size: int | None = None
) -> list[Strategy]:
    """The four SGD strategies, ``auto``, and HF at up to three batch sizes that fit the data
    (``suite="extended"``: and SWA, L-BFGS, Adam, AdamW, schedule-free SGD, K-FAC, SOAP and
    Muon; ``suite="second-order"``: SGD with a constant, divided and cosine rate, HF's sizes,
    K-FAC, SOAP and Muon).

    ``auto`` uses the smallest HF size, so that its probes are as cheap as HF
    steps get here and its HF phase is one of the HF runs it is ranked against;
    without any size (fewer than 2 training samples) both are left out.
    """
    sizes = hf_sizes(n_train, eval_batch_size)
    members = suite_members(suite)
    first = [e.name for e in members if e.kind == "first-order" and "paper" in e.suites]
    auto = [Strategy(e.name, {"m": sizes[0]}) for e in members if e.kind == "auto" and sizes]
    hf = [Strategy(e.name, {"m": m}) for e in members if e.kind == "hf" for m in sizes]
    return [*map(Strategy, first), *auto, *hf, *map(Strategy, _suite_extras(suite))]


def _suite_extras(suite: str) -> list[str]:
    """The first- and second-order strategies a suite adds to the paper's (``extended``: the
    late-phase methods and HF's peers; ``second-order``: HF's peers), by name: they run with
    their defaults."""
    paper = suite_members("paper")
    added = ("first-order", "second-order")
    return [e.name for e in suite_members(suite) if e.kind in added and e not in paper]


def hf_sizes(n_train: int, eval_batch_size: int | None = None) -> list[int]:
    """HF's default batch sizes m for ``n_train`` training samples.

    HF needs B and a disjoint B̄, so ``m ≤ n_train / 2`` (and ``m ≤ n_train −
    eval_batch_size`` when B̄'s size is given): the three largest of 256, 512,
    …, 4096 that fit; on data too small for 256, an eighth, a quarter and half
    of that largest m (:func:`hf_sizes_note` says which).
    """
    largest = largest_m(n_train, eval_batch_size)
    sizes = [m for m in HF_BATCH_SIZES if m <= largest][-3:]
    if sizes:
        return sizes
    return sorted({m for m in (largest // 4, largest // 2, largest) if m >= 1})


def hf_sizes_note(n_train: int, eval_batch_size: int | None = None) -> str | None:
    """The line ``compare`` prints when HF runs at fewer than three of its standard sizes
    or at fractions of small data, saying which and why; ``None`` when three fit."""

    largest = largest_m(n_train, eval_batch_size)
    sizes = hf_sizes(n_train, eval_batch_size)
    standard = [m for m in HF_BATCH_SIZES if m <= largest]
    if len(standard) >= 3:
        return None
    b_bar = (
        f"B̄ the rest, at most {DEFAULT_EVAL_BATCH}"
        if eval_batch_size is None
        else f"B̄ {eval_batch_size} (--eval-batch-size)"
    )
    if not sizes:
        return f"hf and auto left out: {n_train} training samples hold no two disjoint batches"
    shown = ", ".join(f"m={m}" for m in sizes)
    if standard:
        missing = HF_BATCH_SIZES[len(standard)]
        return (
            f"hf at {shown} of {n_train} training samples ({b_bar}): m={missing} and larger "
            "do not fit beside B̄"
        )
    return (
        f"hf at {shown}, fractions of the {n_train} training samples ({b_bar}): the standard "
        f"m of {HF_BATCH_SIZES[0]} or more does not fit beside B̄"
    )


def run_directory(out: Path, checkpoint: str, strategy: str, seed: int) -> Path:
    """Where one run of a comparison writes its outputs."""
    return out / checkpoint / slug(strategy) / f"seed-{seed}"


def _checkpoint_keys(paths: list[Path]) -> list[str]:
    """One folder name per checkpoint: its stem (a model folder's whole name: ``Llama-3.2-1B``
    has no suffix), else with its parent's name, else numbered."""
    stems = [p.name if p.is_dir() else p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    keys = [slug(f"{p.parent.name}-{s}") for p, s in zip(paths, stems, strict=True)]
    if len(set(keys)) == len(keys):
        return keys
    return [f"{i + 1}-{k}" for i, k in enumerate(keys)]


def run_order(
    checkpoints: int, strategies: int, seeds: int, first_seed: int = 0
) -> list[tuple[int, int, int]]:
    """The order of the runs, as (checkpoint index, strategy index, seed).

    The seeds are ``first_seed`` … ``first_seed + seeds − 1``, each the run's own
    seed. Seed by seed, and within a seed checkpoint by checkpoint, with the
    strategies rotated by one place for each (checkpoint, seed): under a time
    budget a slow spell of the machine then falls on every strategy alike
    instead of on the one whose block of seeds it hit. (On the 2-core
    development VM one CG iteration of the same HF run took 18 to 31 ms from
    minute to minute, which moved strategies' ranks when each ran its seeds
    in a block.)
    """
    order = []
    for seed in range(first_seed, first_seed + seeds):  # a seed's rotation: the same in any range
        for c in range(checkpoints):
            shift = (seed + c) % strategies if strategies else 0
            order += [(c, (shift + i) % strategies, seed) for i in range(strategies)]
    return order


def plan_runs(config: CompareConfig, strategies: list[str]) -> list[tuple[int, int, int]]:
    """:func:`run_order` without the runs of ``config.last_only`` strategies from any
    checkpoint but the last: the fixed order that shards divide among them."""
    last = len(config.checkpoints) - 1
    return [
        (c, k, seed)
        for c, k, seed in run_order(
            len(config.checkpoints), len(strategies), config.seeds, config.first_seed
        )
        if c == last or strategies[k] not in config.last_only
    ]


def _reuse_check(
    run_dir: Path, key: dict[str, Any], sha256: str, task: dict[str, Any], strategy: Strategy
) -> tuple[Any, str | None]:
    """A finished run's ``metrics.json`` if it can be reused, else why it is redone.

    Reused only if ``metrics.json`` is an object of this run's configuration,
    strategy, checkpoint and task, the run completed (or diverged), the record
    is one hfft could have written (:func:`hfft.experiment.run.record_check.check_finetune_log`:
    types, finite values, metrics in their ranges, steps and fractions that
    fit the budget), and every weight file it lists is there with its recorded
    SHA-256. ``(None, None)`` when the run never started.
    """
    from hfft.experiment.run.finetune import same_finetune_run

    path = run_dir / "metrics.json"
    if not path.exists():
        return None, None
    try:
        log = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None, "its metrics.json is not readable JSON"
    if not isinstance(log, dict):
        return None, "its metrics.json is not a JSON object"
    if log.get("status") not in ("completed", "diverged"):
        return None, f"it had not finished (status {shown(log.get('status'))})"
    if not same_finetune_run(run_dir, key):
        return None, _other_configuration(log.get("config"), key)
    if not isinstance(log.get("source"), dict) or log["source"].get("sha256") != sha256:
        return None, "it started from another version of the checkpoint"
    try:
        check_finetune_log(log)
    except RecordError as err:
        return None, f"its metrics.json {err}"
    label = strategy.label
    if log["strategy"] != label:
        return (
            None,
            f"its metrics.json records strategy {shown(log['strategy'])}, not {shown(label)}",
        )
    if log["source"]["task"] != task:
        return None, "its metrics.json records another task or metric"
    if strategy.is_hf and (problem := _hf_progress_problem(log)) is not None:
        return None, problem
    return log, _weights_check(run_dir, log.get("files"))


def _hf_progress_problem(log: dict[str, Any]) -> str | None:
    """Why an HF run's ``hf_progress`` cannot be trusted, or ``None``: a run written before
    hfft kept it ran an optimizer whose λ had no cap and which took steps that changed
    nothing, so it is not ranked beside today's runs."""
    from hfft.analysis.run_summary import hf_progress_entry

    entry = hf_progress_entry(log.get("hf_progress"))
    if entry is None:
        return (
            "it was written before hfft capped HF's damping and recorded hf_progress "
            "(its metrics.json has no valid hf_progress)"
        )
    if entry["steps"] != len(log["steps"]):
        return f"its hf_progress counts {entry['steps']} steps, not the {len(log['steps'])} listed"
    return None


def _other_configuration(stored: Any, key: dict[str, Any]) -> str:
    """Why a run's recorded configuration is not this run's, in its words."""
    differ = [k for k in key if stored.get(k) != key[k]] if isinstance(stored, dict) else ["config"]
    if differ == ["checkpoint"]:
        return "it started from the checkpoint at another path (a moved or copied folder?)"
    return "it was run with another configuration"


def _weights_check(run_dir: Path, files: Any) -> str | None:
    """Why the weight files of a run do not match their recorded hashes (``None``: they do).

    The evaluations table is no weight file: made from ``metrics.json`` alone, it is
    written again when damaged (:mod:`hfft.experiment.run.evaluations_csv`).
    """
    from hfft.experiment.run.evaluations_csv import CSV_NAME
    from hfft.experiment.run.finetune import WEIGHT_FILES
    from hfft.experiment.run.ownership import EXPORTED

    if not isinstance(files, dict) or "final.safetensors" not in files:
        return "its metrics.json records no hash of final.safetensors"
    for name, digest in files.items():
        if name == CSV_NAME:
            continue
        # nothing else is read, least of all outside the run
        if name not in WEIGHT_FILES and not re.fullmatch(EXPORTED, str(name)):
            return f"its metrics.json lists {shown(name)}, not a weight file of a run"
        path = run_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded SHA-256 (changed or truncated)"
    return None


#: The settings that make the runs of two comparisons different runs.
RUN_SETTINGS = ("budget", "eval_points", "eval_batch_size", "device", "source")


def _same_comparison(out: Path, config: CompareConfig) -> bool:
    """Whether ``out`` holds a comparison whose runs this one may reuse or extend."""
    try:
        stored = json.loads((out / "compare.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
    mine: Mapping[str, Any] = _config_json(config)
    return isinstance(stored, dict) and all(stored.get(k) == mine[k] for k in RUN_SETTINGS)


def _claim(out: Path, config: CompareConfig, strategies: list[str]) -> None:
    """Check that ``out`` may hold this comparison (with ``--overwrite``, the earlier
    comparison's own files are removed; nothing else ever is).

    Raises:
        FolderTaken: If it holds another comparison's files, or files hfft did not write.
    """
    from hfft.experiment.run.ownership import remove_owned
    from hfft.experiment.run.run_folder import clean_stale

    owner = _check_claim(out, config, _run_folders(config, strategies))
    clean_stale(out)
    if owner == "overwrite":
        remove_owned(out)


def _check_claim(
    out: Path, config: CompareConfig, planned: list[str], strangers: bool = True
) -> str:
    """:func:`_claim`'s checks, which write nothing: ``out``'s owner as
    :func:`~hfft.experiment.run.run_folder.check_owner` says (``planned``: the run
    folders; ``strangers``: refuse another run in one of them)."""
    from hfft.experiment.run.run_folder import FolderTaken, check_foreign, check_owner

    # with --overwrite every run folder is replaced whole; without it only a run that is
    # done again, whose own finetune refuses another run inside its folder
    check_foreign(out, pending={"compare.json": {"folders": planned}}, runs_whole=config.overwrite)
    try:
        owner = check_owner(
            out, lambda d: _same_comparison(d, config), config.overwrite, "compare.json"
        )
    except FolderTaken:
        remedy = (
            "or pass --overwrite to replace them"
            if config.shard is None
            else "or empty it once before starting the shards"
        )
        raise FolderTaken(
            f"{out} holds another comparison (its budget, evaluation points, B̄ size, device "
            f"or checkpoint options differ); choose another --out, {remedy}"
        ) from None
    if not config.overwrite and strangers:
        _check_strangers(out, planned)
    return owner


def preflight(config: CompareConfig) -> None:
    """What :func:`compare` would refuse before its first run, as far as that is known
    without loading the checkpoints or writing anything: for a job array
    (:mod:`hfft.analysis.job_array`), whose every task would refuse it.

    The budget, that every checkpoint exists, and that ``config.out`` may hold
    the comparison (:func:`_claim`'s checks; with the suite's strategies, which
    depend on the data, the run folders found there stand for the planned ones).

    Raises:
        ValueError: One sentence (a ``FolderTaken`` for the folder).
    """
    from hfft.experiment.run.budget import parse_budget
    from hfft.experiment.run.run_folder import check_not_input

    parse_budget(config.budget)
    for path in config.checkpoints:
        if not Path(path).expanduser().exists():
            raise ValueError(f"Checkpoint file '{path}' does not exist")
    out = Path(config.out)
    check_not_input(out, [Path(c) for c in config.checkpoints], replaces=True)
    given = [s.label for s in config.strategies or ()]
    if given and config.suite != "paper":  # as _load_sources adds them
        given += [name for name in _suite_extras(config.suite) if name not in given]
    if given:
        _check_claim(out, config, _run_folders(config, given))
        return
    keys = _checkpoint_keys([Path(p) for p in config.checkpoints])
    found = [
        p.relative_to(out).as_posix()
        for k in keys
        for p in (out / k).glob("*/seed-*")
        if p.is_dir()
    ]
    _check_claim(out, config, found, strangers=False)


def _check_strangers(out: Path, planned: list[str]) -> None:
    """Refuse a run folder of this comparison that holds a run the comparison did not list
    (a ``finetune --out`` into its place): another run's files, which only ``--overwrite``
    replaces.

    Raises:
        FolderTaken: Naming the folder.
    """
    from hfft.experiment.run.ownership import is_scratch, owned
    from hfft.experiment.run.run_folder import FolderTaken

    listed = owned(out).folders
    for rel in planned:
        folder = out / rel
        if rel in listed or not folder.is_dir():
            continue
        if any(not is_scratch(entry.name) for entry in folder.iterdir()):
            raise FolderTaken(
                f"{out} holds another run in {rel}, where this comparison puts one of its runs; "
                "pass --overwrite to replace it, or choose another --out"
            )


def _run_folders(config: CompareConfig, strategies: list[str]) -> list[str]:
    """The run folders of the comparison, relative to its folder."""
    keys = _checkpoint_keys([Path(p) for p in config.checkpoints])
    return [
        run_directory(Path(), keys[c], strategies[k], seed).as_posix()
        for c, k, seed in plan_runs(config, strategies)
    ]


def _owned_lists(
    out: Path, config: CompareConfig, strategies: list[str], plots: list[Path]
) -> dict[str, list[str]]:
    """``files`` and ``folders`` of ``compare.json``: this comparison's plots and run
    folders, with those of the earlier runs of the same comparison kept in the folder."""
    from hfft.experiment.run.evaluations_csv import CSV_NAME
    from hfft.experiment.run.ownership import read_record

    files = ["compare.json", CSV_NAME, *(p.name for p in plots)]
    folders = _run_folders(config, strategies)
    stored = read_record(out / "compare.json") if _same_comparison(out, config) else None
    for name, mine in (("files", files), ("folders", folders)):
        theirs = (stored or {}).get(name)
        mine += [t for t in theirs if isinstance(t, str)] if isinstance(theirs, list) else []
    return {"files": sorted(set(files)), "folders": sorted(set(folders))}


def _load_sources(
    config: CompareConfig, given: list[Strategy], on_note: Callable[[str], None] | None
) -> tuple[list, dict[str, Strategy]]:
    """Every checkpoint loaded, and the budget, ``--target`` and strategies checked against
    each one.

    Returns:
        The checkpoints' starting points with their initial weights, and the strategies
        by label (the given ones, else the suite's; the suite's extras added to given ones,
        less those that cannot run on this problem: :func:`_checked`).
    """
    from hfft.experiment.run.budget import parse_budget, resolve_budget

    sources = []
    for path in config.checkpoints:
        src = config.source.load(path, config.device)
        if on_note is not None:
            for note in src.notes:
                on_note(f"{path}: {note}")
        sources.append((src, copy.deepcopy(src.model.state_dict())))
    budget = parse_budget(config.budget)
    said = set()
    for src, _ in sources:  # a budget of a training that did not finish: before any run
        resolve_budget(budget, src.train_seconds, src.train_time_problem)
        line = src.budget_note(budget)
        if on_note is not None and line is not None and line not in said:
            said.add(line)  # checkpoints of one training share it
            on_note(line)
    n_train = sources[0][0].splits.num_train
    typed = {s.label: s for s in given}
    if not given:
        suite = default_strategies(n_train, config.suite, config.eval_batch_size)
        typed = {s.label: s for s in suite}
        if on_note is not None and (line := hf_sizes_note(n_train, config.eval_batch_size)):
            on_note(line)
    elif config.suite != "paper":  # the given ones and the suite's extras
        typed |= {name: Strategy(name) for name in _suite_extras(config.suite) if name not in typed}
    if config.target is not None:  # before any run, now that the metric is known
        parse_target(config.target, f"test_{sources[0][0].task.best_metric}")
    added = set(_suite_extras(config.suite)) - {s.label for s in given}
    return sources, _checked(config, [src for src, _ in sources], typed, added, on_note)


def _checked(
    config: CompareConfig,
    sources: list,
    typed: dict[str, Strategy],
    added: set[str],
    on_note: Callable[[str], None] | None,
) -> dict[str, Strategy]:
    """The strategies, each checked against every checkpoint before any run
    (:func:`~hfft.experiment.strategies.make.check_strategy`, with the task's loss).

    A strategy the suite added (a label in ``added``) that cannot run on this problem or
    installation whatever its options (``kfac`` on a loss K-FAC does not support, ``soap``
    without pytorch-optimizer) is left out, with a note saying why; a strategy the user
    named is refused.

    Raises:
        ValueError: For a strategy that cannot run, in one sentence.
    """
    from hfft.experiment.strategies.make import check_strategy
    from hfft.experiment.strategies.registry import StrategyUnavailable

    kept = dict(typed)
    for src in sources:
        loss_fn, float_targets = src.task.loss(), src.splits.train_y.is_floating_point()
        for label, strategy in list(kept.items()):
            try:
                check_strategy(
                    strategy,
                    src.splits.num_train,
                    lr=src.lr,
                    batch_size=src.batch_size,
                    eval_batch_size=config.eval_batch_size,
                    loss_fn=loss_fn,
                    float_targets=float_targets,
                )
            except StrategyUnavailable as err:
                if label not in added:
                    raise
                del kept[label]
                if on_note is not None:
                    on_note(f"{label} left out of --suite {config.suite}: {err}")
    return kept


def compare(
    config: CompareConfig,
    on_run: Callable[[int, int, str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_done: Callable[[str, Path], None] | None = None,
) -> CompareResult:
    """Run (or reuse) every checkpoint × strategy × seed and rank the strategies.

    Every checkpoint is loaded and every strategy checked against its data
    before the first run starts. The output folder is locked for the
    comparison and must hold this comparison (same budget, evaluation points,
    B̄ size, device and checkpoint options; checkpoints, strategies and seeds
    may be added) or nothing, unless ``config.overwrite``. A finished run is
    reused only after its files are verified; one that fails is run again,
    with a note saying why.

    Args:
        config: The comparison.
        on_run: Called as ``on_run(index, total, description)`` before each run.
        on_note: Called with one sentence for each run that is redone and why.
        on_done: Called as ``on_done(name, folder)`` once each run has finished or is
            found finished, ``name`` being ``<checkpoint>/<strategy label>/seed-<k>``
            (rank 0 alone; the trackers of :mod:`hfft.analysis.trackers`).

    Returns:
        The :class:`CompareResult`; ``compare.json`` and the plots are in
        ``config.out``.

    Raises:
        ValueError: For malformed strategies, budgets or targets, strategies that
            do not fit a checkpoint's data, or an output folder that holds
            another comparison (before anything runs).
        Interrupted: On Ctrl-C or SIGTERM, once the run in progress has saved
            what it had; finished runs are kept and a rerun resumes.
    """
    from hfft.experiment.run.budget import parse_budget
    from hfft.experiment.run.run_folder import check_not_input

    parse_budget(config.budget)
    check_not_input(Path(config.out), [Path(c) for c in config.checkpoints], replaces=True)
    given = list(config.strategies or ())
    if config.shard is not None and distributed.is_distributed():
        raise ValueError(
            "--shard divides the runs among independent processes; do not combine it with "
            "torchrun (run each shard as its own process, one per device)"
        )
    out = Path(config.out)
    if config.shard is not None and config.shard.count == 0:
        if not (out / "compare.json").is_file():
            raise ValueError(f"{out} holds no comparison to assemble; run its shards first")
    sources, typed = _load_sources(config, given, on_note)
    strategies = list(typed)
    runs = _Runs(config, sources, typed, on_run, on_note, on_done)
    with first_signal_stops():
        try:
            if config.shard is None:
                with folder_lock(out):
                    _start(out, config, strategies)
                    runs.visit(range(len(runs.order)), run_missing=True)
                    return _summarise(config, strategies, runs.listed(), runs.ran, runs.reused)
            return compare_shard(out, config.shard, _ShardSteps(config, runs, strategies))
        except KeyboardInterrupt as err:
            raise Interrupted.after(
                err, f"the finished runs are kept in {out} (rerun the same command to resume)"
            ) from None


def _same_config(stored: dict[str, Any], config: CompareConfig) -> bool:
    mine = _config_json(config)
    theirs = stored.get("config")
    return isinstance(theirs, dict) and _without_out(theirs) == _without_out(mine)


def _start(out: Path, config: CompareConfig, strategies: list[str], header: bool = True) -> None:
    """Claim ``out`` for this comparison and write its running header (rank 0 alone).

    A shard leaves a completed comparison of the same configuration as it is.

    Raises:
        FolderTaken: If ``out`` holds another comparison or other files.
    """
    if not distributed.is_main():
        return
    _claim(out, config, strategies)
    mine = _config_json(config)
    if config.shard is not None and (out / "compare.json").is_file():
        stored = json.loads((out / "compare.json").read_text())
        same = _without_out(stored.get("config") or {}) == _without_out(mine)
        header = header and not (stored.get("status") == "completed" and same)
    if header:
        _write_header(out, config, strategies, [])


def _write_header(
    out: Path, config: CompareConfig, strategies: list[str], plots: list[Path]
) -> None:
    """``compare.json`` while the comparison runs: its configuration and what it owns."""
    running: CompareSummary = {
        "kind": COMPARE_KIND,
        "status": "running",
        "config": _config_json(config),
        "strategies": strategies,
    }
    running.update(_owned_lists(out, config, strategies, plots))  # type: ignore[typeddict-item]
    atomic_write_json(out / "compare.json", running)


def _without_out(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration without ``out``, its strategies as labels (an older record kept
    them as typed)."""
    plain = {k: v for k, v in config.items() if k != "out"}
    if isinstance(plain.get("strategies"), list):
        plain["strategies"] = [canonical_label(s) for s in plain["strategies"]]
    return plain


def _config_json(config: CompareConfig) -> CompareConfigEntry:
    """The configuration as ``compare.json`` records it: the same for every shard."""
    plain = dataclasses.replace(config, strategies=None)
    data = json.loads(json.dumps(dataclasses.asdict(plain)))
    data["source"] = config.source.record()
    data["strategies"] = None if config.strategies is None else [s.label for s in config.strategies]
    data.pop("shard", None)
    return cast(CompareConfigEntry, data)


def _clear_damaged(out: Path, run_dir: Path) -> None:
    """Remove a run's files that its own damaged ``metrics.json`` does not list (as the
    comparison's: :data:`hfft.experiment.run.ownership.RUN_FILES`), so it can run again.

    Raises:
        FolderBusy: If another process holds the run's folder.
    """
    from hfft.experiment.run.ownership import first_foreign, remove_owned
    from hfft.experiment.run.run_folder import locked_folder

    if not run_dir.is_dir() or first_foreign(run_dir, nested_runs=False) is None:
        return
    if any(e.is_dir() and not _run_entry(e.name) for e in run_dir.iterdir()):
        return  # another run inside: the run's own finetune refuses it, nothing removed
    with locked_folder(run_dir):
        remove_owned(out, under=run_dir.relative_to(out).as_posix())


def _run_entry(name: str) -> bool:
    """A folder a run itself holds: its scratch, or the model folders of a transformers
    input (``final/``, ``best/``)."""
    from hfft.experiment.run.ownership import is_scratch

    return is_scratch(name) or name in ("final", "best")


class _Runs:
    """The runs of a comparison in :func:`plan_runs` order, found on disk or run."""

    def __init__(
        self,
        config: CompareConfig,
        sources: list,
        typed: dict[str, Strategy],
        on_run: Callable[[int, int, str], None] | None,
        on_note: Callable[[str], None] | None,
        on_done: Callable[[str, Path], None] | None = None,
    ) -> None:
        strategies = list(typed)  # labels, in order
        self.config, self.sources, self.strategies, self.typed = config, sources, strategies, typed
        self.on_run, self.on_note, self.on_done = on_run, on_note, on_done
        self.order = plan_runs(config, strategies)
        self.keys = _checkpoint_keys([Path(p) for p in config.checkpoints])
        self.done: dict[tuple[int, int, int], Any] = {}
        self.missing: list[str] = []
        self.ran = self.reused = 0
        shard = config.shard
        share = [p for p in range(len(self.order)) if shard is None or shard.takes(p)]
        self._number = {p: i for i, p in enumerate(share, start=1)}

    def listed(self) -> list[Any]:
        """The summaries by checkpoint, strategy and seed, as listed."""
        return [self.done[i] for i in sorted(self.done)]

    def visit(self, positions: Iterable[int], run_missing: bool) -> None:
        """Reuse every verified run at ``positions``; run the others (``run_missing``) or
        list them in :attr:`missing`."""
        self.missing = []
        for position in positions:
            if self.order[position] not in self.done:
                self._visit(position, run_missing)

    def _visit(self, position: int, run_missing: bool) -> None:
        from hfft.analysis.ranking import RunSummary
        from hfft.experiment.run.evaluations_csv import restore_finetune_table
        from hfft.experiment.run.finetune import finetune
        from hfft.experiment.run.run_folder import FolderBusy

        c, k, seed = self.order[position]
        (src, state), key, label = self.sources[c], self.keys[c], self.strategies[k]
        ft = self._finetune_config(c, label, seed)
        what = f"{key} {label} seed {seed}"
        # data-parallel: rank 0 (which wrote the files) decides what to reuse
        log, why = distributed.broadcast_object(
            _reuse_check(Path(ft.out), ft.key(), src.sha256, src.task.describe(), ft.strategy)
            if distributed.is_main()
            else None
        )
        if log is not None and why is None:
            self.reused += 1
            if distributed.is_main():
                restore_finetune_table(Path(ft.out), log)
        elif not run_missing:
            self.missing.append(what)
            return
        else:
            if why is not None and self.on_note is not None:
                self.on_note(f"running {what} again: {why}")
            if self.on_run is not None:
                self.on_run(self._number.get(position, 0), len(self._number), what)
            src.model.load_state_dict(state)
            try:
                if why is not None and distributed.is_main():
                    _clear_damaged(Path(self.config.out), Path(ft.out))
                # as it was written (JSON types), also on ranks that wrote nothing
                log = json.loads(to_json(finetune(ft, source=src).log))
            except FolderBusy:  # another process runs it (a shard started twice)
                if self.config.shard is None:
                    raise
                if self.on_note is not None:
                    self.on_note(f"{what} is being run by another process; left to it")
                self.missing.append(what)
                return
            self.ran += 1
        self.done[c, k, seed] = RunSummary.from_metrics(key, seed, log)
        if self.on_done is not None and distributed.is_main():
            self.on_done(f"{key}/{label}/seed-{seed}", Path(ft.out))

    def _finetune_config(self, c: int, label: str, seed: int) -> Any:
        from hfft.experiment.run.finetune import FinetuneConfig

        config = self.config
        return FinetuneConfig(
            checkpoint=str(self.sources[c][0].path),
            strategy=self.typed[label],
            budget=config.budget,
            out=str(run_directory(Path(config.out), self.keys[c], label, seed)),
            eval_batch_size=config.eval_batch_size,
            eval_points=config.eval_points,
            seed=seed,
            device=config.device,
            source=config.source,
            overwrite=True,  # compare owns its folder (checked in _claim)
        )


@dataclass(frozen=True)
class _ShardSteps:
    """The comparison's own steps, as its shards' coordination calls them
    (:class:`hfft.analysis.shards.Comparison`)."""

    config: CompareConfig
    runs: _Runs
    strategies: list[str]

    @property
    def order(self) -> list[tuple[int, int, int]]:
        return self.runs.order

    @property
    def missing(self) -> list[str]:
        return self.runs.missing

    @property
    def on_note(self) -> Callable[[str], None] | None:
        return self.runs.on_note

    def claim(self, header: bool = True) -> None:
        _start(Path(self.config.out), self.config, self.strategies, header)

    def visit(self, positions: Iterable[int], run_missing: bool) -> None:
        self.runs.visit(positions, run_missing)

    def summarise(self) -> CompareResult:
        runs = self.runs
        return _summarise(self.config, self.strategies, runs.listed(), runs.ran, runs.reused)

    def same_config(self, stored: dict[str, Any]) -> bool:
        return _same_config(stored, self.config)

    def finished(self, done: dict[str, Any]) -> CompareResult:
        plots = [Path(p) for p in done.get("plots", [])]
        compare_json = Path(self.config.out) / "compare.json"
        return CompareResult(
            cast(CompareSummary, done), compare_json, plots, self.runs.reused, self.runs.ran
        )

    def unfinished(self, header: dict[str, Any]) -> CompareResult:
        runs, compare_json = self.runs, Path(self.config.out) / "compare.json"
        summary = cast(CompareSummary, header)
        return CompareResult(
            summary, compare_json, [], runs.reused, runs.ran, runs.missing, assembled=False
        )


def _summarise(
    config: CompareConfig, strategies: list[str], runs: list[Any], ran: int, reused: int
) -> CompareResult:
    """Rank, plot and write ``compare.json``."""
    from hfft.analysis.plots import plot_budget_curves, plot_relative_performance
    from hfft.analysis.ranking import compare_summary, ranked_metrics

    out = Path(config.out)
    metric = ranked_metrics(runs)[0]
    target = None if config.target is None else parse_target(config.target, metric)
    summary = compare_summary(runs, not_relative=config.last_only, target=target)
    summary["config"], summary["strategies"] = _config_json(config), strategies
    summary["runs"] = [
        {"checkpoint": r.checkpoint, "strategy": r.strategy, "seed": r.seed, "status": r.status}
        for r in runs
    ]
    if not distributed.is_main():
        return CompareResult(summary, out / "compare.json", [], reused, ran)
    keys = _checkpoint_keys([Path(p) for p in config.checkpoints])
    metrics = summary["metrics"] if len(keys) > 1 else []
    planned = [out / f"curves-{key}.png" for key in keys]
    planned += [out / f"relative-{metric}.png" for metric in metrics]
    # listed before they are drawn: an interrupt meanwhile leaves them the comparison's
    _write_header(out, config, strategies, planned)
    plots = [
        plot_budget_curves([r for r in runs if r.checkpoint == key], path, checkpoint=key)
        for key, path in zip(keys, planned, strict=False)
    ]
    for metric, path in zip(metrics, planned[len(keys) :], strict=True):
        rel = summary["relative_performance"][metric]
        plots.append(plot_relative_performance(rel, path, metric_label=metric_label(metric)))
    summary["plots"] = [str(p) for p in plots]
    summary.update(_owned_lists(out, config, strategies, plots))  # type: ignore[typeddict-item]
    summary["kind"], summary["status"] = COMPARE_KIND, "completed"
    _write_evaluations(out, runs)
    compare_json = out / "compare.json"
    atomic_write_json(compare_json, summary)
    return CompareResult(summary, compare_json, plots, reused, ran)


def _write_evaluations(out: Path, runs: list[Any]) -> None:
    """``evaluations.csv``: every run's evaluations in one table, each run named by its
    folder in the comparison and its checkpoint by the comparison's name for it."""
    from hfft.experiment.run.evaluations_csv import CSV_NAME, evaluation_rows, write_evaluations

    rows = []
    for r in runs:
        folder = run_directory(Path(), r.checkpoint, r.strategy, r.seed).as_posix()
        rows += evaluation_rows(r.evaluations, folder, r.strategy, r.seed, r.checkpoint)
    write_evaluations(out / CSV_NAME, rows)
