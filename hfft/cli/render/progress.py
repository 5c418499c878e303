"""Progress bars and spinners: transient, so a summary follows and an error stays one line."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from hfft.cli.render.summaries import switch_line

__all__ = ["compare_progress", "finetune_progress", "selftest_status", "training_progress"]

StepHook = Callable[[int, int, int], None]
EpochHook = Callable[[Mapping[str, Any]], None]


def _progress(title: str, console: Console | None, count: ProgressColumn | None = None) -> Progress:
    """A bar with a title, a count (done/total unless given), elapsed time and an info field.

    Transient: erased when done (or failed), so the summary follows and an
    error stays one line.
    """
    return Progress(
        TextColumn(title),
        BarColumn(),
        count if count is not None else MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
    )


@contextlib.contextmanager
def training_progress(
    epochs: int, quiet: bool = False, console: Console | None = None
) -> Iterator[tuple[StepHook | None, EpochHook | None]]:
    """A progress bar over epochs with the latest metrics.

    Yields the hooks ``on_step`` and ``on_epoch`` of :func:`hfft.experiment.run.train.train`.
    """
    if quiet:
        yield None, None
        return
    progress = _progress("[bold]epoch {task.fields[epoch]}/{task.total}", console)
    task = progress.add_task("train", total=epochs, epoch=1, info="")

    def on_step(epoch: int, step: int, steps: int) -> None:
        progress.update(task, completed=epoch - 1 + step / steps, epoch=epoch)

    def on_epoch(record: Mapping[str, Any]) -> None:
        info = f"train loss {record['train_batch_loss']:.4f}"
        shown = valid_shown(record)
        if shown:
            info += f", {shown}"
        progress.update(task, completed=record["epoch"], info=info)

    with progress:
        yield on_step, on_epoch


def valid_shown(entry: Mapping[str, Any]) -> str:
    """The validation accuracy, else the validation loss, for a progress line ('' if none)."""
    value = entry.get("valid_accuracy")
    if isinstance(value, (int, float)):
        return f"valid acc {value:.2%}"
    value = entry.get("valid_loss")
    return f"valid loss {value:.4f}" if isinstance(value, (int, float)) else ""


@contextlib.contextmanager
def finetune_progress(
    label: str, quiet: bool = False, console: Console | None = None
) -> Iterator[Callable[[float, Mapping[str, Any]], None] | None]:
    """A progress bar over the budget fraction with steps and the latest validation metric."""
    if quiet:
        yield None
        return
    progress = _progress(
        f"[bold]{label}", console, TextColumn("{task.percentage:>5.1f}% of budget")
    )
    task = progress.add_task("finetune", total=1.0, info="")
    state = {"info": ""}

    def on_progress(fraction: float, entry: Mapping[str, Any]) -> None:
        line = switch_line(entry)
        if line is not None:
            progress.console.print(line)
        shown = valid_shown(entry)
        if shown:
            state["info"] = f"step {entry['step']}, {shown}"
        progress.update(task, completed=min(fraction, 1.0), info=state["info"])

    with progress:
        yield on_progress


@contextlib.contextmanager
def compare_progress(
    quiet: bool = False, console: Console | None = None
) -> Iterator[Callable[[int, int, str], None] | None]:
    """A progress bar over the runs of a comparison (advanced before each new run)."""
    if quiet:
        yield None
        return
    progress = _progress("[bold]compare", console)
    task = progress.add_task("compare", total=None, info="")

    def on_run(index: int, total: int, description: str) -> None:
        progress.update(task, total=total, completed=index - 1, info=description)

    with progress:
        yield on_run


@contextlib.contextmanager
def selftest_status(quiet: bool = False, console: Console | None = None) -> Iterator[None]:
    """A transient spinner on stderr while the checks run."""
    if quiet:
        yield
        return
    with (console or Console(stderr=True)).status("hfft selftest: running checks"):
        yield
