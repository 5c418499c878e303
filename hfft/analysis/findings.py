"""What a study's runs show, in a few sentences: the paragraph that ends its report.

Every sentence is read off the comparison's summary (``compare.json``): where
HF ranks among Figure 1's strategies early and late, who leads each checkpoint
and who cannot be told apart from it, where HF lands among every strategy from
the last checkpoint, how soon HF reaches the target from there beside the
fastest first-order strategy, and what the comparison's notes say about HF. It states
what the numbers show, whichever way they go; nothing is measured here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hfft.analysis.target import USER, metric_label, ratio_text, shown_value, soonest_first
from hfft.experiment.strategies.registry import kind_of

__all__ = ["findings_markdown"]

_MIN_WILCOXON_SEEDS = 5
"""Seeds below which only overlapping quartiles mark ties (see the tie rule)."""


def _is_hf(strategy: str) -> bool:
    return kind_of(strategy) == "hf"


def _early_late(checkpoints: Sequence[str]) -> tuple[list[str], list[str]]:
    """The first and last third of the checkpoints (the first and the last of two or three)."""
    parts = np.array_split(np.arange(len(checkpoints)), min(3, len(checkpoints)))
    return [checkpoints[i] for i in parts[0]], [checkpoints[i] for i in parts[-1]]


def _phase_ranks(
    per_checkpoint: Mapping[str, Mapping[str, Sequence[float]]],
    group: Sequence[str],
    figure1: Sequence[str],
) -> dict[str, int]:
    """Each strategy's rank (1 = best) by its mean relative score over ``group``."""
    scores = {}
    for s in figure1:
        values = [float(np.mean(v)) for c in group if (v := per_checkpoint.get(c, {}).get(s))]
        if values:
            scores[s] = float(np.mean(values))
    ordered = sorted(scores, key=lambda s: -scores[s])
    return {s: i for i, s in enumerate(ordered, start=1)}


def _course_sentence(
    metric: str,
    per_checkpoint: Mapping[str, Mapping[str, Sequence[float]]],
    figure1: Sequence[str],
) -> str | None:
    """Where HF and the rest rank early and late on one metric, and what that shows."""
    if len(per_checkpoint) < 2:  # one checkpoint: no course to describe
        return None
    early, late = _early_late(list(per_checkpoint))
    if early == late:
        return None
    first, last = (
        _phase_ranks(per_checkpoint, early, figure1),
        _phase_ranks(per_checkpoint, late, figure1),
    )
    shown = [s for s in figure1 if s in first and s in last]
    hf = [s for s in shown if _is_hf(s)]
    if not hf:
        return None
    others = [s for s in shown if not _is_hf(s)]
    moves = ", ".join(f"{s} #{first[s]} → #{last[s]}" for s in shown)
    below_early = bool(others) and all(first[h] > first[o] for h in hf for o in others)
    best_late = min(hf, key=lambda h: last[h])
    if below_early and last[best_late] == 1:
        verdict = (
            f"every HF size ranks below {' and '.join(others)} early and {best_late} "
            "first late: the paper's late-phase pattern"
        )
    elif last[best_late] == 1:
        verdict = f"{best_late} ranks first late, but HF is not below the rest early"
    elif min(last[h] for h in hf) < min(first[h] for h in hf):
        verdict = f"HF rises but does not lead late (its best: {best_late}, #{last[best_late]})"
    else:
        verdict = f"HF does not rise from early to late (its best late: #{last[best_late]})"
    return f"On {metric_label(metric)} (relative score, early → late: {moves}), {verdict}."


def _ties_sentence(summary: Mapping[str, Any], metric: str) -> str:
    """Per checkpoint the leader on ``metric`` and what is tied with it."""
    parts = []
    for entry in summary.get("checkpoints", []):
        ranking = entry.get("rankings", {}).get(metric) or []
        if not ranking:
            continue
        top = ranking[0]
        tied = ", ".join(top["tied_with"]) or "nothing"
        parts.append(f"{entry['checkpoint']} {top['strategy']} (tied with {tied})")
    seeds = summary.get("config", {}).get("seeds")
    few = (
        f" With {seeds} seeds only overlapping quartiles separate strategies (the Wilcoxon "
        f"test needs {_MIN_WILCOXON_SEEDS}), so a tie says little either way."
        if isinstance(seeds, int) and seeds < _MIN_WILCOXON_SEEDS
        else ""
    )
    return f"Leaders on {metric_label(metric)}: {'; '.join(parts)}.{few}"


def _last_sentence(summary: Mapping[str, Any], metric: str) -> str | None:
    """Where HF's best size lands among every strategy from the last checkpoint."""
    entries = summary.get("checkpoints", [])
    ranking = (entries[-1].get("rankings", {}).get(metric) or []) if entries else []
    hf = [r for r in ranking if _is_hf(r["strategy"])]
    if not ranking or not hf:
        return None
    top, best = ranking[0], hf[0]
    if best is top:
        where = f"{best['strategy']} leads all {len(ranking)} strategies"
    else:
        tied = "tied with" if top["strategy"] in best["tied_with"] else "below"
        where = (
            f"{top['strategy']} leads the {len(ranking)} strategies and HF's best, "
            f"{best['strategy']}, is #{best['rank']}, {tied} it"
        )
    last = entries[-1]["checkpoint"]
    return f"From the last checkpoint ({last}, {metric_label(metric)}), {where}."


def _and(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _target_sentence(summary: Mapping[str, Any]) -> str | None:
    """From the last checkpoint: who reaches the target first, HF's best ratio to the fastest
    first-order strategy, and the HF strategies some of whose seeds never reach it."""
    entries = summary.get("checkpoints", [])
    ttt = entries[-1].get("time_to_target") if entries else None
    if not ttt or not ttt.get("fractions"):
        return None
    fractions, ratios = ttt["fractions"], ttt.get("ratios") or {}
    given = (
        "given by --target" if ttt.get("baseline") == USER else f"{ttt['baseline']}'s final value"
    )
    head = (
        f"Time to target from the last checkpoint ({entries[-1]['checkpoint']}: "
        f"{metric_label(ttt['metric'])} {shown_value(ttt['metric'], ttt['target'])}, {given}): "
    )
    reached = [s for s in soonest_first(ttt) if fractions[s] is not None]
    if not reached:
        return head + "no strategy reaches it in half of its seeds."
    firsts = [s for s in reached if fractions[s] == fractions[reached[0]]]
    verb = "reaches" if len(firsts) == 1 else "reach"
    clauses = [
        f"{_and(firsts)} {verb} it first, at {100 * fractions[reached[0]]:.0f} % of the budget"
    ]
    fastest = ttt.get("fastest_first_order")
    hf = [s for s in fractions if _is_hf(s)]
    rated = [s for s in hf if ratios.get(s) is not None]
    if "fastest_first_order" not in ttt:  # a compare.json written before ratios were kept
        pass
    elif fastest is None:
        clauses.append("no first-order strategy reaches it in half of its seeds (no ratio)")
    elif rated:
        best = min(rated, key=lambda s: ratios[s])
        clauses.append(
            f"HF's best, {best}, needs {ratio_text(ratios[best])} the budget of {fastest}, the "
            "fastest first-order strategy"
        )
    elif hf:
        clauses.append("no HF strategy reaches it in half of its seeds")
    missed, seeds = ttt.get("missed") or {}, ttt.get("seeds") or {}
    clauses += [
        f"{missed[s]} of {seeds[s]} seeds of {s} never reach it"
        for s in hf
        if missed.get(s) and s in seeds
    ]
    return head + "; ".join(clauses) + "."


def _main_clause(note: str) -> str:
    """A note without its explanation: up to its first bracket, ``;``, ``, since`` or ``.``."""
    return re.split(r" \(|; |, since |\. |: a |\.$", note, maxsplit=1)[0]


def _notes_sentence(summary: Mapping[str, Any]) -> str:
    """What the comparison's notes say about HF, one clause per kind of note and strategy
    with the checkpoints where it recurs (the numbers are the first checkpoint's)."""
    kinds: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for entry in summary.get("checkpoints", []):
        for note in entry.get("notes", []):
            strategy = note.split(" ", 1)[0].rstrip(":")
            if not _is_hf(strategy):
                continue
            clause = _main_clause(note)
            kind = re.sub(r"\d+(?:\.\d+)?", "#", clause)
            _, where = kinds.setdefault((strategy, kind), (clause, []))
            where.append(entry["checkpoint"])
    if not kinds:
        return "The comparison noted nothing about HF's runs."
    clauses = []
    for clause, where in kinds.values():
        also = f" (and alike at {', '.join(where[1:])})" if len(where) > 1 else ""
        clauses.append(f"{clause} at {where[0]}{also}")
    return "HF's notes (the report's Notes give them whole): " + "; ".join(clauses) + "."


def findings_markdown(summary: Mapping[str, Any], figure1: Sequence[str]) -> str:
    """``## What the runs show``: one short paragraph read off a study's comparison.

    Args:
        summary: The comparison's summary (``compare.json``, as
            :func:`hfft.analysis.ranking.compare_summary` gives it).
        figure1: Figure 1's strategies (those run from every checkpoint).

    Returns:
        Markdown: a heading and one paragraph, ending in a newline.
    """
    metrics = list(summary.get("metrics", []))
    relative = summary.get("relative_performance", {})
    sentences = [
        s for m in metrics if (s := _course_sentence(m, relative.get(m, {}), figure1)) is not None
    ]
    if metrics:
        sentences.append(_ties_sentence(summary, metrics[0]))
        sentences += [s for m in metrics if (s := _last_sentence(summary, m)) is not None]
    if (target := _target_sentence(summary)) is not None:
        sentences.append(target)
    sentences.append(_notes_sentence(summary))
    return "## What the runs show\n\n" + " ".join(sentences) + "\n"
