"""The summaries that ``train``, ``finetune`` and ``compare`` print when they finish.

A comparison prints, per checkpoint, the time to target first (:func:`target_table`:
what a reader asks first, how much budget each strategy needs), then the rankings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from hfft._text import short_list
from hfft.analysis.target import (
    metric_label,
    ratio_text,
    target_header,
    target_rows,
    target_words,
)

if TYPE_CHECKING:
    from hfft.analysis.compare import CompareResult
    from hfft.experiment.run.finetune import FinetuneResult
    from hfft.experiment.run.train import TrainResult

__all__ = [
    "print_compare",
    "print_finetune_summary",
    "print_target",
    "print_train_summary",
    "ranking_table",
    "switch_line",
    "target_cell",
    "target_table",
]


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


def switch_line(record: Mapping[str, Any]) -> str | None:
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
    metric = (result.log.get("source") or {}).get("task", {}).get("metric", "accuracy")
    for name in ("start", "final", f"best (valid {metric})"):
        table.add_column(name, justify="right")
    for key in _metric_keys(result.initial):
        table.add_row(
            metric_label(key),
            _fmt(key, result.initial.get(key)),
            _fmt(key, result.final.get(key)),
            _fmt(key, result.best.get(key)),
        )
    console.print(table)
    console.print(f"outputs in {result.out}: {', '.join(_outputs(result.files))}")
    folders = [f.rstrip("/") + "/" for f in _outputs(result.files) if f.endswith("/")]
    if folders:
        console.print(f"{' and '.join(folders)}: model folders that from_pretrained loads")
    if "final.ckpt" in result.files:
        console.print("final.ckpt: your .ckpt with the final weights (load_from_checkpoint)")
    for name, why in result.missing.items():
        console.print(f"no {name}: {why}")
    note = (result.log.get("hf_progress") or {}).get("note")
    if note:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _outputs(files: tuple[str, ...]) -> list[str]:
    """The files written, a folder's once (``final/``)."""
    return list(dict.fromkeys(f.split("/")[0] + "/" if "/" in f else f for f in files))


def _metric_keys(entry: Mapping[str, Any]) -> list[str]:
    """The split metrics an evaluation holds (the task's only), split by split."""
    order = ("loss", "accuracy", "rmse", "r2")
    return [
        f"{split}_{m}"
        for split in ("train_eval", "valid", "test")
        for m in order
        if f"{split}_{m}" in entry
    ]


STRATEGY_WIDTH = 24
"""The widest strategy name the ranking table keeps on one line (longer ones fold)."""


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def ranking_table(entry: Mapping[str, Any], metric: str) -> Table:
    """One checkpoint's ranking by one metric: the start, mean, quartiles, ties, time to target."""
    from hfft.analysis.ranking import MIN_PAIRS

    accuracy = metric.endswith("accuracy")
    what = f"best {metric_label(metric)}" + (" (%)" if accuracy else "")
    table = Table(
        title=f"{entry['checkpoint']}: ranked by {what} within the budget",
        title_justify="left",
    )
    # nothing is cut: a cell too narrow folds; names up to STRATEGY_WIDTH characters keep
    # a line of their own (the other columns give way), longer option lists fold
    ranked = entry["rankings"][metric]
    whole = max((len(s["strategy"]) for s in ranked), default=0) <= STRATEGY_WIDTH
    for col in ("#", "strategy", "mean", "q25–q75", "seeds", "tied with"):
        table.add_column(
            col,
            justify="right" if col in ("#", "mean", "seeds") else "left",
            overflow="fold",
            no_wrap=(col == "strategy" and whole) or col == "q25–q75",
        )
    ttt = entry.get("time_to_target") or {}
    fractions = ttt.get("fractions", {}) if ttt.get("metric") == metric else {}
    if fractions:
        table.add_column("to target", justify="right", overflow="fold")
        tied = "tied with: not distinguishable given the seed spread"
        table.caption = f"{tied}; {_target_caption(ttt)}"
    fmt = _pct if accuracy else (lambda v: f"{v:.4f}")
    start = (entry.get("start") or {}).get(metric)
    if start is not None:  # the checkpoint itself: the reference, not a competitor
        blank = [""] * (len(table.columns) - 3)
        table.add_row("", "[dim]start (checkpoint)", f"[dim]{fmt(start)}", *blank)
    few = any(len(s["values"]) < MIN_PAIRS for s in ranked)
    if few:
        note = (
            f"fewer than {MIN_PAIRS} seeds: ties come from overlapping quartiles alone "
            f"(the paired Wilcoxon test needs {MIN_PAIRS}), so '–' is no proof of a difference"
        )
        table.caption = f"{table.caption}; {note}" if table.caption else note
    stalled = entry.get("hf_progress") or {}
    if stalled:
        kinds = sorted(set(stalled.values()))
        note = f"† HF made {' or '.join(kinds)} progress in half of its seeds or more (see notes)"
        table.caption = f"{table.caption}; {note}" if table.caption else note
    for s in ranked:
        untested = few and not s["tied_with"]
        row = [
            str(s["rank"]),
            s["strategy"] + (" †" if s["strategy"] in stalled else ""),
            fmt(s["mean"]),
            f"{fmt(s['q25'])}–{fmt(s['q75'])}",
            str(len(s["values"])),
            "– (untested)" if untested else short_list(s["tied_with"], 2),
        ]
        if fractions:
            row.append(target_cell(ttt, s["strategy"]))
        table.add_row(*row)
    return table


def _target_caption(ttt: Mapping[str, Any]) -> str:
    """The ranking table's words on its "to target" column."""
    fastest = ttt.get("fastest_first_order")
    ratio = (
        f"; in brackets over {fastest}'s, the fastest first-order strategy (below 1: sooner)"
        if fastest
        else ""
    )
    return (
        f"to target: budget needed to reach {target_words(ttt, _fmt)} (median over seeds){ratio}; "
        "(k/n): seeds that never reached it"
    )


def target_cell(ttt: Mapping[str, Any], strategy: str) -> str:
    """One strategy's time to target in one cell: ``27% (2.7×)``, ``27% (2.7×), 1 missed``
    or ``not reached (5/5)`` (seeds that missed it, of all; an older ``compare.json``
    without these counts gives ``27%`` and ``not reached``)."""
    fraction = ttt["fractions"].get(strategy)
    missed = (ttt.get("missed") or {}).get(strategy)
    seeds = (ttt.get("seeds") or {}).get(strategy)
    if fraction is None:
        return "not reached" + (f" ({missed}/{seeds})" if missed is not None and seeds else "")
    ratio = (ttt.get("ratios") or {}).get(strategy)
    text = f"{100 * fraction:.0f}%" + ("" if ratio is None else f" ({ratio_text(ratio)})")
    return text + (f", {missed} missed" if missed else "")


def target_table(entry: Mapping[str, Any]) -> Table | None:
    """One checkpoint's time to target, soonest first: the budget each strategy needed,
    its ratio to the fastest first-order strategy's and the seeds that missed it
    (``None`` where the checkpoint has no time to target)."""
    ttt = entry.get("time_to_target")
    if not ttt or not ttt.get("fractions"):
        return None
    fastest = ttt.get("fastest_first_order")
    title = f"{entry['checkpoint']}: time to reach {target_words(ttt, _fmt)}"
    # as wide as its title, which says what the target is (the console narrows it if need be)
    table = Table(title=title, title_justify="left", min_width=len(title))
    strategy, *numbers = target_header(ttt)
    table.add_column(strategy, overflow="fold")
    for column in numbers:
        table.add_column(column, justify="right")
    for row in target_rows(ttt):
        table.add_row(*row.cells(percent="{:.0f}%", of="{}/{}"))
    if fastest:
        reference = (
            f"× {fastest}: that budget over {fastest}'s, the fastest first-order strategy "
            "(below 1: sooner)"
        )
    elif "fastest_first_order" in ttt:
        reference = "no first-order strategy reached it in half of its seeds: no ratio"
    else:
        reference = "no ratios: its compare.json was written before hfft kept them"
    table.caption = f"to target: the budget by which half of the seeds reached it; {reference}"
    return table


def print_target(console: Console, entry: Mapping[str, Any]) -> None:
    """A checkpoint's time-to-target table, or a line saying that it has none."""
    table = target_table(entry)
    if table is not None:
        console.print(table)
    else:
        console.print(f"{entry['checkpoint']}: no time to target (the notes say why)")


def print_compare(console: Console, result: CompareResult) -> None:
    """Per checkpoint the time to target, the rankings and the notes; where the files are."""
    summary = result.summary
    for entry in summary["checkpoints"]:
        print_target(console, entry)
        for metric in summary["metrics"]:
            console.print(ranking_table(entry, metric))
        for note in entry.get("notes", []):
            console.print(f"note: {note}")
    console.print(
        f"{result.ran} runs done, {result.reused} reused. compare.json: {result.compare_json}"
    )
    for path in result.plots:
        console.print(f"plot: {path}")
