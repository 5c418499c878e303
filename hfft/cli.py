"""The ``hfft`` command line: parses, builds a config, calls the library, renders.

torch is imported only inside commands, so ``hfft --help`` stays instant.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated

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


def main() -> None:
    """Console-script entry point."""
    app()
