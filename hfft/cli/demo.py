"""``hfft demo``: the whole workflow on scikit-learn's bundled digits, train then compare."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hfft.cli.common import DeviceOpt, QuietOpt, command_guard

OutOpt = Annotated[Path, typer.Option(help="Where the demo writes everything.")]
SeedsOpt = Annotated[int, typer.Option(help="Seeds per strategy.", min=1)]
EpochsOpt = Annotated[int, typer.Option(help="SGD training epochs.", min=2)]


def demo(
    out: OutOpt = Path("hfft-demo"),
    seeds: SeedsOpt = 3,
    epochs: EpochsOpt = 200,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """The whole workflow on scikit-learn's bundled digits: train, then compare.

    Trains a small CNN with SGD keeping 10 checkpoints (no download, no GPU),
    then compares every strategy from the middle and the last checkpoint with
    a 10 % budget, prints the ranking and writes the plots. It prints the
    equivalent `hfft train` and `hfft compare` commands.
    """
    from hfft.analysis.compare import CompareConfig
    from hfft.cli import compare, train
    from hfft.experiment.train import TrainConfig

    start = time.perf_counter()
    run = out / "train"
    with command_guard():
        # plain SGD (as in DeepOBS) for long enough that 10 % of its time buys several HF steps
        config = TrainConfig.for_model(
            "cnn",
            data="digits",
            model_args={"width": 32},
            epochs=epochs,
            lr=0.05,
            momentum=0.0,
            checkpoints=10,
            device=device,
            out=str(run),
        )
        typer.echo(
            f"$ hfft train cnn --data digits --model-arg width=32 --epochs {epochs} --lr 0.05 "
            f"--momentum 0 --checkpoints 10 --device {device} --out {run}"
        )
        train.run_and_report(config, quiet)
        ckpts = (run / "ckpt-05.safetensors", run / "ckpt-10.safetensors")
        typer.echo(
            f"\n$ hfft compare {ckpts[0]} {ckpts[1]} --seeds {seeds} --budget 10% "
            f"--device {device} --out {out / 'compare'}"
        )
        comparison = CompareConfig(
            checkpoints=tuple(str(c) for c in ckpts),
            seeds=seeds,
            budget="10%",
            out=str(out / "compare"),
            device=device,
        )
        compare.run_and_report(comparison, quiet, as_json=False)
    typer.echo(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s. Checkpoints and run.json: {run}; "
        f"every run's metrics.json and weights, compare.json and the PNG plots: {out / 'compare'}"
    )
