"""Terminal rendering (Rich) of ``hfft bench``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from hfft.diagnostics.bench import BenchResult
    from hfft.diagnostics.loop_bench import LoopBenchResult

__all__ = ["bench_status", "bench_table", "print_bench", "print_loop_bench", "step_table"]


@contextlib.contextmanager
def bench_status(
    quiet: bool = False, console: Console | None = None
) -> Iterator[Callable[[str], None] | None]:
    """A transient spinner naming the stage the benchmark is in; ``None`` when quiet."""
    if quiet:
        yield None
        return
    with (console or Console(stderr=True)).status("starting") as status:
        yield lambda text: status.update(text)


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.1f}"


def bench_table(result: BenchResult) -> Table:
    """Per operation: milliseconds, ratio to one gradient, FLOPs ratio, peak memory."""
    from hfft.diagnostics.bench import LABELS

    table = Table(
        title=f"{result.model}, batch {result.batch_size}, {result.device} "
        f"({result.num_params:,} parameters, median of {result.rounds})",
        title_justify="left",
    )
    table.add_column("operation")
    table.add_column("ms", justify="right")
    table.add_column("× gradient", justify="right")
    table.add_column("FLOPs × gradient", justify="right")
    table.add_column("peak MB", justify="right")
    for key, label in LABELS.items():
        if key not in result.seconds:
            continue
        flops = result.flops.get(key)
        table.add_row(
            label,
            f"{1e3 * result.seconds[key]:.1f}",
            f"{result.ratios[key]:.2f}",
            "" if flops is None else f"{flops:.2f}",
            _mb(result.peak_bytes.get(key)),
        )
    return table


def step_table(result: BenchResult) -> Table:
    """The whole HF step per back-end, broken down into its parts."""
    from hfft.diagnostics.step_bench import BREAKDOWN

    step = result.step
    backends = list(step["seconds"])
    table = Table(
        title=f"one HF step, {step['cg_iterations']} CG iterations (seconds)",
        title_justify="left",
    )
    table.add_column("part")
    for b in backends:
        table.add_column(b, justify="right")
    for key, label in BREAKDOWN.items():
        table.add_row(label, *(f"{step['breakdown'][b][key]:.3f}" for b in backends))
    table.add_row("[bold]total", *(f"[bold]{step['seconds'][b]:.3f}" for b in backends))
    if step.get("peak_bytes"):
        table.add_row("peak MB", *(_mb(step["peak_bytes"].get(b)) for b in backends))
    return table


def print_bench(console: Console, result: BenchResult) -> None:
    """Print the operation table, the step table, the targets and notes."""
    console.print(bench_table(result))
    fallback = result.ratios.get("reverse-over-reverse / func product")
    if fallback is not None:
        console.print(
            f"the reverse-over-reverse fallback (for kernels without forward mode) costs "
            f"{fallback:.2f}× the func product"
        )
    if result.step:
        console.print(step_table(result))
        for b, rel in result.step["relative_difference"].items():
            console.print(
                f"parameters after the step, {b} vs {next(iter(result.step['seconds']))}: "
                f"differ by {rel:.1e} of the step's length "
                f"(max |Δθ| {result.step['max_abs_difference'][b]:.1e})"
            )
    if result.targets:
        table = Table(title="performance targets (docs/benchmarks.md)", title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("target", justify="right")
        table.add_column("met")
        for name, (value, bound, met) in result.targets.items():
            table.add_row(name, f"{value:.3f}", bound, "yes" if met else "[red]no")
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print()


def print_loop_bench(console: Console, result: LoopBenchResult) -> None:
    """One line per loop: seconds per epoch and the throughput ratio."""
    console.print(
        f"{result.model} on {result.data}, batch {result.batch_size}, {result.device} "
        f"(median of {result.rounds} epochs):\n"
        f"  hfft SGD loop   {1e3 * result.hfft_seconds:8.1f} ms/epoch\n"
        f"  plain PyTorch   {1e3 * result.plain_seconds:8.1f} ms/epoch\n"
        f"  hfft throughput = {result.throughput_ratio:.3f} × plain loop"
    )
