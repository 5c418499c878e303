"""``hfft finetune``: one strategy from a checkpoint under a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hfft.cli.common import (
    BatchSizeOpt,
    BudgetOpt,
    DataOpt,
    DataRootOpt,
    DebugOpt,
    DeviceOpt,
    DownloadOpt,
    EvalBatchOpt,
    EvalPointsOpt,
    JsonOpt,
    LossOpt,
    LrOpt,
    MetricOpt,
    ModelArgOpt,
    ModelOpt,
    MomentumOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    TaskOpt,
    TrainTimeOpt,
    ValidFractionOpt,
    WeightDecayOpt,
    check_out_dir,
    command_guard,
    join_torchrun,
    note,
    print_json,
    resolve_device,
    starting_point_options,
    strategy_help,
)

CheckpointArgument = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint: hfft safetensors, or a PyTorch state_dict .pt/.pth "
        "(then --model and --data are needed)."
    ),
]
StrategyOpt = Annotated[str, typer.Option(help=strategy_help())]
OutOpt = Annotated[
    Path | None,
    typer.Option(help="Output directory (default: finetune-STRATEGY beside the checkpoint)."),
]


def finetune(
    checkpoint: CheckpointArgument,
    strategy: StrategyOpt = "hf",
    budget: BudgetOpt = "10%",
    out: OutOpt = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    train_time: TrainTimeOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    task: TaskOpt = None,
    loss: LossOpt = None,
    metric: MetricOpt = None,
    valid_fraction: ValidFractionOpt = None,
    eval_batch_size: EvalBatchOpt = None,
    eval_points: EvalPointsOpt = 20,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune a checkpoint with one strategy under a budget.

    Writes final.safetensors, best.safetensors (best validation accuracy) and
    metrics.json (configuration, evaluations over the budget, every optimizer
    step, final and best results) into --out. The clock runs only while the
    optimizer works; evaluations are paused out of it.
    """
    with command_guard():
        from hfft.cli.render.progress import finetune_progress
        from hfft.experiment.run.finetune import FinetuneConfig, default_out
        from hfft.experiment.run.finetune import finetune as run_finetune
        from hfft.experiment.strategies.registry import parse_strategy

        chosen = parse_strategy(strategy)  # once: the typed value is passed down
        target = out or default_out(checkpoint, chosen)
        check_out_dir(target)
        dev, main = join_torchrun(resolve_device(device))
        quiet, as_json = quiet or not main, as_json and main
        options = starting_point_options(
            model,
            model_arg,
            data,
            data_root,
            download,
            train_time,
            lr,
            batch_size,
            momentum,
            weight_decay,
            task=task,
            loss=loss,
            metric=metric,
            valid_fraction=valid_fraction,
        )
        config = FinetuneConfig(
            checkpoint=str(checkpoint),
            strategy=chosen,
            budget=budget,
            out=str(target),
            source=options,
            eval_batch_size=eval_batch_size,
            eval_points=eval_points,
            seed=seed,
            device=dev,
            overwrite=overwrite,
        )
        with finetune_progress(chosen.label, quiet or as_json) as on_progress:
            result = run_finetune(config, on_progress=on_progress, on_note=note)
    if as_json:
        print_json(result_dict(result))
    elif not quiet:
        from rich.console import Console

        from hfft.cli.render.summaries import print_finetune_summary

        print_finetune_summary(Console(), result)


def result_dict(result: Any) -> dict[str, Any]:
    """A finetune result as JSON-ready dict."""
    return {
        "status": result.status,
        "out": str(result.out),
        "steps": result.steps,
        "seconds": result.seconds,
        "fraction": result.fraction,
        "initial": result.initial,
        "final": result.final,
        "best": result.best,
        "metrics": str(result.metrics_path),
        "files": list(result.files),
        "missing": result.missing,
        "hf_progress": result.log.get("hf_progress"),
    }
