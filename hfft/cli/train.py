"""``hfft train``: SGD from scratch with evenly spaced checkpoints and a run manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hfft.cli.common import (
    MODEL_NAMES,
    BatchSizeOpt,
    DataOpt,
    DataRootOpt,
    DebugOpt,
    DeviceOpt,
    DownloadOpt,
    LossOpt,
    LrOpt,
    MetricOpt,
    ModelArgOpt,
    MomentumOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    TaskOpt,
    ValidFractionOpt,
    WeightDecayOpt,
    check_out_dir,
    command_guard,
    fail,
    note,
    resolve_device,
)
from hfft.cli.trackers import MlflowOpt, TensorBoardOpt, open_trackers

if TYPE_CHECKING:
    from collections.abc import Callable

    from hfft.experiment.run.train import TrainConfig, TrainResult

ModelArgument = Annotated[
    str,
    typer.Argument(
        help=f"Registered model ({MODEL_NAMES}) or your own factory as "
        "file.py:fn or package.module:fn. Loading your own file "
        "executes it."
    ),
]


def train(
    model: ModelArgument,
    out: Annotated[Path, typer.Option(help="Directory for checkpoints and run.json.")],
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    epochs: Annotated[
        int | None, typer.Option(metavar="<int>", help="Epochs (default: the model's).", min=1)
    ] = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    model_arg: ModelArgOpt = None,
    task: TaskOpt = None,
    loss: LossOpt = None,
    metric: MetricOpt = None,
    valid_fraction: ValidFractionOpt = None,
    checkpoints: Annotated[
        int, typer.Option(metavar="<int>", help="Evenly spaced checkpoints to keep.", min=1)
    ] = 10,
    augment: Annotated[bool, typer.Option(help="Random crops (and flips where valid).")] = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    tensorboard: TensorBoardOpt = None,
    mlflow: MlflowOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a model with SGD, keeping evenly spaced checkpoints and a run manifest.

    Evaluation (train-eval, validation, test) runs after every epoch outside the
    training clock; run.json records the total training time that budgets like
    `--budget 10%` refer to.
    """
    with command_guard():
        from hfft.experiment.data.factories import parse_model_args
        from hfft.experiment.run.train import TrainConfig

        check_out_dir(out)
        config = TrainConfig.for_model(
            model,
            model_args=parse_model_args(model_arg or []),
            data=data,
            data_root=str(data_root) if data_root else None,
            download=download,
            out=str(out),
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            momentum=momentum,
            weight_decay=weight_decay,
            checkpoints=checkpoints,
            seed=seed,
            device=resolve_device(device),
            augment=augment,
            overwrite=overwrite,
            task=task,
            loss=loss,
            metric=metric,
            valid_fraction=valid_fraction,
        )
        log_run = open_trackers(tensorboard, mlflow, out)  # once the settings are checked
        run_and_report(config, quiet, log_run=log_run)


def run_and_report(
    config: TrainConfig,
    quiet: bool,
    keep_finished: bool = False,
    log_run: Callable[[str, Path], None] | None = None,
) -> TrainResult:
    """Train with a progress bar and print the summary (also used by ``hfft study``);
    ``log_run`` logs the finished run to the trackers (``--tensorboard``, ``--mlflow``)."""
    from hfft.cli.render.progress import training_progress
    from hfft.experiment.run.train import train as run_training

    with training_progress(config.epochs, quiet) as (on_step, on_epoch):
        result = run_training(
            config, on_step=on_step, on_epoch=on_epoch, on_note=note, keep_finished=keep_finished
        )
    if log_run is not None:  # from run.json, once the training is over (a diverged one too)
        folder = result.manifest.parent
        log_run(folder.resolve().name, folder)
    if result.status == "diverged":
        raise fail(_diverged_sentence(result), code=1)
    if not quiet:
        from rich.console import Console

        from hfft.cli.render.summaries import print_train_summary

        print_train_summary(Console(), result)
    return result


def _diverged_sentence(result: TrainResult) -> str:
    kept = len(result.checkpoints)
    saved = {
        0: "no checkpoint was written",
        1: "the checkpoint written before it is kept",
    }.get(kept, f"the {kept} checkpoints written before it are kept")
    return (
        f"training diverged in epoch {result.diverged_at} (a loss or weight became NaN or "
        f"infinite); {saved} in {result.manifest.parent}, and run.json marks the run "
        "diverged; try a smaller --lr."
    )
