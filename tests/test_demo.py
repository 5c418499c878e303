"""hfft demo and the findings paragraph that ends a study's report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hfft.analysis.findings import findings_markdown
from hfft.cli import app
from hfft.cli.demo import MNIST1D

runner = CliRunner()

FIGURE1 = ["sgd", "hf:m=1024", "hf:m=2048"]


def _ranking(*order: tuple[str, list[str]]) -> list[dict[str, Any]]:
    return [
        {"strategy": s, "rank": i, "mean": 0.9, "tied_with": tied}
        for i, (s, tied) in enumerate(order, start=1)
    ]


def _summary(late: dict[str, list[float]], notes: list[str], seeds: int = 3) -> dict[str, Any]:
    early = {"sgd": [1.0, 0.9], "hf:m=1024": [0.5, 0.4], "hf:m=2048": [0.0, 0.1]}
    middle = {"sgd": [0.5], "hf:m=1024": [0.5], "hf:m=2048": [0.5]}
    last = _ranking(("sgd-cosine", ["hf:m=2048"]), ("hf:m=2048", ["sgd-cosine"]), ("sgd", []))
    return {
        "config": {"seeds": seeds},
        "metrics": ["test_accuracy"],
        "relative_performance": {
            "test_accuracy": {"ckpt-01": early, "ckpt-02": middle, "ckpt-03": late}
        },
        "checkpoints": [
            {"checkpoint": "ckpt-01", "rankings": {"test_accuracy": _ranking(("sgd", []))},
             "notes": notes},
            {"checkpoint": "ckpt-02", "rankings": {"test_accuracy": _ranking(
                ("hf:m=1024", ["sgd"]), ("sgd", ["hf:m=1024"]))}, "notes": notes},
            {"checkpoint": "ckpt-03", "rankings": {"test_accuracy": last}, "notes": []},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("late", "verdict"),
    [
        (
            {"sgd": [0.0], "hf:m=1024": [0.6], "hf:m=2048": [1.0]},
            "sgd #1 → #3, hf:m=1024 #2 → #2, hf:m=2048 #3 → #1), every HF size ranks below sgd "
            "early and hf:m=2048 first late: the paper's late-phase pattern.",
        ),
        (
            {"sgd": [1.0], "hf:m=1024": [0.0], "hf:m=2048": [0.5]},
            "HF does not rise from early to late (its best late: #2).",
        ),
        (
            {"sgd": [1.0], "hf:m=1024": [0.0], "hf:m=2048": [0.9]},
            "HF does not rise from early to late (its best late: #2).",
        ),
        (
            {"sgd": [0.5], "hf:m=1024": [1.0], "hf:m=2048": [0.0]},
            "every HF size ranks below sgd early and hf:m=1024 first late",
        ),
    ],
    ids=["pattern", "falls", "holds", "small-m-first"],
)
def test_findings_say_where_hf_goes_from_early_to_late(
    late: dict[str, list[float]], verdict: str
) -> None:
    text = findings_markdown(_summary(late, []), FIGURE1)
    assert text.startswith("## What the runs show\n\n") and text.endswith("\n")
    assert "On test accuracy (relative score, early → late: " in text
    assert verdict in text


def test_findings_name_the_leaders_their_ties_and_hfs_place_at_the_end() -> None:
    text = findings_markdown(_summary({"sgd": [0.0], "hf:m=2048": [1.0]}, []), FIGURE1)
    assert (
        "Leaders on test accuracy: ckpt-01 sgd (tied with nothing); ckpt-02 hf:m=1024 (tied "
        "with sgd); ckpt-03 sgd-cosine (tied with hf:m=2048)." in text
    )
    assert "With 3 seeds only overlapping quartiles separate strategies" in text
    assert (
        "From the last checkpoint (ckpt-03, test accuracy), sgd-cosine leads the 3 strategies "
        "and HF's best, hf:m=2048, is #2, tied with it." in text
    )
    assert "The comparison noted nothing about HF's runs." in text
    five = findings_markdown(_summary({"sgd": [0.0]}, [], seeds=5), FIGURE1)
    assert "quartiles" not in five


def test_findings_group_hfs_notes_by_kind_and_leave_the_others_out() -> None:
    notes = [
        "hf:m=2048: HF made no progress in 3 of 3 seeds (0 of 4 steps taken). Try a larger m.",
        "hf:m=1024: its runs ended at 1.19× the budget on average (at most 1.32×), since a step "
        "that starts inside the budget finishes",
        "sgd: seconds per step differ 1.51× between its seeds (more than 1.5×): a slow spell",
    ]
    text = findings_markdown(_summary({"sgd": [0.0], "hf:m=2048": [1.0]}, notes), FIGURE1)
    assert text.rstrip().endswith(
        "HF's notes (the report's Notes give them whole): hf:m=2048: HF made no progress in 3 "
        "of 3 seeds at ckpt-01 (and alike at ckpt-02); hf:m=1024: its runs ended at 1.19× the "
        "budget on average at ckpt-01 (and alike at ckpt-02)."
    )
    assert "sgd: seconds" not in text


def test_the_demo_is_a_study_on_mnist1d_with_three_checkpoints() -> None:
    assert MNIST1D.model == "cnn1d" and MNIST1D.data.startswith("mnist1d:")
    assert MNIST1D.checkpoints == 3
    assert [s for s in MNIST1D.strategies if s.startswith("hf:")] == ["hf:m=1024", "hf:m=2048"]


@pytest.mark.slow
def test_the_quick_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--epochs", "4", "--seeds", "1", "--out", str(out), "--quiet"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "$ OMP_NUM_THREADS=1 hfft study cnn --data digits --model-arg width=32" in result.output
    assert "-s sgd -s hf:m=256 --seeds 1 --budget 10%" in result.output
    summary = json.loads((out / "runs" / "compare.json").read_text())
    assert [c["checkpoint"] for c in summary["checkpoints"]] == ["ckpt-01", "ckpt-02"]
    assert (out / "figure1-test_accuracy.png").exists() and (out / "figure2.png").exists()
    assert "## Figure 2" in (out / "report.md").read_text()
    said = " ".join(result.output.split())
    assert "## What the runs show On test accuracy (relative score, early → late: sgd #" in said
    manifest = json.loads((out / "train" / "run.json").read_text())
    assert manifest["budget_time"] == "robust_train_seconds"
    assert summary["config"]["budget"] == "10%"
