"""The ``hfft`` command line: one module per command, each thin on the library.

A command parses its options, builds a frozen config, calls one library
function and renders the result (:mod:`hfft.cli.render`). Shared options and
error handling are in :mod:`hfft.cli.common`. torch is imported only when a
command runs, so ``hfft --help`` stays instant (a test holds it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, NoReturn

import typer

from hfft._version import __version__
from hfft.cli import bench, compare, demo, finetune, selftest, study, train
from hfft.cli.common import OneLineErrors, fail, set_debug
from hfft.optim.distributed import launched

__all__ = ["app", "main"]

app = typer.Typer(
    name="hfft",
    help="Hessian-free fine-tuning of SGD checkpoints, and the SGD baselines to compare it with.",
    no_args_is_help=True,
    add_completion=False,
    cls=OneLineErrors,
    pretty_exceptions_enable=False,
)

for module in (train, finetune, compare, study, selftest, bench, demo):
    app.command()(getattr(module, module.__name__.rpartition(".")[2]))

DATA_PARALLEL_COMMANDS = ("finetune", "compare")
"""The commands that run data-parallel when launched by torchrun."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hfft {__version__}")
        raise typer.Exit()


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
    set_debug(False)  # each command's --debug sets it again; one without the option has none
    command = ctx.invoked_subcommand
    if launched() and command not in DATA_PARALLEL_COMMANDS:
        raise fail(
            f"hfft {command} runs in one process; only "
            f"{' and '.join(DATA_PARALLEL_COMMANDS)} run under torchrun"
        )


def main() -> None:
    """Console-script entry point.

    The process's first Ctrl-C or SIGTERM stops a run; any later one waits for
    the run to save and, once it has, is ignored, so it cannot cut the last
    line short while the process exits.
    """
    from hfft.experiment.interrupts import first_signal_stops

    if not launched():
        with first_signal_stops(ignore_after_stop=True):
            app()
        return
    code: int | str | None = 0
    with first_signal_stops(ignore_after_stop=True):
        try:
            app()
        except SystemExit as done:
            code = done.code
    _leave(code)


def _leave(code: int | str | None) -> NoReturn:
    """End a process that ``torchrun`` started, now, with ``code``, skipping the interpreter's
    teardown.

    By then the command has written and flushed its files and left the process
    group. What would follow is C++ static destruction, in which one rank of a
    two-rank Gloo job died now and then with "terminate called without an active
    exception" (SIGABRT: a library thread still joinable when its owner is
    destroyed), turning a finished run into a failed job. ``os._exit`` skips that
    teardown; the output streams are flushed first.
    """
    if isinstance(code, str):  # SystemExit("message"): print it, as Python would
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)
