"""A study's ``report.md``: its tables, computed from the comparison's summary.

Every number comes from ``compare.json`` (the time to target, rankings,
relative performance and step times of
:func:`hfft.analysis.ranking.compare_summary`) and the training's
``run.json``; nothing is measured here. The time to target comes first: how
much of the budget each strategy needs is what a reader asks first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hfft.analysis.findings import findings_markdown
from hfft.analysis.target import (
    metric_label,
    shown_value,
    target_header,
    target_rows,
    target_words,
)

__all__ = ["phases", "report_markdown"]

PHASES = ("early", "middle", "late")


def phases(checkpoints: Sequence[str]) -> dict[str, list[str]]:
    """The checkpoints in three phases of (nearly) equal length, earliest first (with
    two checkpoints: early and late; with one: late)."""
    names = {1: ("late",), 2: ("early", "late")}.get(len(checkpoints), PHASES)
    parts = np.array_split(np.arange(len(checkpoints)), len(names))
    return {name: [checkpoints[i] for i in part] for name, part in zip(names, parts, strict=True)}


def _value(metric: str, value: float | None) -> str:
    return "–" if value is None else shown_value(metric, value)


def _count(n: Any, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _seeds(config: Mapping[str, Any]) -> str:
    """``5 seeds``, or ``5 seeds (5–9)`` when they do not start at 0 (``--first-seed``)."""
    n, first = config.get("seeds"), config.get("first_seed") or 0
    if not first or not isinstance(n, int):
        return _count(n, "seed")
    return f"{_count(n, 'seed')} ({first}–{first + n - 1})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _relative_tables(summary: Mapping[str, Any], figure1: Sequence[str]) -> list[str]:
    """Figure 1 as numbers: each strategy's mean relative score per checkpoint and phase."""
    out: list[str] = []
    for metric, per_checkpoint in summary.get("relative_performance", {}).items():
        names = list(per_checkpoint)
        means = {
            (c, s): float(np.mean(v)) for c in names for s, v in per_checkpoint[c].items() if v
        }
        header = ["strategy", *(f"{i + 1}" for i in range(len(names)))]
        rows = [
            [s, *(f"{means[c, s]:.2f}" if (c, s) in means else "–" for c in names)] for s in figure1
        ]
        out += [
            f"Mean relative **best {metric_label(metric)}** per checkpoint (columns: checkpoints "
            f"1 to {len(names)}; 0 = worst run, 1 = best run):",
            "",
        ]
        out += [*_table(header, rows), ""]
        out += _phase_table(metric, phases(names), means, figure1)
    return out


def _phase_table(
    metric: str,
    groups: dict[str, list[str]],
    means: dict[tuple[str, str], float],
    figure1: Sequence[str],
) -> list[str]:
    """Per phase, each strategy's mean relative score and its rank among the strategies."""
    scores = {
        (p, s): float(np.mean(v))
        for p, cs in groups.items()
        for s in figure1
        if (v := [means[c, s] for c in cs if (c, s) in means])
    }
    ranks: dict[tuple[str, str], int] = {}
    for p in groups:
        ordered = sorted((s for s in figure1 if (p, s) in scores), key=lambda s: -scores[p, s])
        ranks |= {(p, s): i for i, s in enumerate(ordered, start=1)}
    header = ["strategy", *(f"{p} ({len(cs)} ckpts)" for p, cs in groups.items())]
    rows = [
        [s, *(f"{scores[p, s]:.2f} (#{ranks[p, s]})" if (p, s) in scores else "–" for p in groups)]
        for s in figure1
    ]
    return [
        f"By phase ({metric_label(metric)}; rank among the strategies):",
        "",
        *_table(header, rows),
        "",
    ]


def _winners_table(summary: Mapping[str, Any]) -> list[str]:
    """Per checkpoint and ranked metric: the start, the winner and who is tied with it."""
    metrics = summary.get("metrics", [])
    header = ["checkpoint"]
    for m in metrics:
        header += [f"start {metric_label(m)}", f"best {metric_label(m)}", "tied with it"]
    rows = []
    for entry in summary.get("checkpoints", []):
        row = [entry["checkpoint"]]
        for m in metrics:
            ranking = entry["rankings"].get(m) or []
            top = ranking[0] if ranking else None
            row.append(_value(m, entry.get("start", {}).get(m)))
            row.append(f"{top['strategy']} {_value(m, top['mean'])}" if top else "–")
            row.append(", ".join(top["tied_with"]) or "none" if top else "–")
        rows.append(row)
    return _table(header, rows)


def _target_table(entry: Mapping[str, Any]) -> list[str]:
    """One checkpoint's time to target, soonest first: the budget, the ratio to the fastest
    first-order strategy and the seeds that missed it (or a line saying there is none)."""
    ttt = entry.get("time_to_target")
    if not ttt or not ttt.get("fractions"):
        return [f"From {entry['checkpoint']}: no time to target (the Notes say why).", ""]
    rows = [row.cells() for row in target_rows(ttt)]
    words = target_words(ttt)
    return [f"From {entry['checkpoint']}, to {words}:", "", *_table(target_header(ttt), rows), ""]


def _target_section(summary: Mapping[str, Any]) -> list[str]:
    """``## Time to target``: a table per checkpoint and how to read it."""
    lines = [
        "## Time to target",
        "",
        "The budget fraction by which half of a strategy's seeds reached the target (the "
        "first evaluation after the first step at or beyond it), its ratio to that of the "
        "fastest first-order strategy (below 1: sooner; – where either did not reach it) and "
        "the seeds that never reached it.",
        "",
    ]
    for entry in summary.get("checkpoints", []):
        lines += _target_table(entry)
    return lines


def _ranking(entry: Mapping[str, Any], metric: str) -> list[str]:
    rows = [["–", "start (checkpoint)", _value(metric, entry.get("start", {}).get(metric)), "", ""]]
    for st in entry["rankings"].get(metric) or []:
        spread = f"{_value(metric, st['q25'])} – {_value(metric, st['q75'])}"
        tied = ", ".join(st["tied_with"]) or "none"
        rows.append([str(st["rank"]), st["strategy"], _value(metric, st["mean"]), spread, tied])
    header = ["rank", "strategy", f"best {metric_label(metric)} (mean)", "quartiles", "tied with"]
    return [*_table(header, rows), ""]


def _timing_table(summary: Mapping[str, Any]) -> list[str]:
    """Per strategy over all checkpoints: seconds per step and per CG iteration, with the
    largest spread between seeds at any checkpoint."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for entry in summary.get("checkpoints", []):
        for strategy, t in entry.get("step_seconds", {}).items():
            p = pooled.setdefault(strategy, {})
            for key, value in t.items():
                p.setdefault(key, []).append(value)
    rows = []
    for strategy, p in pooled.items():
        cg = (
            f"{1000 * float(np.mean(p['cg_mean'])):.2f} ms (×{max(p['cg_spread']):.2f})"
            if "cg_mean" in p
            else "–"
        )
        step = f"{float(np.mean(p['mean'])):.4g} s (×{max(p['spread']):.2f})"
        rows.append([strategy, step, cg])
    header = ["strategy", "seconds per step (largest seed spread)", "per CG iteration"]
    return [
        "Means over the checkpoints of each checkpoint's mean over seeds; in brackets the "
        "largest ratio of slowest to fastest seed at any checkpoint.",
        "",
        *_table(header, rows),
    ]


def _train_time(manifest: Mapping[str, Any]) -> str:
    """The training's time as budgets use it: the robust one beside the clock's."""
    raw, robust = manifest.get("train_seconds") or 0.0, manifest.get("robust_train_seconds")
    if not isinstance(robust, (int, float)):
        return f"{raw:.1f} s"
    return (
        f"{robust:.1f} s (median epoch × epochs, what the budgets use; its clock said {raw:.1f} s)"
    )


def report_markdown(
    summary: Mapping[str, Any],
    manifest: Mapping[str, Any],
    figure1: Sequence[str],
    figures: Sequence[Path],
    seconds: float,
) -> str:
    """``report.md``: the setup and time spent, each checkpoint's time to target,
    Figure 1's relative scores per checkpoint and per phase, the winners and ties
    per checkpoint, Figure 2's rankings, the step times per strategy and the notes.

    Args:
        summary: The comparison's summary (``compare.json``).
        manifest: The training's ``run.json``.
        figure1: Figure 1's strategies.
        figures: The PNGs beside it (linked by name).
        seconds: Wall-clock seconds of the process that writes it.
    """
    config, train = summary.get("config", {}), manifest.get("config", {})
    entries = summary.get("checkpoints", [])
    last = entries[-1] if entries else None
    runs = summary.get("runs", [])
    lines = [
        f"# Study: {train.get('model')} on {train.get('data')}",
        "",
        f"- Training: {train.get('epochs')} epochs of SGD (lr {train.get('lr')}, momentum "
        f"{train.get('momentum')}, L2 {train.get('weight_decay')}, batch {train.get('batch_size')}"
        f"), {_train_time(manifest)}, {len(entries)} checkpoints.",
        f"- Budget {config.get('budget')} per run, {_seeds(config)}, "
        f"{_count(len(runs), 'run')} on {config.get('device')}; the process that wrote this took "
        f"{seconds:.0f} s.",
        f"- Figure 1 (every checkpoint): {', '.join(figure1)}. Figure 2 (the last): all "
        f"{len(summary.get('strategies', []))} strategies.",
        "",
        *_target_section(summary),
        "## Figure 1: relative performance from every checkpoint",
        "",
        *(f"![{f.stem}]({f.name})" for f in figures if f.name.startswith("figure1")),
        "",
        *_relative_tables(summary, figure1),
        "Best values per checkpoint (means over seeds; at the last checkpoint among all of "
        "Figure 2's strategies):",
        "",
        *_winners_table(summary),
        "",
    ]
    if last is not None:
        lines += ["## Figure 2: every strategy from the last checkpoint", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures if f.name == "figure2.png"] + [""]
        for metric in summary.get("metrics", []):
            lines += [
                f"From {last['checkpoint']}, best {metric_label(metric)}:",
                "",
                *_ranking(last, metric),
            ]
    lines += ["## Step times", "", *_timing_table(summary), ""]
    notes = [f"{e['checkpoint']}: {n}" for e in entries for n in e.get("notes", [])]
    lines += ["## Notes", "", *(f"- {n}" for n in notes or ["none"]), ""]
    lines += [f"Tie rule: {summary.get('tie_rule', '')}", ""]
    lines += [findings_markdown(summary, figure1), ""]
    return "\n".join(lines)
