"""``hfft compare``: every strategy × seed from each checkpoint under one budget, ranked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    ShardOpt,
    SourceArgs,
    check_out_dir,
    command_guard,
    compare_strategy_help,
    join_torchrun,
    note,
    parse_shard,
    print_json,
    resolve_device,
    suite_help,
    takes_source,
)
from hfft.cli.job_array import NO_JOBS, SubmitArgs, takes_jobs
from hfft.cli.trackers import MlflowOpt, TensorBoardOpt, open_trackers

if TYPE_CHECKING:
    from collections.abc import Callable

    from hfft.analysis.compare import CompareConfig, CompareResult, Shard

CheckpointsArgument = Annotated[
    list[Path], typer.Argument(help="One or more checkpoints (e.g. the phases of a run).")
]
StrategiesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--strategy",
        "-s",
        help=compare_strategy_help(),
    ),
]
SuiteOpt = Annotated[str, typer.Option(help=suite_help())]
SeedsOpt = Annotated[
    int, typer.Option(metavar="<int>", help="Seeds per strategy (paired across strategies).", min=1)
]
FirstSeedOpt = Annotated[
    int,
    typer.Option(
        metavar="<int>",
        help="The first seed: the runs take seeds N to N+seeds−1 (held-out seeds 5–9: --seeds 5 "
        "--first-seed 5); their runs already in --out are reused, those of other seeds "
        "are kept but not ranked.",
        min=0,
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        metavar="VALUE",
        help="The value of the first ranked metric whose time to target is given: an accuracy "
        "as a percentage (98.1%) or a fraction (0.981), a loss as it is (default: the best SGD "
        "baseline's final value). Checked against the task once the checkpoints load.",
    ),
]
OutOpt = Annotated[Path, typer.Option(help="Output directory (rerun to resume).")]


@takes_source()
@takes_jobs
def compare(
    ctx: typer.Context,
    checkpoints: CheckpointsArgument,
    strategy: StrategiesOpt = None,
    suite: SuiteOpt = "paper",
    seeds: SeedsOpt = 5,
    first_seed: FirstSeedOpt = 0,
    budget: BudgetOpt = "10%",
    target: TargetOpt = None,
    out: OutOpt = Path("compare"),
    source: SourceArgs = NO_SOURCE,
    eval_batch_size: EvalBatchOpt = None,
    eval_points: EvalPointsOpt = 20,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    shard: ShardOpt = None,
    jobs: SubmitArgs = NO_JOBS,
    tensorboard: TensorBoardOpt = None,
    mlflow: MlflowOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run every strategy × seed from each checkpoint under one budget and rank them.

    First the time to target: the budget each strategy needs (median over
    seeds) to reach the best SGD baseline's final test accuracy (or --target),
    and its ratio to the fastest first-order strategy's. Then the rankings by
    the best test accuracy and by the best train loss reached within the
    budget (mean and quartiles over seeds, with strategies that cannot be told
    apart marked). Writes every run's outputs, compare.json and PNG plots into
    --out. Runs go one after another on the device; rerunning reuses finished
    runs. With --shard I/N, N processes (e.g. a job array, one per GPU) share
    the runs in one folder, and the last to finish writes the ranking;
    --submit slurm --array N submits them as a Slurm job array.
    """
    with command_guard():
        from hfft.analysis.compare import CompareConfig
        from hfft.experiment.strategies.registry import parse_strategy

        jobs.check(shard, trackers=tensorboard is not None or mlflow is not None)
        check_out_dir(out)
        dev, main = jobs.device(device) if jobs.cluster else join_torchrun(resolve_device(device))
        config = CompareConfig(
            checkpoints=tuple(str(c) for c in checkpoints),
            strategies=tuple(parse_strategy(s) for s in strategy or []) or None,
            suite=suite,
            seeds=seeds,
            first_seed=first_seed,
            budget=budget,
            out=str(out),
            eval_points=eval_points,
            eval_batch_size=eval_batch_size,
            device=dev,
            source=source.options(),
            overwrite=overwrite,
            target=target,
            shard=parse_shard(shard),
        )
        log_run = open_trackers(tensorboard, mlflow, out, out.resolve().name) if main else None
        if jobs.cluster:
            jobs.submit(ctx, config, lambda r: report(config, r, quiet, as_json), as_json)
            return
        run_and_report(config, quiet or not main, as_json and main, log_run)


def run_and_report(
    config: CompareConfig,
    quiet: bool,
    as_json: bool,
    log_run: Callable[[str, Path], None] | None = None,
) -> CompareResult:
    """Compare with a progress bar and print the rankings (also used by ``hfft demo``);
    ``log_run`` logs each run to the trackers as it finishes or is found finished."""
    from hfft.analysis.compare import compare as run_compare
    from hfft.cli.render.progress import compare_progress

    with compare_progress(quiet or as_json) as on_run:
        result = run_compare(config, on_run=on_run, on_note=note, on_done=log_run)
    report(config, result, quiet, as_json)
    return result


def report(config: CompareConfig, result: CompareResult, quiet: bool, as_json: bool) -> None:
    """Print the rankings (or, from a shard that left them to another, what it did)."""
    if not result.assembled:
        note(shard_waiting(config.shard, config.out, result))
        if as_json:
            print_json(result.summary)
        return
    if as_json:
        print_json(result.summary)
    elif not quiet:
        from rich.console import Console

        from hfft.cli.render.summaries import print_compare

        print_compare(Console(), result)


def shard_waiting(shard: Shard | None, out: str | Path, result: CompareResult) -> str:
    """What a shard that left the ranking to another says."""
    done = f"shard {shard} ran {result.ran} runs and found {result.reused}; "
    if not result.missing:
        return done + f"every run is in {out}: the shard still running writes the ranking"
    return done + (
        f"{len(result.missing)} runs of other shards are not in {out} yet: the shard that "
        "finishes last writes the ranking (or assemble it later with --shard none)"
    )
