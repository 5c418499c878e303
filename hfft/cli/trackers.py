"""``--tensorboard DIR`` and ``--mlflow URI``, the options of ``train``, ``finetune``,
``compare`` and ``study`` that log finished runs (:mod:`hfft.analysis.trackers`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from hfft.cli.common import note

__all__ = ["MlflowOpt", "TensorBoardOpt", "open_trackers"]

TensorBoardOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="Also write each run's evaluations as TensorBoard event files into DIR, a folder "
        "per run, once it ends (the tensorboard extra).",
    ),
]
MlflowOpt = Annotated[
    str | None,
    typer.Option(
        metavar="URI",
        help="Also log each run to MLflow once it ends: a tracking URI, or a folder for a local "
        "store, e.g. ./mlruns (the mlflow extra).",
    ),
]


def open_trackers(
    tensorboard: Path | None, mlflow: str | None, out: Path, experiment: str = "hfft"
) -> Callable[[str, Path], None] | None:
    """``--tensorboard``/``--mlflow`` checked and opened (call once the command's config is
    built, before any work: a missing extra or a folder that overlaps ``out`` is one
    sentence): what logs a finished run, called as ``log(name, folder)``; ``None`` when
    neither is given. ``experiment`` is the MLflow experiment, unless the user's
    ``MLFLOW_EXPERIMENT_NAME`` names one."""
    if tensorboard is None and mlflow is None:
        return None
    from hfft.analysis.trackers import open_trackers as opened

    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
    return opened(tensorboard, mlflow, experiment, outside=out, on_note=note).log
