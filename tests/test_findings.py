"""The closing paragraph of a study's report: the time-to-target verdict (issue #28 §3).

The other sentences of :mod:`hfft.analysis.findings` are tested in tests/test_demo.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from hfft.analysis.findings import findings_markdown

HEAD = "Time to target from the last checkpoint (ckpt-03: test accuracy 98.10 %, "


def _summary(ttt: dict[str, Any] | None) -> dict[str, Any]:
    ranked = [{"strategy": "sgd", "rank": 1, "mean": 0.98, "tied_with": []}]
    return {
        "metrics": ["test_accuracy"],
        "checkpoints": [
            {"checkpoint": "ckpt-03", "rankings": {"test_accuracy": ranked},
             "time_to_target": ttt, "notes": []},
        ],
    }  # fmt: skip


def _ttt(fractions: dict[str, float | None], missed: dict[str, int], **kw: Any) -> dict:
    ratios = {s: None if f is None or kw.get("fastest") is None else f / kw["ref"]
              for s, f in fractions.items()}  # fmt: skip
    return {
        "metric": "test_accuracy", "baseline": kw.get("baseline", "sgd-cosine"), "target": 0.981,
        "fractions": fractions, "missed": missed, "seeds": dict.fromkeys(fractions, 5),
        "ratios": ratios, "fastest_first_order": kw.get("fastest"),
    }  # fmt: skip


CASES = {
    "sgd-first": (
        _ttt({"sgd-div10": 0.1, "hf:m=2048": 0.27, "hf:m=256": None},
             {"sgd-div10": 0, "hf:m=2048": 0, "hf:m=256": 3}, fastest="sgd-div10", ref=0.1),
        "sgd-cosine's final value): sgd-div10 reaches it first, at 10 % of the budget; HF's "
        "best, hf:m=2048, needs 2.7× the budget of sgd-div10, the fastest first-order strategy; "
        "3 of 5 seeds of hf:m=256 never reach it.",
    ),
    "hf-first": (
        _ttt({"sgd": 0.5, "hf:m=2048": 0.25, "hf:m=256": 0.375},
             {"sgd": 0, "hf:m=2048": 0, "hf:m=256": 0}, fastest="sgd", ref=0.5,
             baseline="user"),
        "given by --target): hf:m=2048 reaches it first, at 25 % of the budget; HF's best, "
        "hf:m=2048, needs 0.50× the budget of sgd, the fastest first-order strategy.",
    ),
    "tied-first": (
        _ttt({"sgd": 0.25, "lbfgs": 0.5, "hf:m=2048": 0.25},
             {"sgd": 0, "lbfgs": 0, "hf:m=2048": 0}, fastest="sgd", ref=0.25),
        "sgd-cosine's final value): sgd and hf:m=2048 reach it first, at 25 % of the budget; "
        "HF's best, hf:m=2048, needs 1.0× the budget of sgd, the fastest first-order strategy.",
    ),
    "no-hf": (
        _ttt({"sgd": 0.5, "hf:m=256": None}, {"sgd": 1, "hf:m=256": 5}, fastest="sgd", ref=0.5),
        "sgd-cosine's final value): sgd reaches it first, at 50 % of the budget; no HF strategy "
        "reaches it in half of its seeds; 5 of 5 seeds of hf:m=256 never reach it.",
    ),
    "no-first-order": (
        _ttt({"sgd": None, "hf:m=256": 0.5}, {"sgd": 3, "hf:m=256": 0}),
        "sgd-cosine's final value): hf:m=256 reaches it first, at 50 % of the budget; no "
        "first-order strategy reaches it in half of its seeds (no ratio).",
    ),
    "none": (
        _ttt({"sgd": None, "hf:m=256": None}, {"sgd": 3, "hf:m=256": 4}),
        "sgd-cosine's final value): no strategy reaches it in half of its seeds.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_verdict_on_the_time_to_target_from_the_last_checkpoint(case: str) -> None:
    ttt, sentence = CASES[case]
    text = findings_markdown(_summary(ttt), ["sgd"])
    assert HEAD + sentence in text


def test_no_verdict_without_a_time_to_target_and_none_on_ratios_of_an_older_record() -> None:
    assert "Time to target" not in findings_markdown(_summary(None), ["sgd"])
    old = {k: v for k, v in CASES["sgd-first"][0].items() if k in ("metric", "baseline",
           "target", "fractions")}  # fmt: skip
    text = findings_markdown(_summary(old), ["sgd"])
    assert (
        HEAD + "sgd-cosine's final value): sgd-div10 reaches it first, at 10 % of the budget."
        in text
    )
