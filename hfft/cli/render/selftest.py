"""The report of ``hfft selftest``: one row per check, the cost line, the verdict."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from hfft.diagnostics.selftest import Cost, Report

__all__ = ["cost_lines", "print_selftest", "selftest_table"]

_STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def _discrepancy(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    return f"{value:.1e}" if math.isfinite(value) else str(value)


def _seconds(value: float) -> str:
    return f"{1e3 * value:.3g} ms" if value < 1 else f"{value:.3g} s"


def selftest_table(report: Report) -> Table:
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


def cost_lines(cost: Cost) -> list[str]:
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


def print_selftest(console: Console, report: Report) -> None:
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
