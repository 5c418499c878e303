"""The ``hfft`` commands around the main workflow: ``bench``, ``demo``, ``selftest``.

Registered on :data:`hfft.cli.app` when :mod:`hfft.cli` is imported. Like the
rest of the command line, they import torch only when they run.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from hfft._cli_common import (
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    JsonOpt,
    ModelArgOpt,
    ModelOpt,
    QuietOpt,
    TrainTimeOpt,
    fail,
    note,
    print_json,
    resolve_device,
    source_spec,
    user_errors,
)
from hfft.cli import app, compare, train


@app.command()
def bench(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="Checkpoint to measure on a batch of its training data (instead of --model).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Registered model to measure on random data shaped like its data set "
            "(repeatable). Default: 3c3d at batch 128 and allcnnc at batch 32.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default: 128 for 3c3d, 32 otherwise).", min=1)
    ] = None,
    device: DeviceOpt = "auto",
    rounds: Annotated[int, typer.Option(help="Timed rounds; the median is reported.", min=1)] = 5,
    cg_iterations: Annotated[
        int,
        typer.Option(
            help="CG iterations of the whole-HF-step benchmark, one step per back-end "
            "(0 skips it).",
            min=0,
        ),
    ] = 50,
    memory: Annotated[
        bool, typer.Option(help="Also measure peak memory (separate, slower runs).")
    ] = True,
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
    as_json: JsonOpt = False,
) -> None:
    """Measure what an HF step and an SGD step cost, side by side in one run.

    Times one forward, one gradient, one SGD step (hfft's and a plain PyTorch
    loop's), GGN-vector products with each back-end (torch.func and BackPACK's
    R-op), one CG iteration, chunked products, and one whole HF step per
    back-end broken down into its parts; with peak memory and FLOPs of each,
    and ratios to one gradient. Operations are interleaved round by round and
    the median is reported; the targets of issue #7 are checked at the end.
    """
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
        _bench_loops(model or ["cnn"], data, batch_size or 128, dev, rounds, as_json)
        return
    from hfft.bench import bench_model, shaped_problem

    problems = []
    with user_errors():
        if checkpoint is not None:
            src = source_spec(None, None, None, None, False, None, None, None).load(
                checkpoint, device=dev
            )
            for line in src.notes:
                note(line)
            bs = min(batch_size or 32, src.splits.num_train)
            net = src.model.eval()
            x, y = src.splits.train_x[:bs], src.splits.train_y[:bs]
            problems.append((checkpoint.name, net, x, y))
        for name in names:
            bs = batch_size or (128 if name == "3c3d" else 32)
            problems.append((name, *shaped_problem(name, bs, dev)))
        from hfft.render_bench import bench_status

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

    from hfft.render_bench import print_bench

    console = Console()
    for r in results:
        print_bench(console, r)


def _bench_loops(
    models: list[str], data: str, batch_size: int, device: str, rounds: int, as_json: bool
) -> None:
    from hfft.bench_loop import bench_sgd_loop

    with user_errors():
        loops = [bench_sgd_loop(name, data, batch_size, device, rounds) for name in models]
    if as_json:
        print_json([r.to_dict() for r in loops])
        return
    from rich.console import Console

    from hfft.render_bench import print_loop_bench

    for loop in loops:
        print_loop_bench(Console(), loop)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "hfft-demo"
    ),
    seeds: Annotated[int, typer.Option(help="Seeds per strategy.", min=1)] = 3,
    epochs: Annotated[int, typer.Option(help="SGD training epochs.", min=2)] = 200,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """The whole workflow on scikit-learn's bundled digits: train, then compare.

    Trains a small CNN with SGD keeping 10 checkpoints (no download, no GPU),
    then compares every strategy from the middle and the last checkpoint with
    a 10 % budget, prints the ranking and writes the plots. It runs exactly
    the public commands it prints.
    """
    import time

    start = time.perf_counter()
    run = out / "train"
    train_cmd = (
        f"hfft train cnn --data digits --model-arg width=32 --epochs {epochs} --lr 0.05 "
        f"--momentum 0 --checkpoints 10 --device {device} --out {run}"
    )
    typer.echo(f"$ {train_cmd}")
    # plain SGD (as in DeepOBS) for long enough that 10 % of its time buys several HF steps
    train(
        model="cnn",
        out=run,
        data="digits",
        data_root=None,
        download=False,
        epochs=epochs,
        lr=0.05,
        batch_size=None,
        momentum=0.0,
        weight_decay=None,
        model_arg=["width=32"],
        checkpoints=10,
        augment=True,
        seed=0,
        device=device,
        quiet=quiet,
    )
    ckpts = [run / "ckpt-05.safetensors", run / "ckpt-10.safetensors"]
    typer.echo(
        f"\n$ hfft compare {ckpts[0]} {ckpts[1]} --seeds {seeds} --budget 10% "
        f"--device {device} --out {out / 'compare'}"
    )
    compare(
        checkpoints=ckpts,
        strategy=None,
        seeds=seeds,
        budget="10%",
        out=out / "compare",
        model=None,
        model_arg=None,
        data=None,
        data_root=None,
        download=False,
        train_time=None,
        lr=None,
        batch_size=None,
        eval_batch_size=None,
        eval_points=20,
        device=device,
        quiet=quiet,
        as_json=False,
    )
    typer.echo(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s. Checkpoints and run.json: {run}; "
        f"every run's metrics.json and weights, compare.json and the PNG plots: {out / 'compare'}"
    )


class SelftestMode(str, Enum):
    """The model mode HF will use during its steps."""

    eval = "eval"
    train = "train"


@app.command()
def selftest(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="Checkpoint to check: hfft safetensors, or a PyTorch state_dict (then --model "
            "and --data are needed). Without it: built-in problems on every available device."
        ),
    ] = None,
    model: ModelOpt = None,
    model_arg: ModelArgOpt = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    train_time: TrainTimeOpt = None,
    batch_size: Annotated[
        int, typer.Option(help="Training samples in the checked batch.", min=1)
    ] = 128,
    budget: Annotated[
        str | None,
        typer.Option(
            help="Time budget that the cost line fills with HF and SGD steps: 10% of the "
            "training time (the default when it is known) or 600s / 10m / 1h."
        ),
    ] = None,
    mode: Annotated[
        SelftestMode,
        typer.Option(help="Model mode HF will use (its default: eval); train is checked too."),
    ] = SelftestMode.eval,
    chunk_size: Annotated[
        int | None, typer.Option(help="HF's chunk size, if you will use one.", min=1)
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="auto (every available device for the built-in checks), cpu, cuda or cuda:N."
        ),
    ] = "auto",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
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
    with user_errors():
        if checkpoint is None:
            if model is not None or data is not None:
                raise fail("--model and --data describe a CHECKPOINT; give one or drop them")
            from hfft.selftest import selftest_builtin, selftest_devices

            devices = selftest_devices() if device == "auto" else [resolve_device(device)]
            from hfft.render import selftest_status

            with selftest_status(quiet or as_json):
                report = selftest_builtin(devices)
        else:
            from hfft.render import selftest_status
            from hfft.selftest import selftest_checkpoint

            dev = resolve_device(device)
            spec = source_spec(model, model_arg, data, data_root, download, train_time, None, None)
            with selftest_status(quiet or as_json):
                source = spec.load(checkpoint, dev)
                for line in source.notes:
                    note(line)
                report = selftest_checkpoint(
                    source,
                    batch_size=batch_size,
                    budget=budget,
                    mode=mode.value,
                    chunk_size=chunk_size,
                )
    if as_json:
        print_json(report.to_dict())
    elif not quiet:
        from rich.console import Console

        from hfft.render import print_selftest

        print_selftest(Console(), report)
    if not report.passed:
        raise typer.Exit(1)
