"""All terminal rendering (Rich) in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from hfft.compare import CompareResult
    from hfft.finetune import FinetuneResult
    from hfft.train import TrainResult

StepHook = Callable[[int, int, int], None]
EpochHook = Callable[[dict[str, Any]], None]


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
    """A progress bar over epochs with the latest metrics; hooks for :func:`hfft.train.train`."""
    if quiet:
        yield None, None
        return
    progress = _progress("[bold]epoch {task.fields[epoch]}/{task.total}", console)
    task = progress.add_task("train", total=epochs, epoch=1, info="")

    def on_step(epoch: int, step: int, steps: int) -> None:
        progress.update(task, completed=epoch - 1 + step / steps, epoch=epoch)

    def on_epoch(record: dict[str, Any]) -> None:
        info = f"train loss {record['train_batch_loss']:.4f}"
        if "valid_accuracy" in record:
            info += f", valid acc {record['valid_accuracy']:.2%}"
        progress.update(task, completed=record["epoch"], info=info)

    with progress:
        yield on_step, on_epoch


def print_train_summary(console: Console, result: TrainResult) -> None:
    """Where the checkpoints are, how long training took, the final metrics."""
    table = Table(title="training finished", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("training time", f"{result.train_seconds:.1f} s (evaluation not counted)")
    for key, value in result.final_metrics.items():
        shown = f"{value:.2%}" if key.endswith("accuracy") else f"{value:.4f}"
        table.add_row(key.replace("_", " "), shown)
    table.add_row("checkpoints", f"{len(result.checkpoints)} in {result.manifest.parent}")
    table.add_row("manifest", str(result.manifest))
    console.print(table)


@contextlib.contextmanager
def finetune_progress(
    label: str, quiet: bool = False, console: Console | None = None
) -> Iterator[Callable[[float, dict[str, Any]], None] | None]:
    """A progress bar over the budget fraction with steps and the latest validation accuracy."""
    if quiet:
        yield None
        return
    progress = _progress(
        f"[bold]{label}", console, TextColumn("{task.percentage:>5.1f}% of budget")
    )
    task = progress.add_task("finetune", total=1.0, info="")
    state = {"info": ""}

    def on_progress(fraction: float, entry: dict[str, Any]) -> None:
        line = switch_line(entry)
        if line is not None:
            progress.console.print(line)
        if "valid_accuracy" in entry:
            state["info"] = f"step {entry['step']}, valid acc {entry['valid_accuracy']:.2%}"
        progress.update(task, completed=min(fraction, 1.0), info=state["info"])

    with progress:
        yield on_progress


def switch_line(record: dict[str, Any]) -> str | None:
    """The line ``auto`` prints when a step record is a switch between SGD and HF."""
    probe, trial = record.get("probe"), record.get("trial")
    if isinstance(probe, dict) and probe.get("decision") == "switch":
        what, reason = "from SGD to HF", probe["reason"]
    elif isinstance(trial, dict) and trial.get("decision") == "back to sgd":
        what, reason = "from HF back to SGD", trial["reason"]
    else:
        return None
    return (
        f"auto: switched {what} at step {record['step']} "
        f"({record['fraction']:.0%} of the budget): {reason}"
    )


def _fmt(key: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.2%}" if key.endswith("accuracy") else f"{value:.4f}"


def print_finetune_summary(console: Console, result: FinetuneResult) -> None:
    """Initial, final and best metrics side by side, and where the files are."""
    table = Table(
        title=f"finetune {result.status}: {result.steps} steps, {result.seconds:.1f} s "
        f"({min(result.fraction, 9.99):.0%} of budget)",
        title_justify="left",
    )
    table.add_column("")
    for name in ("start", "final", "best (valid acc)"):
        table.add_column(name, justify="right")
    for key in (
        "train_eval_loss",
        "train_eval_accuracy",
        "valid_loss",
        "valid_accuracy",
        "test_loss",
        "test_accuracy",
    ):
        table.add_row(
            key.replace("_", " ").replace("train eval", "train"),
            _fmt(key, result.initial.get(key)),
            _fmt(key, result.final.get(key)),
            _fmt(key, result.best.get(key)),
        )
    console.print(table)
    console.print(f"outputs in {result.out}: {', '.join(result.files)}")
    for name, why in result.missing.items():
        console.print(f"no {name}: {why}")


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


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _names(names: list[str], most: int = 2) -> str:
    if not names:
        return "–"
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} +{len(names) - most}"


def ranking_table(entry: dict[str, Any], metric: str) -> Table:
    """One checkpoint's ranking by one metric: mean, quartiles, ties, time to target."""
    accuracy = metric.endswith("accuracy")
    what = "best test accuracy (%)" if accuracy else "best train loss"
    table = Table(
        title=f"{entry['checkpoint']}: ranked by {what} within the budget",
        title_justify="left",
    )
    for col in ("#", "strategy", "mean", "q25–q75", "seeds", "tied with"):
        table.add_column(col, justify="right" if col in ("#", "mean", "seeds") else "left")
    ttt = entry.get("time_to_target") or {}
    fractions = ttt.get("fractions", {}) if accuracy else {}
    if fractions:
        table.add_column("to target", justify="right")
        table.caption = (
            f"tied with: not distinguishable given the seed spread; to target: budget needed "
            f"to reach {ttt['baseline']}'s final {100 * ttt['target']:.2f}% (median over seeds)"
        )
    fmt = _pct if accuracy else (lambda v: f"{v:.4f}")
    for s in entry["rankings"][metric]:
        row = [
            str(s["rank"]),
            s["strategy"],
            fmt(s["mean"]),
            f"{fmt(s['q25'])}–{fmt(s['q75'])}",
            str(len(s["values"])),
            _names(s["tied_with"]),
        ]
        if fractions:
            f = fractions.get(s["strategy"])
            row.append("not reached" if f is None else f"{100 * f:.0f}%")
        table.add_row(*row)
    return table


def print_compare(console: Console, result: CompareResult) -> None:
    """The rankings of every checkpoint, notes, and where the files are."""
    summary = result.summary
    for entry in summary["checkpoints"]:
        for metric in ("test_accuracy", "train_eval_loss"):
            console.print(ranking_table(entry, metric))
        for note in entry.get("notes", []):
            console.print(f"note: {note}")
    console.print(
        f"{result.ran} runs done, {result.reused} reused. compare.json: {result.compare_json}"
    )
    for path in result.plots:
        console.print(f"plot: {path}")


# -- selftest ----------------------------------------------------------------------------

if TYPE_CHECKING:
    from hfft.selftest import Cost as SelftestCost
    from hfft.selftest import Report as SelftestReport

_STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def _discrepancy(value: float | None) -> str:
    import math

    if value is None:
        return "–"
    if value == 0:
        return "0"
    return f"{value:.1e}" if math.isfinite(value) else str(value)


def _seconds(value: float) -> str:
    return f"{1e3 * value:.3g} ms" if value < 1 else f"{value:.3g} s"


def selftest_table(report: SelftestReport) -> Table:
    """One row per check: name, status, measured discrepancy, tolerance and detail."""
    from rich import box
    from rich.text import Text

    s = report.subject
    if s.get("kind") == "checkpoint":
        title = (
            f"selftest of {s['checkpoint']}: {s['model']} on {s['data']}, batch "
            f"{s['batch_size']}, {s['device']}, HF in {s['mode']} mode"
        )
    else:
        title = f"selftest on built-in float64 problems: {', '.join(s.get('devices', []))}"
    table = Table(
        title=Text(title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("check", no_wrap=True)
    table.add_column("status")
    table.add_column("measured", justify="right")
    table.add_column("tol.", justify="right")
    table.add_column("detail", ratio=1)
    for c in report.checks:
        table.add_row(
            Text(c.name),
            Text(c.status, style=_STATUS_STYLE[c.status]),
            _discrepancy(c.measured),
            _discrepancy(c.tolerance),
            Text(c.detail),
        )
    return table


def cost_lines(cost: SelftestCost) -> list[str]:
    """The cost line: measured times and memory, step estimates, steps within the budget."""
    memory = (
        f"{cost.peak_memory_bytes / 2**20:,.0f} MiB"
        if cost.peak_memory_bytes is not None
        else "not measured on the CPU"
    )
    lines = [
        f"cost at batch {cost.batch_size}: forward {_seconds(cost.forward_s)}, gradient "
        f"{_seconds(cost.gradient_s)}, HF setup {_seconds(cost.setup_s)}, GGN product "
        f"{_seconds(cost.product_s)}; peak memory {memory}",
        f"HF step ≈ setup + {cost.cg_iterations} CG products + 5 forward passes = "
        f"{_seconds(cost.hf_step_s)}; SGD step ≈ one gradient = {_seconds(cost.sgd_step_s)}",
    ]
    if cost.budget_s is None:
        lines.append("budget unknown: pass --budget 600s, or --train-time for --budget 10%")
    else:
        lines.append(
            f"in a budget of {cost.budget_s:.4g} s: about {cost.hf_steps_in_budget:,} HF steps "
            f"or {cost.sgd_steps_in_budget:,} SGD steps"
        )
    return lines


def print_selftest(console: Console, report: SelftestReport) -> None:
    """The table, the cost line and the verdict."""
    console.print(selftest_table(report))
    if report.cost is not None:
        for line in cost_lines(report.cost):
            console.print(line, highlight=False)
    counts = report.counts()
    verdict = "passed" if report.passed else "FAILED"
    console.print(
        f"selftest {verdict}: {counts['pass']} passed, {counts['warn']} warnings, "
        f"{counts['fail']} failed",
        style=_STATUS_STYLE["pass" if report.passed else "fail"],
        highlight=False,
    )


@contextlib.contextmanager
def selftest_status(quiet: bool = False, console: Console | None = None) -> Iterator[None]:
    """A transient spinner on stderr while the checks run."""
    if quiet:
        yield
        return
    with (console or Console(stderr=True)).status("hfft selftest: running checks"):
        yield
