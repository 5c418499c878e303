"""Time to target (issue #28 §3): ``--target``, the counts, and ratios to the fastest
first-order strategy, on hand-made runs with known answers."""

from __future__ import annotations

import json
import math

import pytest

from hfft.analysis.ranking import compare_summary
from hfft.analysis.run_summary import RunSummary
from hfft.analysis.target import (
    USER,
    TargetRow,
    fastest_reference,
    metric_label,
    parse_target,
    ratio_text,
    reach_times,
    soonest_first,
    target_header,
    target_rows,
    target_words,
    time_to_target_entry,
)

F = [0.0, 0.25, 0.5, 0.75, 1.0]  # binary fractions: ratios are exact


def run(strategy: str, seed: int, acc: list[float], status: str = "completed") -> RunSummary:
    """A run with test accuracies ``acc`` at the budget fractions ``F``."""
    evaluations = [
        {"fraction": f, "step": i, "train_eval_loss": 1.0, "test_loss": 1.0, "test_accuracy": a}
        for i, (f, a) in enumerate(zip(F, acc, strict=True))
    ]
    log = {"strategy": strategy, "status": status, "evaluations": evaluations}
    return RunSummary.from_metrics("ckpt-10", seed, json.loads(json.dumps(log)))


def reaching(strategy: str, *at: float | None) -> list[RunSummary]:
    """One run per seed that reaches 0.9 first at the fraction given (``None``: never)."""
    out = []
    for seed, fraction in enumerate(at):
        acc = [0.5 if fraction is None or f < fraction else 0.9 for f in F]
        acc[0] = 0.5
        out.append(run(strategy, seed, acc))
    return out


# auto is the fastest, but not first-order; sgd-div10 is the fastest first-order strategy
RUNS = [
    *reaching("sgd", 0.75, 0.75, 0.5),
    *reaching("sgd-div10", 0.5, 0.25, None),
    *reaching("hf:m=256", 0.75, 0.5, None),
    *reaching("hf:m=1024", None, None, 0.5),
    *reaching("auto:m=256", 0.25, 0.25, 0.25),
]


@pytest.mark.parametrize(
    ("text", "metric", "value"),
    [
        ("0.981", "test_accuracy", 0.981),
        ("98.1%", "test_accuracy", 0.981),
        (" 50 % ", "test_accuracy", 0.5),
        ("1", "test_accuracy", 1.0),
        ("0.35", "test_loss", 0.35),
        ("-0.5", "test_r2", -0.5),
        ("98.1%", None, 0.981),
        ("98", None, 98.0),
    ],
    ids=["fraction", "percent", "spaced", "one", "loss", "negative-r2", "form-percent", "form"],
)
def test_a_target_is_a_fraction_or_a_percentage(text: str, metric: str | None, value: float):
    assert parse_target(text, metric) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize(
    ("text", "metric", "says"),
    [
        ("98", "test_accuracy", "--target 98 is no accuracy (a fraction from 0 to 1); write 98%"),
        ("101%", None, "a percentage from 0% to 100% such as 98.1%, not '101%'"),
        ("soon", None, "not 'soon'"),
        ("nan", None, "not 'nan'"),
        ("inf", "test_loss", "not 'inf'"),
        ("5%", "test_loss", "--target 5% is a percentage, but the comparison ranks first by test"),
        ("-1", "test_loss", "--target -1 is negative, but test loss is at least 0"),
        ("1.5", "test_r2", "--target 1.5 is above 1, the largest test r2"),
    ],
    ids=["accuracy-98", "percent-101", "word", "nan", "inf", "percent-loss", "loss<0", "r2>1"],
)
def test_a_target_out_of_range_is_one_sentence(text: str, metric: str | None, says: str) -> None:
    with pytest.raises(ValueError, match=r"^--target") as err:
        parse_target(text, metric)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_reach_times_per_seed_ignore_the_checkpoint_itself() -> None:
    # the evaluation at fraction 0 is the checkpoint: it never counts as reaching
    started = [run("sgd", 0, [0.95, 0.5, 0.9, 0.5, 0.5]), run("sgd", 1, [0.95] + [0.5] * 4)]
    assert reach_times(started, 0.9) == {"sgd": [0.5, math.inf]}
    assert reach_times(RUNS, 0.9)["sgd-div10"] == [0.5, 0.25, math.inf]


def test_the_entry_counts_missed_seeds_and_rates_against_the_fastest_first_order() -> None:
    entry, notes = time_to_target_entry(RUNS, "test_accuracy", start=0.5, target=0.9)
    assert entry is not None and notes == []
    assert (entry["baseline"], entry["target"], entry["metric"]) == (USER, 0.9, "test_accuracy")
    assert entry["fractions"] == {
        "sgd": 0.75, "sgd-div10": 0.5, "hf:m=256": 0.75, "hf:m=1024": None, "auto:m=256": 0.25
    }  # fmt: skip
    assert entry["missed"] == {
        "sgd": 0, "sgd-div10": 1, "hf:m=256": 1, "hf:m=1024": 2, "auto:m=256": 0
    }  # fmt: skip
    assert set(entry["seeds"].values()) == {3}
    # auto is faster, but only a first-order strategy is the reference
    assert entry["fastest_first_order"] == "sgd-div10"
    assert entry["ratios"] == {
        "sgd": 1.5, "sgd-div10": 1.0, "hf:m=256": 1.5, "hf:m=1024": None, "auto:m=256": 0.5
    }  # fmt: skip
    assert soonest_first(entry) == ["auto:m=256", "sgd-div10", "sgd", "hf:m=256", "hf:m=1024"]


def test_a_curvature_method_of_another_kind_is_no_reference() -> None:
    # kfac (unregistered here, or of a "second-order" kind) is faster than every SGD
    assert fastest_reference({"kfac": 0.1, "sgd": 0.5, "sgd-cosine": 0.25}) == "sgd-cosine"
    assert fastest_reference({"kfac": 0.1, "hf:m=256": 0.2, "sgd": None}) is None


def test_no_ratio_when_no_first_order_strategy_reaches_the_target() -> None:
    runs = [*reaching("sgd", None, None, 0.5), *reaching("hf:m=256", 0.5, 0.5, 0.75)]
    entry, notes = time_to_target_entry(runs, "test_accuracy", start=0.5, target=0.9)
    assert entry is not None
    assert entry["fractions"] == {"sgd": None, "hf:m=256": 0.5}
    assert entry["fastest_first_order"] is None
    assert entry["ratios"] == {"sgd": None, "hf:m=256": None}
    assert notes == [
        "no first-order strategy reached the target in half of its seeds or more, so no "
        "strategy's time to target has a ratio to the fastest first-order one"
    ]


def test_a_user_target_the_checkpoint_already_reaches_is_kept_with_a_note() -> None:
    entry, notes = time_to_target_entry(RUNS, "test_accuracy", start=0.95, target=0.9)
    assert entry is not None and entry["fractions"]["sgd-div10"] == 0.5
    assert notes == [
        "the checkpoint itself reaches the target (test accuracy 95.00 %, target 90.00 %): "
        "the time to target is when each strategy is still there after its first step"
    ]


@pytest.mark.parametrize(
    ("runs", "note"),
    [
        (
            reaching("hf:m=256", 0.5),
            "no time to target: no SGD strategy has a final test accuracy to take as the target "
            "(--target sets one)",
        ),
        (
            [run("sgd", 0, [0.5, 0.5, 0.5, 0.5, 0.5])],
            "no time to target: sgd's final test accuracy (50.00 %) does not lie beyond the "
            "start (50.00 %); --target sets a value to reach",
        ),
    ],
    ids=["no-sgd", "not-beyond-start"],
)
def test_without_a_baseline_target_a_note_says_why(runs: list[RunSummary], note: str) -> None:
    assert time_to_target_entry(runs, "test_accuracy", start=0.5) == (None, [note])


def test_the_baseline_target_is_the_best_sgd_final_value() -> None:
    runs = [*reaching("sgd", 0.25, 0.25), *reaching("hf:m=256", 0.5, None)]
    entry, _ = time_to_target_entry(runs, "test_accuracy", start=0.5)
    assert entry is not None and (entry["baseline"], entry["target"]) == ("sgd", 0.9)
    assert entry["fractions"] == {"sgd": 0.25, "hf:m=256": 0.5}
    assert entry["ratios"] == {"sgd": 1.0, "hf:m=256": 2.0}
    assert entry["missed"] == {"sgd": 0, "hf:m=256": 1}


def test_compare_summary_takes_the_users_target_and_notes_it() -> None:
    runs = [run("sgd", s, [0.5, 0.5, 0.5, 0.5, 0.5]) for s in range(3)]
    (c,) = compare_summary(runs)["checkpoints"]
    assert c["time_to_target"] is None
    assert any(n.startswith("no time to target: sgd's final") for n in c["notes"])
    (c,) = compare_summary(runs, target=0.25)["checkpoints"]
    ttt = c["time_to_target"]
    assert ttt is not None and ttt["baseline"] == USER and ttt["fractions"] == {"sgd": 0.25}
    assert any(n.startswith("the checkpoint itself reaches the target") for n in c["notes"])
    json.dumps(c, allow_nan=False)


@pytest.mark.parametrize(
    ("ratio", "text"), [(2.7, "2.7×"), (1.0, "1.0×"), (0.74, "0.74×"), (12.25, "12.2×")]
)
def test_ratio_text(ratio: float, text: str) -> None:
    assert ratio_text(ratio) == text


# --- the words every table says it in (the terminal's and report.md's) -------------------

TTT = {
    "metric": "test_accuracy",
    "baseline": "sgd-cosine",
    "target": 0.981,
    "fractions": {"hf:m=256": None, "sgd": 0.5, "sgd-div10": 0.25},
    "missed": {"hf:m=256": 5, "sgd": 2, "sgd-div10": 0},
    "seeds": {"hf:m=256": 5, "sgd": 5, "sgd-div10": 5},
    "ratios": {"hf:m=256": None, "sgd": 2.0, "sgd-div10": 1.0},
    "fastest_first_order": "sgd-div10",
}


@pytest.mark.parametrize(
    ("metric", "label"),
    [
        ("train_eval_loss", "train loss"),
        ("test_accuracy", "test accuracy"),
        ("valid_r2", "valid r2"),
    ],
)
def test_metric_label(metric: str, label: str) -> None:
    assert metric_label(metric) == label


def test_target_words_name_the_baseline_or_the_users_target() -> None:
    assert target_words(TTT) == "sgd-cosine's final test accuracy 98.10 %"
    mine = {**TTT, "baseline": USER, "metric": "train_eval_loss", "target": 0.25}
    assert target_words(mine) == "train loss 0.25 (--target)"
    assert (
        target_words(mine, lambda m, v: f"<{m}={v}>")
        == "train loss <train_eval_loss=0.25> (--target)"
    )


def test_target_rows_soonest_first_in_either_tables_format() -> None:
    assert target_header(TTT) == ["strategy", "to target", "× sgd-div10", "seeds missed"]
    rows = target_rows(TTT)
    assert rows[0] == TargetRow("sgd-div10", 0.25, 1.0, 0, 5)
    assert [r.cells() for r in rows] == [
        ["sgd-div10", "25 %", "1.0×", "0 of 5"],
        ["sgd", "50 %", "2.0×", "2 of 5"],
        ["hf:m=256", "not reached", "–", "5 of 5"],
    ]
    assert rows[1].cells(percent="{:.0f}%", of="{}/{}") == ["sgd", "50%", "2.0×", "2/5"]


def test_target_rows_of_an_older_entry_without_ratios_or_counts() -> None:
    old = {k: TTT[k] for k in ("metric", "baseline", "target", "fractions")}
    assert target_header(old)[2] == "× fastest first-order"
    assert target_rows(old)[0].cells() == ["sgd-div10", "25 %", "–", "–"]
    assert target_rows({**old, "missed": TTT["missed"]})[0].missed is None  # without seeds
