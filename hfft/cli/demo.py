"""``hfft demo``: a small ``hfft study`` on scikit-learn's bundled digits."""

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
    """The whole workflow on scikit-learn's bundled digits: a small `hfft study`.

    Trains a small CNN with plain SGD keeping 2 checkpoints (no download, no
    GPU), compares SGD, HF and auto from both (Figure 1) and every late-phase
    strategy from the last (Figure 2) with a 10 % budget, prints the last
    checkpoint's ranking and writes report.md and the figures. It prints the
    equivalent `hfft study` command.
    """
    from hfft.analysis.study import StudyConfig
    from hfft.cli import study
    from hfft.experiment.train import TrainConfig

    start = time.perf_counter()
    with command_guard():
        # plain SGD (as in DeepOBS) for long enough that 10 % of its time buys several HF steps
        train = TrainConfig.for_model(
            "cnn",
            data="digits",
            model_args={"width": 32},
            epochs=epochs,
            lr=0.05,
            momentum=0.0,
            checkpoints=2,
            device=device,
            out=str(out / "train"),
        )
        typer.echo(
            f"$ hfft study cnn --data digits --model-arg width=32 --epochs {epochs} --lr 0.05 "
            f"--checkpoints 2 --seeds {seeds} --budget 10% --device {device} --out {out}"
        )
        config = StudyConfig(out=str(out), train=train, seeds=seeds, budget="10%", device=device)
        result = study.run_and_report(config, quiet)
    typer.echo(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s. The report: {result.report}; "
        f"checkpoints and run.json: {result.train_dir}; every run: {out / 'runs'}"
    )
