"""``hfft demo``: a small ``hfft study`` on MNIST-1D, the paper's phenomenon in about 2 minutes.

MNIST-1D is generated offline by the ``mnist1d`` package (no download). The
settings were chosen on training seeds 1 and 2, where HF ranked last from the
early checkpoint and first from the late one; the demo trains with seed 0.
``--quick`` is a smoke run on scikit-learn's digits, for tests.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from hfft.cli.common import DeviceOpt, QuietOpt, command_guard

OutOpt = Annotated[Path, typer.Option(help="Where the demo writes everything.")]
SeedsOpt = Annotated[int, typer.Option(help="Seeds per strategy.", min=1)]
EpochsOpt = Annotated[
    int | None, typer.Option(help="SGD training epochs (default: 40; --quick: 10).", min=2)
]
QuickOpt = Annotated[
    bool,
    typer.Option(
        "--quick",
        help="A smoke run instead: a small CNN on scikit-learn's digits, 2 checkpoints "
        "(seconds per seed; shows nothing about HF).",
    ),
]


@dataclass(frozen=True)
class _Setting:
    """One demo: the model, data and training, and Figure 1's strategies."""

    model: str
    data: str
    epochs: int
    lr: float
    checkpoints: int
    strategies: tuple[str, ...]
    model_args: dict[str, Any] = field(default_factory=lambda: {"width": 32})


MNIST1D = _Setting(
    "cnn1d",
    "mnist1d:samples=10000",
    epochs=40,
    lr=0.1,
    checkpoints=3,
    strategies=("sgd", "hf:m=1024", "hf:m=2048"),
)
"""7,200 training signals; 40 epochs of plain SGD (batch 32, L2 1e-3) reach the late phase
(96 % test accuracy, the train loss still falling slowly and noisily). HF at m = 1024 and
2048, where its steps lower the loss on B̄; at m = 256 they do not (docs/study-mnist1d.md)."""

DIGITS = _Setting(
    "cnn", "digits", epochs=10, lr=0.05, checkpoints=2, strategies=("sgd", "hf:m=256")
)
"""The smoke run of ``--quick``."""


def demo(
    out: OutOpt = Path("hfft-demo"),
    seeds: SeedsOpt = 3,
    epochs: EpochsOpt = None,
    quick: QuickOpt = False,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """The paper's experiment in small: a `hfft study` on MNIST-1D (about 2 minutes).

    Trains a small 1-D CNN with plain SGD on MNIST-1D (generated offline, no
    download, no GPU) keeping early, middle and late checkpoints, compares SGD
    with HF at m = 1024 and 2048 from each (Figure 1), and every late-phase
    strategy from the last (Figure 2), with 10 % of the training time each.
    Prints the last checkpoint's ranking, writes report.md and the figures,
    and ends with what the runs show. It prints the equivalent `hfft study`
    command. One torch thread unless OMP_NUM_THREADS says otherwise.
    """
    from hfft.analysis.findings import findings_markdown
    from hfft.analysis.study import StudyConfig
    from hfft.cli import study
    from hfft.experiment.run.train import TrainConfig
    from hfft.experiment.strategies.registry import parse_strategy

    start = time.perf_counter()
    setting = DIGITS if quick else MNIST1D
    epochs = epochs or setting.epochs
    with command_guard(), _one_thread():
        train = TrainConfig.for_model(
            setting.model,
            data=setting.data,
            model_args=setting.model_args,
            epochs=epochs,
            lr=setting.lr,
            momentum=0.0,  # plain SGD, as in DeepOBS and the paper
            checkpoints=setting.checkpoints,
            device=device,
            out=str(out / "train"),
        )
        typer.echo(_command(setting, epochs, seeds, device, out))
        config = StudyConfig(
            out=str(out),
            train=train,
            strategies=tuple(map(parse_strategy, setting.strategies)),
            seeds=seeds,
            budget="10%",
            device=device,
        )
        result = study.run_and_report(config, quiet)
    typer.echo("\n" + findings_markdown(result.comparison.summary, setting.strategies))
    typer.echo(
        f"demo finished in {time.perf_counter() - start:.0f} s. The report: {result.report}; "
        f"checkpoints and run.json: {result.train_dir}; every run: {out / 'runs'}"
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread while the demo runs (then as before): these models are tiny, and a
    second thread that waits for a busy core made each SGD step 10× slower on a loaded
    2-core machine. ``OMP_NUM_THREADS`` set by the user wins."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _command(setting: _Setting, epochs: int, seeds: int, device: str, out: Path) -> str:
    """The ``hfft study`` command the demo stands for."""
    args = " ".join(f"--model-arg {k}={v}" for k, v in setting.model_args.items())
    strategies = " ".join(f"-s {s}" for s in setting.strategies)
    return (
        f"$ OMP_NUM_THREADS=1 hfft study {setting.model} --data {setting.data} {args} "
        f"--epochs {epochs} --lr {setting.lr} --checkpoints {setting.checkpoints} {strategies} "
        f"--seeds {seeds} --budget 10% --device {device} --out {out}"
    )
