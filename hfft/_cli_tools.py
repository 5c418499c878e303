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
    print_json,
    resolve_device,
    source_spec,
    user_errors,
)
from hfft.cli import app, compare, train


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
    device: DeviceOpt = "auto",
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
    as_json: JsonOpt = False,
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
            print_json([r.to_dict() for r in loops])
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
        print_json([r.to_dict() for r in results])
        return
    from rich.console import Console

    from hfft.render import print_bench

    console = Console()
    for r in results:
        print_bench(console, r)


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
