"""Rank strategies from shared checkpoints: strategies × seeds under one budget (paper §3).

Every run is an ordinary ``hfft finetune`` run written to
``OUT/<checkpoint>/<strategy>/seed-<k>/``. Runs go one after another on the
device (timings stay fair). Seeds are paired: seed k gives every strategy the
same sampler seed, hence the same data order where the strategy allows it.

A rerun of the same command reuses every finished run whose stored
configuration and checkpoint hash match, and runs only the missing ones, so
an interrupted compare loses at most the run in progress.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfft import distributed
from hfft._io import atomic_write_json
from hfft.source import SourceSpec

__all__ = [
    "CompareConfig",
    "CompareResult",
    "compare",
    "default_strategies",
    "run_directory",
    "run_order",
]

SGD_DEFAULTS = ("sgd", "sgd-div10", "sgd-cosine", "sgd-plateau")
HF_BATCH_SIZES = (256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: checkpoints × strategies × seeds under one budget."""

    checkpoints: tuple[str, ...]
    strategies: tuple[str, ...] | None = None
    seeds: int = 5
    budget: str = "10%"
    out: str = "compare"
    eval_points: int = 20
    eval_batch_size: int | None = None
    device: str = "cpu"
    source: SourceSpec = field(default_factory=SourceSpec)

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("compare needs at least one checkpoint")
        if self.seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {self.seeds}")


@dataclass(frozen=True)
class CompareResult:
    """The summary (as in ``compare.json``) and the files written."""

    summary: dict[str, Any]
    compare_json: Path
    plots: list[Path]
    reused: int
    ran: int


def default_strategies(n_train: int) -> list[str]:
    """The four SGD strategies, ``auto``, and HF at up to three batch sizes that fit the data.

    HF needs B and a disjoint B̄, so ``m ≤ n_train / 2``; the three largest of
    256, 512, …, 4096 that satisfy it are used. ``auto`` uses the smallest of
    them, so that its probes are as cheap as HF steps get here and its HF phase
    is one of the HF runs it is ranked against (without any, HF's default m).
    """
    sizes = [m for m in HF_BATCH_SIZES if m <= n_train // 2][-3:]
    auto = f"auto:m={sizes[0]}" if sizes else "auto"
    return [*SGD_DEFAULTS, auto, *(f"hf:m={m}" for m in sizes)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def run_directory(out: Path, checkpoint: str, strategy: str, seed: int) -> Path:
    """Where one run of a comparison writes its outputs."""
    return out / checkpoint / _slug(strategy) / f"seed-{seed}"


def _checkpoint_keys(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [_slug(f"{p.parent.name}-{p.stem}") for p in paths]


def run_order(checkpoints: int, strategies: int, seeds: int) -> list[tuple[int, int, int]]:
    """The order of the runs, as (checkpoint, strategy, seed) indices.

    Seed by seed, and within a seed checkpoint by checkpoint, with the
    strategies rotated by one place for each (checkpoint, seed): under a time
    budget a slow spell of the machine then falls on every strategy alike
    instead of on the one whose block of seeds it hit. (On the 2-core
    development VM one CG iteration of the same HF run took 18 to 31 ms from
    minute to minute, which moved strategies' ranks when each ran its seeds
    in a block.)
    """
    order = []
    for seed in range(seeds):
        for c in range(checkpoints):
            shift = (seed + c) % strategies if strategies else 0
            order += [(c, (shift + i) % strategies, seed) for i in range(strategies)]
    return order


def _reusable(metrics_path: Path, expected: dict[str, Any], sha256: str) -> dict[str, Any] | None:
    if not metrics_path.is_file():
        return None
    try:
        log = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return None
    if log.get("status") not in ("completed", "diverged"):
        return None
    if log.get("config") != expected or log.get("source", {}).get("sha256") != sha256:
        return None
    return log


def compare(
    config: CompareConfig,
    on_run: Callable[[int, int, str], None] | None = None,
) -> CompareResult:
    """Run (or reuse) every checkpoint × strategy × seed and rank the strategies.

    Args:
        config: The comparison.
        on_run: Called as ``on_run(index, total, description)`` before each run.

    Returns:
        The :class:`CompareResult`; ``compare.json`` and the plots are in
        ``config.out``.

    Raises:
        ValueError: For malformed strategies or budgets (before anything runs).
    """
    from hfft.budget import parse_budget
    from hfft.finetune import FinetuneConfig, finetune
    from hfft.plots import plot_budget_curves, plot_relative_performance
    from hfft.ranking import RunSummary, compare_summary, relative_performance
    from hfft.strategies import parse_strategy

    parse_budget(config.budget)
    given = [parse_strategy(s).label for s in config.strategies or ()]
    paths = [Path(p) for p in config.checkpoints]
    keys = _checkpoint_keys(paths)
    out = Path(config.out)
    sources = []
    for path in paths:
        src = config.source.load(path, config.device)
        sources.append((src, copy.deepcopy(src.model.state_dict())))
    strategies = given or default_strategies(sources[0][0].splits.train_x.shape[0])
    reused = ran = 0
    done: dict[tuple[int, int, int], RunSummary] = {}
    order = run_order(len(keys), len(strategies), config.seeds)
    total = len(order)
    for index, (c, k, seed) in enumerate(order, start=1):
        (src, state), key, label = sources[c], keys[c], strategies[k]
        run_dir = run_directory(out, key, label, seed)
        ft = FinetuneConfig(
            checkpoint=str(src.path),
            strategy=label,
            budget=config.budget,
            out=str(run_dir),
            eval_batch_size=config.eval_batch_size,
            eval_points=config.eval_points,
            seed=seed,
            device=config.device,
            source=config.source,
        )
        expected = json.loads(json.dumps(dataclasses.asdict(ft)))
        # data-parallel: rank 0 (which wrote the files) decides what to reuse
        log = distributed.broadcast_object(
            _reusable(run_dir / "metrics.json", expected, src.sha256)
            if distributed.is_main()
            else None
        )
        if log is None:
            if on_run is not None:
                on_run(index, total, f"{key} {label} seed {seed}")
            src.model.load_state_dict(state)
            # as it was written (JSON types), also on ranks that wrote nothing
            log = json.loads(json.dumps(finetune(ft, source=src).log))
            ran += 1
        else:
            reused += 1
        done[c, k, seed] = RunSummary.from_metrics(key, seed, log)
    runs = [done[i] for i in sorted(done)]  # checkpoint, strategy, seed: as listed

    summary = compare_summary(runs)
    summary["config"] = json.loads(json.dumps(dataclasses.asdict(config)))
    summary["strategies"] = strategies
    summary["runs"] = [
        {"checkpoint": r.checkpoint, "strategy": r.strategy, "seed": r.seed, "status": r.status}
        for r in runs
    ]
    if not distributed.is_main():
        return CompareResult(summary, out / "compare.json", [], reused, ran)
    plots = [
        plot_budget_curves(
            [r for r in runs if r.checkpoint == key], out / f"curves-{key}.png", checkpoint=key
        )
        for key in keys
    ]
    if len(keys) > 1:
        pairs = (("test_accuracy", "test accuracy"), ("train_eval_loss", "train loss"))
        for metric, label in pairs:
            rel = relative_performance(runs, metric)
            plots.append(
                plot_relative_performance(rel, out / f"relative-{metric}.png", metric_label=label)
            )
    summary["plots"] = [str(p) for p in plots]
    compare_json = out / "compare.json"
    atomic_write_json(compare_json, summary)
    return CompareResult(summary, compare_json, plots, reused, ran)
