"""``hfft study``: the paper's whole experiment (Figures 1 and 2) in one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hfft.cli.common import (
    BatchSizeOpt,
    BudgetOpt,
    DataOpt,
    DataRootOpt,
    DebugOpt,
    DeviceOpt,
    EvalBatchOpt,
    EvalPointsOpt,
    LossOpt,
    LrOpt,
    ModelArgOpt,
    QuietOpt,
    ShardOpt,
    TaskOpt,
    WeightDecayOpt,
    check_out_dir,
    command_guard,
    note,
    parse_shard,
    resolve_device,
)
from hfft.cli.compare import FirstSeedOpt, SeedsOpt, StrategiesOpt, TargetOpt
from hfft.cli.job_array import NO_JOBS, SubmitArgs, takes_jobs
from hfft.cli.trackers import MlflowOpt, TensorBoardOpt, open_trackers
from hfft.cli.train import ModelArgument

if TYPE_CHECKING:
    from collections.abc import Callable

    from hfft.analysis.study import StudyConfig, StudyResult

TrainRunOpt = Annotated[
    Path | None,
    typer.Option(
        help="A finished `hfft train` folder to study instead of training (MODEL still names "
        "the model's code)."
    ),
]
CheckpointsOpt = Annotated[
    int,
    typer.Option(
        metavar="<int>", help="Evenly spaced training checkpoints (Figure 1's x axis).", min=2
    ),
]
EpochsOpt = Annotated[
    int | None, typer.Option(metavar="<int>", help="Epochs (default: the model's).", min=1)
]
StudyMomentumOpt = Annotated[
    float, typer.Option(help="SGD momentum of the training (the paper's protocol: plain SGD).")
]


@takes_jobs
def study(
    ctx: typer.Context,
    model: ModelArgument,
    out: Annotated[Path, typer.Option(help="Output directory (rerun to resume).")],
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    train_run: TrainRunOpt = None,
    checkpoints: CheckpointsOpt = 10,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    momentum: StudyMomentumOpt = 0.0,
    weight_decay: WeightDecayOpt = None,
    model_arg: ModelArgOpt = None,
    task: TaskOpt = None,
    loss: LossOpt = None,
    strategy: StrategiesOpt = None,
    seeds: SeedsOpt = 5,
    first_seed: FirstSeedOpt = 0,
    budget: BudgetOpt = "10%",
    target: TargetOpt = None,
    eval_points: EvalPointsOpt = 20,
    eval_batch_size: EvalBatchOpt = None,
    device: DeviceOpt = "auto",
    shard: ShardOpt = None,
    jobs: SubmitArgs = NO_JOBS,
    tensorboard: TensorBoardOpt = None,
    mlflow: MlflowOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The paper's protocol: train with SGD, then Figure 1 and Figure 2, and a report.

    Trains MODEL with constant-rate SGD keeping --checkpoints checkpoints (or
    reuses --train-run), then from every checkpoint runs SGD against HF at
    the paper's batch sizes that fit the data and auto (Figure 1, scored 0 to
    1 per checkpoint), and from the last checkpoint every late-phase strategy
    (Figure 2), each with --seeds seeds under --budget. Writes OUT/report.md
    (opening with each strategy's time to target and ending with what the
    runs show), figure1-*.png and figure2.png; every run is in OUT/runs. A
    rerun resumes; --shard I/N shares the runs among N processes, and
    --submit slurm --array N submits them as a Slurm job array.
    """
    with command_guard():
        from hfft.analysis.study import StudyConfig
        from hfft.experiment.data.factories import parse_model_args
        from hfft.experiment.run.train import TrainConfig
        from hfft.experiment.strategies.registry import parse_strategy

        jobs.check(shard, trackers=tensorboard is not None or mlflow is not None)
        check_out_dir(out)
        args = parse_model_args(model_arg or [])
        dev = jobs.device(device)[0] if jobs.cluster else resolve_device(device)
        train = None
        if train_run is None:
            train = TrainConfig.for_model(
                model,
                data=data,
                data_root=str(data_root) if data_root else None,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                momentum=momentum,
                weight_decay=weight_decay,
                model_args=args,
                task=task,
                loss=loss,
                checkpoints=checkpoints,
                device=dev,
                out=str(out / "train"),
            )
        config = StudyConfig(
            out=str(out),
            train=train,
            train_run=None if train_run is None else str(train_run),
            strategies=tuple(parse_strategy(s) for s in strategy or []) or None,
            seeds=seeds,
            first_seed=first_seed,
            budget=budget,
            target=target,
            eval_points=eval_points,
            eval_batch_size=eval_batch_size,
            device=dev,
            source=_user_code(model, args, data, data_root, task, loss),
            shard=parse_shard(shard),
        )
        log_run = open_trackers(tensorboard, mlflow, out, out.resolve().name)
        if jobs.cluster:
            jobs.submit(ctx, config, lambda r: report(config, r, quiet))
            return
        run_and_report(config, quiet, log_run)


def _user_code(
    model: str,
    args: dict[str, Any],
    data: str | None,
    data_root: Path | None,
    task: str | None,
    loss: str | None,
) -> Any:
    """What the runs take from the command line rather than the checkpoints: the user's
    model and data code (a checkpoint never names code), the data folder, task and loss."""
    from hfft.experiment.data.datasets import builtin_data
    from hfft.experiment.run.starting_point import StartingPointOptions
    from hfft.models import PROBLEMS

    registered = model in PROBLEMS
    return StartingPointOptions(
        model=None if registered else model,
        model_args={} if registered else args,
        data=data if data is not None and builtin_data(data) is None else None,
        data_root=str(data_root) if data_root else None,
        task=task,
        loss=loss,
    )


def run_and_report(
    config: StudyConfig, quiet: bool, log_run: Callable[[str, Path], None] | None = None
) -> StudyResult:
    """Run the study with progress bars and say where the report is (also ``hfft demo``);
    ``log_run`` logs the training and each run to the trackers."""
    from hfft.analysis.study import study as run_study
    from hfft.cli import train
    from hfft.cli.render.progress import compare_progress

    def trained(train_config: Any, keep_finished: bool = False) -> Any:
        return train.run_and_report(train_config, quiet, keep_finished=keep_finished)

    with compare_progress(quiet) as on_run:
        result = run_study(
            config, run_training=trained, on_run=on_run, on_note=note, on_done=log_run
        )
    report(config, result, quiet)
    return result


def report(config: StudyConfig, result: StudyResult, quiet: bool) -> None:
    """Say where the report is, with the time to target and the rankings from the last
    checkpoint (or what a shard that left the ranking to another did)."""
    from hfft.cli import compare

    comparison = result.comparison
    if not comparison.assembled:
        note(compare.shard_waiting(config.shard, Path(config.out) / "runs", comparison))
    elif not quiet:
        from rich.console import Console

        from hfft.cli.render.summaries import print_target, ranking_table

        console, summary = Console(), comparison.summary
        last = summary["checkpoints"][-1]  # Figure 2's; the rest is in the report
        print_target(console, last)
        for metric in summary["metrics"]:
            console.print(ranking_table(last, metric))
        console.print(
            f"{comparison.ran} runs done, {comparison.reused} reused; every run in "
            f"{Path(config.out) / 'runs'}.\nreport: {result.report}"
        )
        for figure in result.figures:
            console.print(f"figure: {figure}")
