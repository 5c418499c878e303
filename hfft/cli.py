"""The ``hfft`` command line: parses, builds a config, calls the library, renders.

torch is imported only inside commands, so ``hfft --help`` stays instant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from hfft._cli_common import (
    BatchSizeOpt,
    BudgetOpt,
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    EvalBatchOpt,
    EvalPointsOpt,
    JsonOpt,
    LrOpt,
    ModelArgOpt,
    ModelOpt,
    MomentumOpt,
    OneLineErrors,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    TrainTimeOpt,
    WeightDecayOpt,
    check_out_dir,
    data_parallel,
    fail,
    note,
    print_json,
    resolve_device,
    source_spec,
    user_errors,
)
from hfft._version import __version__
from hfft.distributed import launched

app = typer.Typer(
    name="hfft",
    help="Hessian-free fine-tuning of SGD checkpoints, and the SGD baselines to compare it with.",
    no_args_is_help=True,
    add_completion=False,
    cls=OneLineErrors,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hfft {__version__}")
        raise typer.Exit()


DATA_PARALLEL_COMMANDS = ("finetune", "compare")
"""The commands that run data-parallel when launched by torchrun."""


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hessian-free fine-tuning of SGD checkpoints, and the SGD baselines to compare it with."""
    command = ctx.invoked_subcommand
    if launched() and command not in DATA_PARALLEL_COMMANDS:
        raise fail(
            f"hfft {command} runs in one process; only "
            f"{' and '.join(DATA_PARALLEL_COMMANDS)} run under torchrun"
        )


@app.command()
def train(
    model: Annotated[
        str,
        typer.Argument(
            help="Registered model (3c3d, allcnnc, wrn164, mlp, cnn) or your own factory as "
            "path/to/file.py:function or package.module:function. Loading your own file "
            "executes it."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for checkpoints and run.json.")],
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the model's).", min=1)
    ] = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    model_arg: ModelArgOpt = None,
    checkpoints: Annotated[
        int, typer.Option(help="Evenly spaced checkpoints to keep.", min=1)
    ] = 10,
    augment: Annotated[bool, typer.Option(help="Random crops (and flips where valid).")] = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with SGD, keeping evenly spaced checkpoints and a run manifest.

    Evaluation (train-eval, validation, test) runs after every epoch outside the
    training clock; run.json records the total training time that budgets like
    `--budget 10%` refer to.
    """
    with user_errors():
        from hfft.models import PROBLEMS
        from hfft.modelspec import parse_model_args
        from hfft.train import TrainConfig
        from hfft.train import train as run_training

        check_out_dir(out)
        dev = resolve_device(device)
        problem = PROBLEMS.get(model)
        if problem is None and ":" not in model:
            raise fail(
                f"unknown model {model!r}; choose from {', '.join(PROBLEMS)} "
                "or give path/to/file.py:function"
            )
        if problem is None and (data is None or None in (epochs, lr, batch_size)):
            raise fail("a model of your own needs --data, --epochs, --lr and --batch-size")
        d = problem.defaults if problem is not None else None
        config = TrainConfig(
            model=model,
            model_args=parse_model_args(model_arg or []),
            data=data or (d.dataset if d else ""),
            data_root=str(data_root) if data_root else None,
            download=download,
            out=str(out),
            epochs=epochs or (d.epochs if d else 1),
            lr=lr if lr is not None else (d.lr if d else 0.0),
            batch_size=batch_size or (d.batch_size if d else 1),
            momentum=momentum if momentum is not None else (d.momentum if d else 0.0),
            weight_decay=weight_decay
            if weight_decay is not None
            else (d.weight_decay if d else 0.0),
            checkpoints=checkpoints,
            seed=seed,
            device=dev,
            augment=augment,
            overwrite=overwrite,
        )
        from hfft.render import training_progress

        with training_progress(config.epochs, quiet) as (on_step, on_epoch):
            result = run_training(config, on_step=on_step, on_epoch=on_epoch)
        if not quiet:
            from rich.console import Console

            from hfft.render import print_train_summary

            print_train_summary(Console(), result)


@app.command()
def finetune(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint: hfft safetensors, or a PyTorch state_dict .pt/.pth "
            "(then --model and --data are needed)."
        ),
    ],
    strategy: Annotated[
        str,
        typer.Option(
            help="hf, sgd, sgd-div10, sgd-cosine, sgd-plateau or auto (SGD, switching to "
            "hf when HF pays more); options after a colon, e.g. hf:m=2048,damping=0.5, "
            "sgd:lr=0.01 or auto:m=256,interval=0.1."
        ),
    ] = "hf",
    budget: BudgetOpt = "10%",
    out: Annotated[
        Path | None,
        typer.Option(help="Output directory (default: finetune-STRATEGY beside the checkpoint)."),
    ] = None,
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
    eval_batch_size: EvalBatchOpt = None,
    eval_points: EvalPointsOpt = 20,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a checkpoint with one strategy under a budget.

    Writes final.safetensors, best.safetensors (best validation accuracy) and
    metrics.json (configuration, evaluations over the budget, every optimizer
    step, final and best results) into --out. The clock runs only while the
    optimizer works; evaluations are paused out of it.
    """
    with user_errors():
        from hfft.finetune import FinetuneConfig
        from hfft.finetune import finetune as run_finetune
        from hfft.strategies import parse_strategy

        label = parse_strategy(strategy).label
        target = out or checkpoint.parent / ("finetune-" + re.sub(r"[^A-Za-z0-9.=-]+", "_", label))
        check_out_dir(target)
        dev, main = data_parallel(resolve_device(device))
        quiet, as_json = quiet or not main, as_json and main
        config = FinetuneConfig(
            checkpoint=str(checkpoint),
            strategy=strategy,
            budget=budget,
            out=str(target),
            source=source_spec(
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
            ),
            eval_batch_size=eval_batch_size,
            eval_points=eval_points,
            seed=seed,
            device=dev,
            overwrite=overwrite,
        )
        from hfft.render import finetune_progress

        with finetune_progress(label, quiet or as_json) as on_progress:
            result = run_finetune(config, on_progress=on_progress, on_note=note)
    if as_json:
        print_json(result_dict(result))
    elif not quiet:
        from rich.console import Console

        from hfft.render import print_finetune_summary

        print_finetune_summary(Console(), result)


@app.command()
def compare(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="One or more checkpoints (e.g. the phases of a run).")
    ],
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="A strategy to compare (repeatable), e.g. -s sgd -s sgd-cosine -s hf:m=512. "
            "Default: sgd, sgd-div10, sgd-cosine, sgd-plateau, hf at up to three batch sizes "
            "that fit the data, and auto with the smallest of them.",
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option(help="Seeds per strategy (paired across strategies).", min=1)
    ] = 5,
    budget: BudgetOpt = "10%",
    out: Annotated[Path, typer.Option(help="Output directory (rerun to resume).")] = Path(
        "compare"
    ),
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    train_time: TrainTimeOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    eval_batch_size: EvalBatchOpt = None,
    eval_points: EvalPointsOpt = 20,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run every strategy × seed from each checkpoint under one budget and rank them.

    Ranks by the best test accuracy and by the best train loss reached within the
    budget (mean and quartiles over seeds, with strategies that cannot be told
    apart marked), and writes every run's outputs, compare.json and PNG plots
    into --out. Runs go one after another on the device; rerunning reuses
    finished runs.
    """
    with user_errors():
        from hfft.compare import CompareConfig
        from hfft.compare import compare as run_compare

        check_out_dir(out)
        dev, main = data_parallel(resolve_device(device))
        quiet, as_json = quiet or not main, as_json and main
        config = CompareConfig(
            checkpoints=tuple(str(c) for c in checkpoints),
            strategies=tuple(strategy or []) or None,
            seeds=seeds,
            budget=budget,
            out=str(out),
            eval_points=eval_points,
            eval_batch_size=eval_batch_size,
            device=dev,
            source=source_spec(
                model, model_arg, data, data_root, download, train_time, lr, batch_size
            ),
            overwrite=overwrite,
        )
        from hfft.render import compare_progress

        with compare_progress(quiet or as_json) as on_run:
            result = run_compare(config, on_run=on_run, on_note=note)
    if as_json:
        print_json(result.summary)
    elif not quiet:
        from rich.console import Console

        from hfft.render import print_compare

        print_compare(Console(), result)


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
    }


# bench, demo and selftest live in their own module; importing it registers them
from hfft import _cli_tools  # noqa: E402

__all__ = ["_cli_tools", "app", "main"]


def main() -> None:
    """Console-script entry point.

    The process's first Ctrl-C or SIGTERM stops a run; any later one waits for
    the run to save and, once it has, is ignored, so it cannot cut the last
    line short while the process exits.
    """
    from hfft.interrupts import first_signal_stops

    with first_signal_stops(ignore_after_stop=True):
        app()
