"""Terminal rendering: the line auto prints when it switches."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from hfft.cli.render.progress import finetune_progress
from hfft.cli.render.summaries import switch_line

SWITCH = {
    "step": 17,
    "fraction": 0.125,
    "phase": "probe",
    "probe": {"decision": "switch", "reason": "HF lowered the B̄ loss 3× as fast as SGD"},
}
BACK = {"decision": "back to sgd", "reason": "SGD lowered the B̄ loss 2× as fast as HF per second"}


def test_switch_line() -> None:
    assert switch_line(SWITCH) == (
        "auto: switched from SGD to HF at step 17 (12% of the budget): "
        "HF lowered the B̄ loss 3× as fast as SGD"
    )
    back = {"step": 40, "fraction": 0.5, "phase": "sgd", "trial": BACK}
    assert switch_line(back) == (
        "auto: switched from HF back to SGD at step 40 (50% of the budget): "
        "SGD lowered the B̄ loss 2× as fast as HF per second"
    )


@pytest.mark.parametrize(
    "record",
    [
        {**SWITCH, "probe": {"decision": "keep", "reason": "slower"}},
        {**SWITCH, "probe": {"decision": "roll back", "reason": "no gain"}},
        {"step": 40, "fraction": 0.5, "phase": "hf", "trial": {**BACK, "decision": "back to hf"}},
        {"step": 3, "fraction": 0.1, "lr": 0.05, "loss": 0.3},
        {"fraction": 0.2, "step": 4, "valid_accuracy": 0.9},
    ],
    ids=["keep", "roll-back", "trial-back-to-hf", "sgd-step", "evaluation"],
)
def test_no_switch_line_for_other_records(record: dict) -> None:
    assert switch_line(record) is None


def test_progress_prints_the_switch_once_and_nothing_when_quiet() -> None:
    out = StringIO()
    console = Console(file=out, width=200, color_system=None)
    with finetune_progress("auto", console=console) as on_progress:
        assert on_progress is not None
        on_progress(0.1, {"step": 3, "fraction": 0.1, "lr": 0.05, "loss": 0.3})
        on_progress(0.125, SWITCH)
    assert out.getvalue().count("auto: switched from SGD to HF at step 17") == 1
    with finetune_progress("auto", quiet=True) as quiet:
        assert quiet is None


def test_ranking_table_shows_the_start_and_says_when_seeds_are_too_few() -> None:
    from hfft.cli.render.summaries import ranking_table

    def row(strategy: str, mean: float, rank: int, seeds: int) -> dict:
        return {"strategy": strategy, "rank": rank, "mean": mean, "q25": mean, "q75": mean,
                "values": [mean] * seeds, "tied_with": []}  # fmt: skip

    ranked = [row("hf", 0.95, 1, 3), row("sgd", 0.91, 2, 3)]
    entry = {"checkpoint": "ckpt-10", "start": {"test_accuracy": 0.9},
             "rankings": {"test_accuracy": ranked}}  # fmt: skip
    console = Console(record=True, width=200)
    console.print(ranking_table(entry, "test_accuracy"))
    text = console.export_text()
    assert "start (checkpoint)" in text and "90.00" in text
    assert "– (untested)" in text and "fewer than 5 seeds" in text
    entry["rankings"]["test_accuracy"] = [row("hf", 0.95, 1, 5), row("sgd", 0.91, 2, 5)]
    console = Console(record=True, width=200)
    console.print(ranking_table(entry, "test_accuracy"))
    assert "untested" not in console.export_text()


# --- time to target (issue #28 §3) --------------------------------------------------------

TTT = {
    "metric": "test_accuracy",
    "baseline": "sgd-cosine",
    "target": 0.981,
    "fractions": {"sgd-div10": 0.1, "hf:m=2048": 0.27, "hf:m=256": None, "sgd": 0.4},
    "missed": {"sgd-div10": 0, "hf:m=2048": 1, "hf:m=256": 5, "sgd": 2},
    "seeds": {"sgd-div10": 5, "hf:m=2048": 5, "hf:m=256": 5, "sgd": 5},
    "ratios": {"sgd-div10": 1.0, "hf:m=2048": 2.7, "hf:m=256": None, "sgd": 4.0},
    "fastest_first_order": "sgd-div10",
}


def _text(renderable: object) -> str:
    out = StringIO()
    Console(file=out, width=80, color_system=None).print(renderable)
    return out.getvalue()


def _rows(text: str) -> list[list[str]]:
    """The cells of a table's header and body lines (a folded cell spans two lines)."""
    return [
        [cell.strip() for cell in line.replace("┃", "│").rstrip()[1:-1].split("│")]
        for line in text.splitlines()
        if line[:1] in ("│", "┃")
    ]


@pytest.mark.parametrize(
    ("strategy", "cell"),
    [
        ("sgd-div10", "10% (1.0×)"),
        ("hf:m=2048", "27% (2.7×), 1 missed"),
        ("hf:m=256", "not reached (5/5)"),
        ("sgd", "40% (4.0×), 2 missed"),
    ],
)
def test_target_cell(strategy: str, cell: str) -> None:
    from hfft.cli.render.summaries import target_cell

    assert target_cell(TTT, strategy) == cell


def test_target_cell_of_an_older_compare_json_without_counts() -> None:
    from hfft.cli.render.summaries import target_cell

    old = {k: TTT[k] for k in ("metric", "baseline", "target", "fractions")}
    assert [target_cell(old, s) for s in ("hf:m=2048", "hf:m=256")] == ["27%", "not reached"]


def test_the_target_table_of_an_older_compare_json_claims_no_missing_reference() -> None:
    from hfft.cli.render.summaries import target_table

    old = {k: TTT[k] for k in ("metric", "baseline", "target", "fractions")}
    text = _text(target_table({"checkpoint": "ckpt-10", "time_to_target": old}))
    said = " ".join(text.split())
    assert "no ratios: its compare.json was written before hfft kept them" in said
    assert ["hf:m=2048", "27%", "–", "–"] in _rows(text)


def test_the_target_table_is_sorted_soonest_first_with_ratio_and_missed_seeds() -> None:
    from hfft.cli.render.summaries import target_table

    text = _text(target_table({"checkpoint": "ckpt-10", "time_to_target": TTT}))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.startswith("ckpt-10: time to reach sgd-cosine's final test accuracy 98.10%")
    header, *rows = _rows(text)
    assert header == ["strategy", "to target", "× sgd-div10", "seeds missed"]
    assert rows == [
        ["sgd-div10", "10%", "1.0×", "0/5"],
        ["hf:m=2048", "27%", "2.7×", "1/5"],
        ["sgd", "40%", "4.0×", "2/5"],
        ["hf:m=256", "not reached", "–", "5/5"],
    ]
    said = " ".join(text.split())
    assert "× sgd-div10: that budget over sgd-div10's, the fastest first-order strategy" in said


def test_the_target_table_says_the_users_target_and_when_no_ratio_exists() -> None:
    from hfft.cli.render.summaries import target_table

    ttt = {**TTT, "baseline": "user", "fastest_first_order": None}
    ttt["ratios"] = dict.fromkeys(TTT["fractions"])
    text = " ".join(_text(target_table({"checkpoint": "c", "time_to_target": ttt})).split())
    assert text.startswith("c: time to reach test accuracy 98.10% (--target)")
    assert "× fastest first-order" in text
    assert "no first-order strategy reached it in half of its seeds: no ratio" in text
    assert target_table({"checkpoint": "c", "time_to_target": None}) is None


def test_the_ranking_tables_target_column_and_caption_at_80_columns() -> None:
    from hfft.cli.render.summaries import ranking_table

    ranked = [
        {"strategy": s, "rank": i, "mean": 0.98, "q25": 0.97, "q75": 0.99,
         "values": [0.98] * 5, "tied_with": []}
        for i, s in enumerate(TTT["fractions"], start=1)
    ]  # fmt: skip
    entry = {"checkpoint": "ckpt-10", "rankings": {"test_accuracy": ranked}, "time_to_target": TTT}
    text = _text(ranking_table(entry, "test_accuracy"))
    assert max(len(line) for line in text.splitlines()) <= 80
    said = " ".join(text.split())
    assert (
        "to target: budget needed to reach sgd-cosine's final test accuracy 98.10% (median over "
        "seeds); in brackets over sgd-div10's, the fastest first-order strategy (below 1: "
        "sooner); (k/n): seeds that never reached it" in said
    )
    header, *rows = _rows(text)
    assert header[-1] == "to target"
    cells = {row[1]: row[6] for row in rows if row[1]}
    assert cells["sgd-div10"] == "10% (1.0×)"
    assert cells["hf:m=256"] == "not reached (5/5)"


def test_compare_prints_the_time_to_target_before_the_rankings() -> None:
    from pathlib import Path

    from hfft.analysis.compare import CompareResult
    from hfft.cli.render.summaries import print_compare

    ranked = [{"strategy": "sgd", "rank": 1, "mean": 0.98, "q25": 0.97, "q75": 0.99,
               "values": [0.98] * 5, "tied_with": []}]  # fmt: skip
    entries = [
        {"checkpoint": "ckpt-05", "rankings": {"test_accuracy": ranked}, "time_to_target": None,
         "notes": ["no time to target: sgd's final test accuracy …"]},
        {"checkpoint": "ckpt-10", "rankings": {"test_accuracy": ranked}, "time_to_target": TTT,
         "notes": []},
    ]  # fmt: skip
    summary: Any = {"metrics": ["test_accuracy"], "checkpoints": entries}
    out = StringIO()
    result = CompareResult(summary, Path("c/compare.json"), [], reused=0, ran=5)
    print_compare(Console(file=out, width=80, color_system=None), result)
    text = out.getvalue()
    assert text.index("ckpt-05: no time to target") < text.index("ckpt-05: ranked by")
    assert text.index("ckpt-10: time to reach") < text.index("ckpt-10: ranked by")
