"""A study's report.md: the time to target first, per checkpoint (issue #28 §3)."""

from __future__ import annotations

from typing import Any

from hfft.analysis.report import report_markdown

TTT = {
    "metric": "test_accuracy",
    "baseline": "sgd-cosine",
    "target": 0.981,
    "fractions": {"hf:m=256": None, "sgd": 0.4, "hf:m=2048": 0.27, "sgd-div10": 0.1},
    "missed": {"hf:m=256": 3, "sgd": 2, "hf:m=2048": 1, "sgd-div10": 0},
    "seeds": {"hf:m=256": 5, "sgd": 5, "hf:m=2048": 5, "sgd-div10": 5},
    "ratios": {"hf:m=256": None, "sgd": 4.0, "hf:m=2048": 2.7, "sgd-div10": 1.0},
    "fastest_first_order": "sgd-div10",
}


def _summary(first_seed: int = 0) -> dict[str, Any]:
    ranked = [{"strategy": "sgd", "rank": 1, "mean": 0.98, "q25": 0.97, "q75": 0.99,
               "values": [0.98] * 5, "tied_with": []}]  # fmt: skip
    return {
        "config": {"seeds": 5, "first_seed": first_seed, "budget": "10%"},
        "metrics": ["test_accuracy"],
        "checkpoints": [
            {"checkpoint": "ckpt-05", "rankings": {"test_accuracy": ranked},
             "time_to_target": None, "notes": ["no time to target: sgd's final …"]},
            {"checkpoint": "ckpt-10", "rankings": {"test_accuracy": ranked},
             "time_to_target": TTT, "notes": []},
        ],
    }  # fmt: skip


def _section(report: str, heading: str) -> list[str]:
    lines = report.splitlines()
    start = lines.index(heading)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    return lines[start:end]


def test_the_time_to_target_comes_before_the_figures_and_rankings() -> None:
    report = report_markdown(_summary(), {}, ["sgd"], [], 0.0)
    assert report.index("## Time to target") < report.index("## Figure 1")
    assert report.index("## Time to target") < report.index("From ckpt-10, best test accuracy")


def test_the_time_to_target_table_per_checkpoint_soonest_first() -> None:
    section = _section(report_markdown(_summary(), {}, ["sgd"], [], 0.0), "## Time to target")
    assert "From ckpt-05: no time to target (the Notes say why)." in section
    at = section.index("From ckpt-10, to sgd-cosine's final test accuracy 98.10 %:")
    table = section[at + 2 : at + 8]
    assert table == [
        "| strategy | to target | × sgd-div10 | seeds missed |",
        "|---|---|---|---|",
        "| sgd-div10 | 10 % | 1.0× | 0 of 5 |",
        "| hf:m=2048 | 27 % | 2.7× | 1 of 5 |",
        "| sgd | 40 % | 4.0× | 2 of 5 |",
        "| hf:m=256 | not reached | – | 3 of 5 |",
    ]


def test_a_users_target_and_held_out_seeds_are_said() -> None:
    summary = _summary(first_seed=5)
    summary["checkpoints"][1]["time_to_target"] = {**TTT, "baseline": "user"}
    report = report_markdown(summary, {}, ["sgd"], [], 0.0)
    assert "From ckpt-10, to test accuracy 98.10 % (--target):" in report
    assert "Budget 10% per run, 5 seeds (5–9)," in report
    assert "5 seeds (" not in report_markdown(_summary(), {}, ["sgd"], [], 0.0)
