"""Fine-tune a checkpoint with one strategy under one budget (SPEC §2, §4, §5).

The loop reads top to bottom:

1. load the checkpoint into its model with its data split and hyperparameters;
2. evaluate at budget fraction 0;
3. take steps while the budget lasts — the clock runs only inside a step —
   and evaluate (clock paused) whenever the spent fraction passes the next of
   the evaluation points, the same points for every strategy;
4. evaluate at the end; write ``final.safetensors``, ``best.safetensors``
   (best validation accuracy, never test) and ``metrics.json``.

Everything is written atomically. Ctrl-C ends the run cleanly: what exists is
written and the status is ``"interrupted"``. An SGD step with a non-finite loss
is not applied and ends the run as ``"diverged"``; HF rejects such steps itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hfft import distributed
from hfft._io import atomic_write_json
from hfft._version import __version__
from hfft.checkpoint import save_checkpoint
from hfft.evaluation import evaluate_splits
from hfft.source import SourceSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from hfft.source import Source

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run (the command line's options, validated)."""

    checkpoint: str
    strategy: str = "hf"
    budget: str = "10%"
    out: str = "finetune"
    source: SourceSpec = field(default_factory=SourceSpec)
    eval_batch_size: int | None = None
    eval_points: int = 20
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class FinetuneResult:
    """How the run ended and where its files are."""

    out: Path
    status: str
    steps: int
    seconds: float
    fraction: float
    initial: dict[str, float]
    final: dict[str, float]
    best: dict[str, Any]
    metrics_path: Path
    log: dict[str, Any] = field(default_factory=dict)


def _finite_state(model: torch.nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()
    )


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def finetune(
    config: FinetuneConfig,
    source: Source | None = None,
    on_progress: Callable[[float, dict[str, Any]], None] | None = None,
) -> FinetuneResult:
    """Run one strategy from a checkpoint under a budget and write its outputs.

    Args:
        config: The run.
        source: The loaded checkpoint (loaded from ``config`` when ``None``).
        on_progress: Called as ``on_progress(fraction, info)`` after every step
            (with its record) and every evaluation (with its entry), for progress
            bars and for ``auto``'s switch line.

    Returns:
        The :class:`FinetuneResult`. On ``KeyboardInterrupt`` the outputs are
        written with status ``"interrupted"`` and the interrupt is re-raised.

    Raises:
        ValueError: For a malformed strategy or budget, an unknown training
            time with a percentage budget, or batches that do not fit the data.
    """
    from hfft.budget import BudgetClock, evaluation_fractions, parse_budget, resolve_budget
    from hfft.runners import make_runner
    from hfft.strategies import parse_strategy
    from hfft.train import versions

    strategy = parse_strategy(config.strategy)
    budget = parse_budget(config.budget)
    if config.eval_points < 1:
        raise ValueError(f"eval points must be a positive integer, got {config.eval_points}")
    src = source or config.source.load(config.checkpoint, config.device)
    budget = resolve_budget(budget, src.train_seconds)
    model, splits = src.model, src.splits
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    points = evaluation_fractions(config.eval_points)
    runner = make_runner(
        strategy,
        model,
        splits,
        lr=src.lr,
        batch_size=src.batch_size,
        momentum=src.momentum,
        weight_decay=src.weight_decay,
        eval_batch_size=config.eval_batch_size,
        evaluations=len(points),
        seed=config.seed,
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    clock = BudgetClock(budget, train_size=splits.train_x.shape[0], sync=sync)
    out = Path(config.out)
    main = distributed.is_main()  # data-parallel: rank 0 alone writes
    if main:
        out.mkdir(parents=True, exist_ok=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    log: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "hfft-finetune",
        "status": "running",
        "config": asdict(config),
        "strategy": strategy.label,
        "budget": {"kind": budget.kind, "limit": budget.value, "requested": config.budget},
        "source": src.describe(),
        "versions": versions(),
        "device": str(device),
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
    meta = {
        "model": src.model_name,
        "model_args": src.model_args,
        "data": src.data_name,
        "data_seed": src.data_seed,
        "num_classes": splits.num_classes,
        "in_channels": splits.in_channels,
        "input_size": splits.input_size,
        "lr": src.lr,
        "batch_size": src.batch_size,
        "momentum": src.momentum,
        "weight_decay": src.weight_decay,
        "source_checkpoint": str(src.path),
        "source_sha256": src.sha256,
        "strategy": strategy.label,
        "hfft_version": __version__,
    }
    best: dict[str, Any] = {}
    next_point = 0

    def evaluate() -> dict[str, float]:
        metrics = evaluate_splits(model, splits, loss_fn)
        entry = {
            "fraction": clock.fraction,
            "seconds": clock.seconds,
            "step": clock.steps,
            "epochs": clock.epochs,
            **runner.hyper(),
            **metrics,
        }
        log["evaluations"].append(entry)
        runner.observe(metrics)
        acc = metrics.get("valid_accuracy", -math.inf)
        if acc > best.get("valid_accuracy", -math.inf) and _finite_state(model):
            best.clear()
            best.update(entry)
            if main:
                save_checkpoint(
                    out / "best.safetensors", _cpu_state(model), {**meta, **_brief(entry)}
                )
        if on_progress is not None:
            on_progress(clock.fraction, entry)
        return metrics

    def finish(status: str) -> FinetuneResult:
        log["status"] = status
        log.update(runner.report())
        final = log["evaluations"][-1] if log["evaluations"] else {}
        log["final"] = final
        log["best"] = dict(best)
        log["spent"] = {
            "seconds": clock.seconds,
            "steps": clock.steps,
            "epochs": clock.epochs,
            "fraction": clock.fraction,
        }
        metrics_path = out / "metrics.json"
        if main:
            if _finite_state(model):
                save_checkpoint(
                    out / "final.safetensors", _cpu_state(model), {**meta, **_brief(final)}
                )
            atomic_write_json(metrics_path, log)
        return FinetuneResult(
            out,
            status,
            clock.steps,
            clock.seconds,
            clock.fraction,
            log["initial"],
            final,
            dict(best),
            metrics_path,
            log,
        )

    status = "completed"
    try:
        log["initial"] = evaluate()
        next_point = 1
        while not clock.exhausted:
            clock.resume()
            record = runner.step(clock.fraction)
            clock.pause()
            clock.step_done(runner.samples)
            if distributed.is_distributed():  # the slowest rank's clock, so all stop together
                clock.synchronize(distributed.all_reduce_max(clock.seconds, device))
            record["seconds"] = clock.seconds
            log["steps"].append(record)
            if runner.diverged:
                status = "diverged"
                break
            if on_progress is not None:
                on_progress(clock.fraction, record)
            crossed = next_point
            while next_point < len(points) - 1 and clock.fraction >= points[next_point]:
                next_point += 1
            if next_point > crossed:
                evaluate()
        evaluate()
    except KeyboardInterrupt:
        if clock.running:
            clock.pause()
        finish("interrupted")
        raise
    return finish(status)


def _brief(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("fraction", "seconds", "step", "valid_accuracy", "test_accuracy", "train_eval_loss")
    return {k: entry[k] for k in keys if k in entry}
