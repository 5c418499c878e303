"""``hfft bench``: what an HF step and an SGD step cost, side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hfft.cli.common import (
    DATA_NAMES,
    MODEL_NAMES,
    DebugOpt,
    DeviceOpt,
    JsonOpt,
    SourceArgs,
    command_guard,
    fail,
    note,
    print_json,
    resolve_device,
)

CheckpointArgument = Annotated[
    Path | None,
    typer.Argument(
        help="Checkpoint to measure on a batch of its training data (instead of --model).",
        show_default=False,
    ),
]
ModelsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help=f"Registered model ({MODEL_NAMES}) to measure on random data shaped like its "
        "data set (repeatable). Default: 3c3d at batch 128 and allcnnc at batch 32.",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(metavar="<int>", help="Batch size (default: 128 for 3c3d, 32 otherwise).", min=1),
]
RoundsOpt = Annotated[
    int, typer.Option(metavar="<int>", help="Timed rounds; the median is reported.", min=1)
]
CGOpt = Annotated[
    int,
    typer.Option(
        help="CG iterations of the whole-HF-step benchmark, one step per back-end (0 skips it).",
        min=0,
    ),
]
MemoryOpt = Annotated[bool, typer.Option(help="Also measure peak memory (separate, slower runs).")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(metavar="<int>", help="torch CPU threads (default: torch's choice).", min=1),
]
LoopOpt = Annotated[
    bool,
    typer.Option(
        "--sgd-loop",
        help="Instead: one epoch of hfft's SGD loop against a plain PyTorch loop "
        "(model default cnn, on --data).",
    ),
]
DataOpt = Annotated[str, typer.Option(help=f"Data set for --sgd-loop ({DATA_NAMES}).")]


def bench(
    checkpoint: CheckpointArgument = None,
    model: ModelsOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    rounds: RoundsOpt = 5,
    cg_iterations: CGOpt = 50,
    memory: MemoryOpt = True,
    threads: ThreadsOpt = None,
    sgd_loop: LoopOpt = False,
    data: DataOpt = "digits",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Measure what an HF step and an SGD step cost, side by side in one run.

    Times one forward, one gradient, one SGD step (hfft's and a plain PyTorch
    loop's), GGN-vector products with each back-end (torch.func and BackPACK's
    R-op), one CG iteration, chunked products, and one whole HF step per
    back-end broken down into its parts; with peak memory and FLOPs of each,
    and ratios to one gradient. Operations are interleaved round by round and
    the median is reported; the performance targets are checked at the end.
    """
    with command_guard():
        import torch

        from hfft.models import PROBLEMS

        dev = resolve_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        if checkpoint is not None and model:
            raise fail("give a checkpoint or --model, not both")
        names = model or ([] if checkpoint is not None else ["3c3d", "allcnnc"])
        for name in names:
            if name not in PROBLEMS:
                raise fail(f"unknown model {name!r}; choose from {', '.join(sorted(PROBLEMS))}")
        if sgd_loop:
            return _bench_loops(model or ["cnn"], data, batch_size or 128, dev, rounds, as_json)
        problems = _problems(checkpoint, names, batch_size, dev)
        _bench_operations(problems, rounds, cg_iterations, memory, as_json)


def _problems(
    checkpoint: Path | None, names: list[str], batch_size: int | None, device: str
) -> list[tuple]:
    """(name, model, inputs, targets) to measure: a checkpoint's batch, or shaped random data."""
    from hfft.diagnostics.bench import shaped_problem
    from hfft.optim.batches import take

    problems = []
    if checkpoint is not None:
        options = SourceArgs().options()
        start = options.load(checkpoint, device=device)
        for line in start.notes:
            note(line)
        bs = min(batch_size or 32, start.splits.num_train)
        x, y = take(start.splits.train_x, slice(0, bs)), start.splits.train_y[:bs]
        problems.append((checkpoint.name, start.model.eval(), x, y))
    for name in names:
        bs = batch_size or (128 if name == "3c3d" else 32)
        problems.append((name, *shaped_problem(name, bs, device)))
    return problems


def _bench_operations(
    problems: list[tuple], rounds: int, cg_iterations: int, memory: bool, as_json: bool
) -> None:
    from hfft.cli.render.bench import bench_status
    from hfft.diagnostics.bench import bench_model

    with bench_status(quiet=as_json) as on_stage:
        results = [
            bench_model(
                net,
                x,
                y,
                name=name,
                rounds=rounds,
                cg_iterations=cg_iterations,
                measure_memory=memory,
                on_stage=on_stage,
            )
            for name, net, x, y in problems
        ]
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    from rich.console import Console

    from hfft.cli.render.bench import print_bench

    console = Console()
    for r in results:
        print_bench(console, r)


def _bench_loops(
    models: list[str], data: str, batch_size: int, device: str, rounds: int, as_json: bool
) -> None:
    from hfft.diagnostics.loop_bench import bench_sgd_loop

    loops = [bench_sgd_loop(name, data, batch_size, device, rounds) for name in models]
    if as_json:
        print_json([r.to_dict() for r in loops])
        return
    from rich.console import Console

    from hfft.cli.render.bench import print_loop_bench

    for loop in loops:
        print_loop_bench(Console(), loop)
