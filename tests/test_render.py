"""Terminal rendering: the line auto prints when it switches."""

from __future__ import annotations

from io import StringIO

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
