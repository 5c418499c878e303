"""``hfft finetune``: one strategy from a checkpoint under a budget."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from hfft.cli.common import (
    NO_SOURCE,
    BudgetOpt,
    DebugOpt,
    DeviceOpt,
    EvalBatchOpt,
    EvalPointsOpt,
    JsonOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    SourceArgs,
    check_out_dir,
    command_guard,
    join_torchrun,
    note,
    print_json,
    resolve_device,
    strategy_help,
    takes_source,
)
from hfft.cli.trackers import MlflowOpt, TensorBoardOpt, open_trackers

CheckpointArgument = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint: hfft safetensors, a PyTorch state_dict .pt/.pth/.ckpt (then --model "
        "and --data are needed), or a transformers save_pretrained folder (then --data)."
    ),
]
StrategyOpt = Annotated[str, typer.Option(help=strategy_help())]


class Export(str, Enum):
    """What ``--export`` writes beside the safetensors."""

    lightning = "lightning"


ExportOpt = Annotated[
    Export | None,
    typer.Option(
        help="lightning: also write final.ckpt, a copy of the input .ckpt with the final "
        "weights in place (for load_from_checkpoint)."
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(help="Output directory (default: finetune-STRATEGY beside the checkpoint)."),
]


@takes_source()
def finetune(
    checkpoint: CheckpointArgument,
    strategy: StrategyOpt = "hf",
    budget: BudgetOpt = "10%",
    out: OutOpt = None,
    source: SourceArgs = NO_SOURCE,
    eval_batch_size: EvalBatchOpt = None,
    eval_points: EvalPointsOpt = 20,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    export: ExportOpt = None,
    tensorboard: TensorBoardOpt = None,
    mlflow: MlflowOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune a checkpoint with one strategy under a budget.

    Writes final.safetensors, best.safetensors (best validation accuracy) and
    metrics.json (configuration, evaluations over the budget, every optimizer
    step, final and best results) into --out. The clock runs only while the
    optimizer works; evaluations are paused out of it.

    CHECKPOINT may be a transformers save_pretrained folder: the model is built
    from its config.json (transformers' own classes, no remote code), and
    final/ and best/ are written as model folders that from_pretrained loads.
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
        options = source.options()
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
            export=export.value if export else None,
        )
        log_run = open_trackers(tensorboard, mlflow, target) if main else None  # settings checked
        with finetune_progress(chosen.label, quiet or as_json) as on_progress:
            result = run_finetune(config, on_progress=on_progress, on_note=note)
        if log_run is not None:  # from metrics.json, once the run is over
            log_run(target.resolve().name, target)
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
