"""The ``hfft`` command line: parses, builds a config, calls the library, renders.

torch is imported only inside commands, so ``hfft --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from hfft._version import __version__

app = typer.Typer(
    name="hfft",
    help="Hessian-free fine-tuning of SGD checkpoints, and the SGD baselines to compare it with.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one sentence to stderr and return the exit to raise."""
    typer.echo(f"hfft: error: {message}", err=True)
    return typer.Exit(code)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is an error."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise fail(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise fail(f"--device {name} was asked for but CUDA is not available on this machine")
    return name


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that runs save what they have."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn user mistakes into one sentence and exit code 2; interrupts into 130/143."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except Terminated:
        typer.echo("hfft: terminated; what was finished is saved and marked interrupted", err=True)
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        typer.echo("hfft: interrupted; what was finished is saved and marked interrupted", err=True)
        raise typer.Exit(130) from None
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise fail(str(err).rstrip(".") + ".") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_out_dir(out: Path) -> None:
    """``--out`` must be a directory we can create and write to."""
    import os

    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a directory")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise fail(f"--out {out} is not writable")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hfft {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hessian-free fine-tuning of SGD checkpoints, and the SGD baselines to compare it with."""


@app.command()
def bench(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Registered model to measure (repeatable). Default: 3c3d at batch 128 "
            "and allcnnc at batch 32.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default: 128 for 3c3d, 32 otherwise).", min=1)
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    rounds: Annotated[int, typer.Option(help="Timed rounds; the median is reported.", min=1)] = 5,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's choice).", min=1)
    ] = None,
    sgd_loop: Annotated[
        bool,
        typer.Option(
            "--sgd-loop",
            help="Instead: one epoch of hfft's SGD loop against a plain PyTorch loop "
            "(model default cnn, on --data).",
        ),
    ] = False,
    data: Annotated[str, typer.Option(help="Data set for --sgd-loop.")] = "digits",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Time a gradient and GGN-vector products (torch.func and BackPACK) side by side.

    Random data shaped like each model's data set; every operation is measured in
    the same run, interleaved, and reported with its ratio to one gradient.
    """
    import torch

    from hfft.bench import bench_products, shaped_problem
    from hfft.models import PROBLEMS

    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    names = model or ["3c3d", "allcnnc"]
    for name in names:
        if name not in PROBLEMS:
            raise fail(f"unknown model {name!r}; choose from {', '.join(sorted(PROBLEMS))}")
    if sgd_loop:
        with user_errors():
            from hfft.bench import bench_sgd_loop

            loops = [
                bench_sgd_loop(name, data, batch_size or 128, dev, rounds)
                for name in (model or ["cnn"])
            ]
        if as_json:
            json.dump([r.to_dict() for r in loops], sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            from rich.console import Console

            from hfft.render import print_loop_bench

            for loop in loops:
                print_loop_bench(Console(), loop)
        return
    results = []
    for name in names:
        bs = batch_size or (128 if name == "3c3d" else 32)
        net, x, y = shaped_problem(name, bs, dev)
        results.append(bench_products(net, x, y, name=name, rounds=rounds))
    if as_json:
        json.dump([r.to_dict() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    from rich.console import Console

    from hfft.render import print_bench

    console = Console()
    for r in results:
        print_bench(console, r)


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
    data: Annotated[
        str | None,
        typer.Option(
            help="Data set: digits, cifar10, cifar100, svhn, mnist, fashion-mnist, synthetic, "
            "or path/to/file.py:function returning (train, test). Default: the model's."
        ),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Where torchvision data sets are (or go with --download).")
    ] = None,
    download: Annotated[bool, typer.Option(help="Download a missing data set.")] = False,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the model's).", min=1)
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="SGD learning rate (default: the model's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default: the model's).", min=1)
    ] = None,
    momentum: Annotated[
        float | None, typer.Option(help="SGD momentum (default: the model's).")
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="L2 on weights, not biases or norms (default: the model's)."),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option("--model-arg", help="Model keyword argument KEY=VALUE (repeatable)."),
    ] = None,
    checkpoints: Annotated[
        int, typer.Option(help="Evenly spaced checkpoints to keep.", min=1)
    ] = 10,
    augment: Annotated[bool, typer.Option(help="Random crops (and flips where valid).")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
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
        )
        from hfft.render import training_progress

        with training_progress(config.epochs, quiet) as (on_step, on_epoch):
            result = run_training(config, on_step=on_step, on_epoch=on_epoch)
        if not quiet:
            from rich.console import Console

            from hfft.render import print_train_summary

            print_train_summary(Console(), result)


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    from hfft.budget import parse_duration

    return parse_duration(text)


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
            help="hf, sgd, sgd-div10, sgd-cosine or sgd-plateau; options after a colon, "
            "e.g. hf:m=2048,damping=0.5 or sgd:lr=0.01."
        ),
    ] = "hf",
    budget: Annotated[
        str,
        typer.Option(
            help="10% (of the original training time), 600s / 10m / 1h, 200steps or 3epochs."
        ),
    ] = "10%",
    out: Annotated[
        Path | None,
        typer.Option(help="Output directory (default: finetune-STRATEGY beside the checkpoint)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model name or path/to/file.py:factory (executes that file)."),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option("--model-arg", help="Model keyword argument KEY=VALUE (repeatable)."),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Data set (default: the checkpoint's).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Where torchvision data sets are.")] = None,
    download: Annotated[bool, typer.Option(help="Download a missing data set.")] = False,
    train_time: Annotated[
        str | None,
        typer.Option(help="Original training time (e.g. 2h) when run.json does not know it."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="SGD learning rate α (default: training's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="SGD batch size (default: training's).", min=1)
    ] = None,
    momentum: Annotated[
        float | None, typer.Option(help="SGD momentum (default: training's).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 of the objective (default: the problem's).")
    ] = None,
    eval_batch_size: Annotated[
        int | None, typer.Option(help="Size of HF's second batch B̄ (default 1024).", min=1)
    ] = None,
    eval_points: Annotated[
        int, typer.Option(help="Evaluations spread over the budget, besides the start.", min=1)
    ] = 20,
    seed: Annotated[int, typer.Option(help="Random seed of this run.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
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
        from hfft.modelspec import parse_model_args
        from hfft.strategies import parse_strategy

        label = parse_strategy(strategy).label
        target = out or checkpoint.parent / ("finetune-" + re.sub(r"[^A-Za-z0-9.=-]+", "_", label))
        check_out_dir(target)
        config = FinetuneConfig(
            checkpoint=str(checkpoint),
            strategy=strategy,
            budget=budget,
            out=str(target),
            model=model,
            model_args=parse_model_args(model_arg or []),
            data=data,
            data_root=str(data_root) if data_root else None,
            download=download,
            train_time=_seconds(train_time),
            lr=lr,
            batch_size=batch_size,
            momentum=momentum,
            weight_decay=weight_decay,
            eval_batch_size=eval_batch_size,
            eval_points=eval_points,
            seed=seed,
            device=resolve_device(device),
        )
        from hfft.render import finetune_progress

        with finetune_progress(label, quiet or as_json) as on_progress:
            result = run_finetune(config, on_progress=on_progress)
    if as_json:
        json.dump(result_dict(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not quiet:
        from rich.console import Console

        from hfft.render import print_finetune_summary

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
    }


def main() -> None:
    """Console-script entry point."""
    app()
