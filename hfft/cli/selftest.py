"""``hfft selftest``: are curvature products correct and deterministic here, and on my model?"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from hfft.cli.common import (
    NO_SOURCE,
    SGD_SETTINGS,
    DebugOpt,
    JsonOpt,
    QuietOpt,
    SourceArgs,
    command_guard,
    fail,
    note,
    print_json,
    resolve_device,
    takes_source,
)


class SelftestMode(str, Enum):
    """The model mode HF will use during its steps."""

    eval = "eval"
    train = "train"


CheckpointArgument = Annotated[
    Path | None,
    typer.Argument(
        help="Checkpoint to check: hfft safetensors, or a PyTorch state_dict (then --model "
        "and --data are needed). Without it: built-in problems on every available device."
    ),
]
BatchOpt = Annotated[
    int, typer.Option(metavar="<int>", help="Training samples in the checked batch.", min=1)
]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        help="Time budget that the cost line fills with HF and SGD steps: 10% of the "
        "training time (the default when it is known) or 600s / 10m / 1h."
    ),
]
ModeOpt = Annotated[
    SelftestMode,
    typer.Option(help="Model mode HF will use (its default: eval); train is checked too."),
]
ChunkOpt = Annotated[
    int | None, typer.Option(metavar="<int>", help="HF's chunk size, if you will use one.", min=1)
]
DevicesOpt = Annotated[
    str,
    typer.Option(
        help="auto (every available device for the built-in checks), cpu, cuda or cuda:N."
    ),
]


@takes_source(without=SGD_SETTINGS)
def selftest(
    checkpoint: CheckpointArgument = None,
    source: SourceArgs = NO_SOURCE,
    batch_size: BatchOpt = 128,
    budget: BudgetOpt = None,
    mode: ModeOpt = SelftestMode.eval,
    chunk_size: ChunkOpt = None,
    device: DevicesOpt = "auto",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check that curvature products are correct and deterministic; exit 0 only if all pass.

    Without CHECKPOINT: GGN and Hessian products against dense matrices, both
    back-ends, CG on an SPD system, chunked accumulation and determinism on tiny
    float64 problems, on the CPU and on CUDA when present (with CPU/CUDA agreement).

    With CHECKPOINT: on a batch of its training data, in the mode HF uses, forward
    and product determinism, GGN symmetry and positive semi-definiteness, batch
    independence, loss reduction, finite values; training mode too, to name what
    breaks there (dropout, BatchNorm, random layers, non-deterministic kernels) and
    the fix; and the cost of HF and SGD steps within --budget.

    Exit code 0: every check passed (warnings allowed); 1: a check failed; 2: bad input.
    """
    from hfft.cli.render.progress import selftest_status

    with command_guard():
        if checkpoint is None:
            if source.given("model") is not None or source.given("data") is not None:
                raise fail("--model and --data describe a CHECKPOINT; give one or drop them")
            from hfft.diagnostics.selftest import selftest_builtin, selftest_devices

            devices = selftest_devices() if device == "auto" else [resolve_device(device)]
            with selftest_status(quiet or as_json):
                report = selftest_builtin(devices)
        else:
            from hfft.diagnostics.selftest import selftest_checkpoint

            dev = resolve_device(device)
            options = source.options()
            with selftest_status(quiet or as_json):
                start = options.load(checkpoint, dev)
                for line in start.notes:
                    note(line)
                report = selftest_checkpoint(
                    start,
                    batch_size=batch_size,
                    budget=budget,
                    mode=mode.value,
                    chunk_size=chunk_size,
                )
    if as_json:
        print_json(report.to_dict())
    elif not quiet:
        from rich.console import Console

        from hfft.cli.render.selftest import print_selftest

        print_selftest(Console(), report)
    if not report.passed:
        raise typer.Exit(1)
