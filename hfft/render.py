"""All terminal rendering (Rich) in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from hfft.bench import BenchResult

BENCH_ROWS = [
    ("forward", "forward"),
    ("gradient", "gradient (forward + backward)"),
    ("ggn_setup[func]", "HF step setup, func (forward, gradient, linearisation)"),
    ("ggn_product[func]", "GGN-vector product, func"),
    ("ggn_setup[backpack]", "HF step setup, BackPACK"),
    ("ggn_product[backpack]", "GGN-vector product, BackPACK R-op"),
]


def bench_table(result: BenchResult) -> Table:
    """The benchmark of one model as a table: seconds and ratio to one gradient."""
    table = Table(
        title=f"{result.model}, batch {result.batch_size}, {result.device} "
        f"({result.num_params:,} parameters, median of {result.rounds})",
        title_justify="left",
    )
    table.add_column("operation")
    table.add_column("ms", justify="right")
    table.add_column("× gradient", justify="right")
    for key, label in BENCH_ROWS:
        if key in result.seconds:
            table.add_row(label, f"{1e3 * result.seconds[key]:.1f}", f"{result.ratios[key]:.2f}")
    return table


def print_bench(console: Console, result: BenchResult) -> None:
    """Print one benchmark table with the headline ratio and notes."""
    console.print(bench_table(result))
    speedup = result.ratios.get("backpack_over_func_product")
    if speedup is not None:
        console.print(f"func product is {speedup:.2f}× faster than BackPACK's R-op product")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print()
