"""The ``hfft`` command line: parses, builds a config, calls the library, renders.

torch is imported only inside commands, so ``hfft --help`` stays instant.
"""

from __future__ import annotations

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


def main() -> None:
    """Console-script entry point."""
    app()
