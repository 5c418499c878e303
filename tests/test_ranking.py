"""Ranking statistics of ``hfft compare`` on hand-picked runs with known answers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import wilcoxon

from hfft.analysis.ranking import (
    RunSummary,
    StrategyStats,
    best_baseline_target,
    compare_summary,
    higher_is_better,
    rank_strategies,
    relative_performance,
    run_notes,
    signed_rank_pvalue,
    time_to_target,
)

NAN = math.nan


def run(
    strategy: str,
    seed: int,
    acc: list[float],
    loss: list[float] | None = None,
    *,
    fractions: list[float] | None = None,
    status: str = "completed",
    checkpoint: str = "ckpt-10",
) -> RunSummary:
    """A run whose evaluations carry ``acc`` as test accuracy and ``loss`` as train loss,
    evenly spread over the budget from its start (one value: an evaluation at the end)."""
    loss = loss if loss is not None else [1.0] * len(acc)
    if fractions is None:
        fractions = [1.0] if len(acc) == 1 else list(np.linspace(0, 1, len(acc)))
    evaluations = [
        {
            "fraction": f,
            "seconds": 10 * f,
            "step": i,
            "train_eval_loss": lo,
            "train_eval_accuracy": a,
            "valid_loss": lo,
            "valid_accuracy": a,
            "test_loss": lo,
            "test_accuracy": a,
            "lr": 0.1,
        }
        for i, (f, a, lo) in enumerate(zip(fractions, acc, loss, strict=True))
    ]
    metrics = {"strategy": strategy, "status": status, "evaluations": evaluations}
    return RunSummary.from_metrics(checkpoint, seed, json.loads(json.dumps(metrics)))


def runs_with_best(
    table: dict[str, list[float]], metric: str = "test_accuracy"
) -> list[RunSummary]:
    """One run per strategy and seed whose best value of ``metric`` is the table's."""
    out = []
    for strategy, values in table.items():
        for seed, v in enumerate(values):
            if metric == "test_accuracy":
                out.append(run(strategy, seed, [v - 0.05, v, v - 0.01]))
            else:
                out.append(run(strategy, seed, [0.5, 0.5, 0.5], [v + 0.5, v, v + 0.1]))
    return out


def by_name(stats: list[StrategyStats]) -> dict[str, StrategyStats]:
    return {st.strategy: st for st in stats}


# --- runs --------------------------------------------------------------------------------


def test_from_metrics_best_and_final() -> None:
    r = run("sgd", 3, [0.5, 0.8, 0.7], [2.0, 0.5, 0.9], status="completed")
    assert (r.checkpoint, r.strategy, r.seed, r.status) == ("ckpt-10", "sgd", 3, "completed")
    assert r.best("test_accuracy") == 0.8
    assert r.best("train_eval_loss") == 0.5
    assert r.final("test_accuracy") == 0.7
    assert r.final("train_eval_loss") == 0.9


def test_nan_and_none_values_are_ignored() -> None:
    r = run("sgd", 0, [0.5, NAN, 0.6], [1.0, 0.1, 0.2])
    r.evaluations[2]["test_accuracy"] = None
    assert r.best("test_accuracy") is None  # nothing left after the start
    assert r.start("test_accuracy") == 0.5
    assert r.final("test_accuracy") is None
    r = run("sgd", 0, [0.5, NAN, 0.6])
    assert r.best("test_accuracy") == 0.6


def test_the_start_is_a_reference_not_a_runs_best() -> None:
    # from a good checkpoint every strategy used to score the start's value: all tied at it
    r = run("hf", 0, [0.9, 0.8, 0.85], [0.1, 0.3, 0.2])
    assert r.best("test_accuracy") == 0.85 and r.start("test_accuracy") == 0.9
    assert r.best("train_eval_loss") == 0.2 and r.start("train_eval_loss") == 0.1


def test_diverged_run_counts_with_its_best_before_divergence() -> None:
    # at the last evaluation the loss is NaN: its accuracy is not a score either
    r = run("hf", 0, [0.5, 0.7, 0.95], [1.0, 0.4, NAN], status="diverged")
    assert r.best("test_accuracy") == 0.7
    assert r.best("train_eval_loss") == 0.4
    assert r.final("test_accuracy") is None


def test_from_metrics_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="no strategy"):
        RunSummary.from_metrics("c", 0, {"evaluations": []})
    with pytest.raises(ValueError, match="no evaluation list"):
        RunSummary.from_metrics("c", 0, {"strategy": "sgd"})


@pytest.mark.parametrize(
    ("metric", "higher"),
    [("test_accuracy", True), ("train_eval_accuracy", True), ("train_eval_loss", False)],
)
def test_metric_direction(metric: str, higher: bool) -> None:
    assert higher_is_better(metric) is higher


def test_unknown_metric_direction() -> None:
    with pytest.raises(ValueError, match="maximised or minimised"):
        higher_is_better("step")


# --- the signed-rank test ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("differences", "p"),
    [
        pytest.param([1, 2, 3, 4, 5], 1 / 32, id="all-positive"),
        pytest.param([-1, 2, 3, 4, 5], 2 / 32, id="smallest-negative"),
        pytest.param([0, 1, 2, 3, 4, 5], 1 / 32, id="zero-dropped"),
        pytest.param([1, 1, 1, 1, 1], 1 / 32, id="all-tied"),
        pytest.param([-1, -2, -3, -4, -5], 1.0, id="all-negative"),
        pytest.param([0, 0, 0], 1.0, id="all-zero"),
    ],
)
def test_signed_rank_pvalue(differences: list[float], p: float) -> None:
    assert signed_rank_pvalue(differences) == pytest.approx(p, abs=1e-15)


def test_signed_rank_pvalue_matches_scipy_exact_without_ties() -> None:
    d = np.random.default_rng(0).normal(0.3, 1.0, size=9)
    expected = wilcoxon(d, alternative="greater", method="exact").pvalue
    assert signed_rank_pvalue(d) == pytest.approx(expected, rel=1e-12)


# --- ranking ------------------------------------------------------------------------------

TABLE = {
    # best test accuracy per seed 0..4
    "sgd": [0.80, 0.82, 0.84, 0.86, 0.88],
    "hf:m=2048": [0.90, 0.91, 0.92, 0.93, 0.94],
    "sgd-cosine": [0.83, 0.85, 0.86, 0.87, 0.89],
}


def test_rank_means_quartiles_and_order() -> None:
    stats = rank_strategies(runs_with_best(TABLE), "test_accuracy")
    assert [st.strategy for st in stats] == ["hf:m=2048", "sgd-cosine", "sgd"]
    assert [st.rank for st in stats] == [1, 2, 3]
    hf, cos, sgd = stats
    assert hf.values == pytest.approx(TABLE["hf:m=2048"])
    assert hf.seeds == (0, 1, 2, 3, 4)
    assert (hf.mean, hf.q25, hf.median, hf.q75) == pytest.approx((0.92, 0.91, 0.92, 0.93))
    assert (cos.mean, cos.q25, cos.median, cos.q75) == pytest.approx((0.86, 0.85, 0.86, 0.87))
    assert (sgd.mean, sgd.q25, sgd.median, sgd.q75) == pytest.approx((0.84, 0.82, 0.84, 0.86))


def test_separated_pair_not_tied_overlapping_pair_tied() -> None:
    stats = by_name(rank_strategies(runs_with_best(TABLE), "test_accuracy"))
    # hf is better on every seed and its IQR [0.91, 0.93] is clear of the others
    assert stats["hf:m=2048"].tied_with == ()
    # IQRs [0.85, 0.87] and [0.82, 0.86] overlap
    assert stats["sgd-cosine"].tied_with == ("sgd",)
    assert stats["sgd"].tied_with == ("sgd-cosine",)


def test_losses_rank_lowest_first() -> None:
    table = {"a": [0.3, 0.31, 0.32, 0.33, 0.34], "b": [0.1, 0.11, 0.12, 0.13, 0.14]}
    stats = rank_strategies(runs_with_best(table, "train_eval_loss"), "train_eval_loss")
    assert [st.strategy for st in stats] == ["b", "a"]
    assert stats[0].mean == pytest.approx(0.12)
    assert stats[0].tied_with == () and stats[1].tied_with == ()


def test_clear_iqr_gap_but_inconsistent_seeds_is_tied() -> None:
    # IQRs [11, 13] and [2, 4] are apart, but seed 0 favours b: p = 2/32 >= 0.05
    table = {"a": [0.5, 11, 12, 13, 14], "b": [1, 2, 3, 4, 5]}
    runs = [run(s, seed, [v / 100]) for s, vs in table.items() for seed, v in enumerate(vs)]
    stats = by_name(rank_strategies(runs, "test_accuracy"))
    assert stats["a"].tied_with == ("b",)


def test_fewer_than_five_seeds_use_the_iqr_only() -> None:
    table = {"a": [0.5, 11, 12, 13], "b": [1, 2, 3, 4]}
    runs = [run(s, seed, [v / 100]) for s, vs in table.items() for seed, v in enumerate(vs)]
    stats = by_name(rank_strategies(runs, "test_accuracy"))
    assert stats["a"].q25 == pytest.approx(0.08375, abs=1e-12)  # 0.005 + 0.75 * 0.105
    assert stats["a"].tied_with == ()


def test_runs_without_finite_values_are_dropped() -> None:
    runs = [
        run("sgd", 0, [0.8]),
        run("sgd", 1, [NAN, NAN]),
        run("sgd", 2, [0.9]),
        run("hf", 0, [NAN]),
    ]
    stats = rank_strategies(runs, "test_accuracy")
    assert [st.strategy for st in stats] == ["sgd"]
    assert stats[0].values == (0.8, 0.9) and stats[0].seeds == (0, 2)
    assert stats[0].dropped == (1,)
    notes = run_notes(runs, ["test_accuracy"])
    assert "sgd seed 1 has no finite test_accuracy; left out" in notes
    assert "hf seed 0 has no finite test_accuracy; left out" in notes


def test_ranking_needs_a_checkpoint_when_several() -> None:
    runs = [run("sgd", 0, [0.8], checkpoint="a"), run("sgd", 0, [0.7], checkpoint="b")]
    with pytest.raises(ValueError, match="several checkpoints"):
        rank_strategies(runs, "test_accuracy")
    assert rank_strategies(runs, "test_accuracy", checkpoint="b")[0].values == (0.7,)


def test_duplicate_seed_is_an_error() -> None:
    with pytest.raises(ValueError, match="two runs of sgd with seed 0"):
        rank_strategies([run("sgd", 0, [0.8]), run("sgd", 0, [0.7])], "test_accuracy")


# --- time to target, baseline -------------------------------------------------------------

F = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_time_to_target_median_over_seeds() -> None:
    runs = [
        # three of five reach 0.9, at 0.2, 0.4 and 0.6
        run("hf", 0, [0.5, 0.9, 0.9, 0.9, 0.9, 0.9], fractions=F),
        run("hf", 1, [0.5, 0.6, 0.95, 0.9, 0.9, 0.9], fractions=F),
        run("hf", 2, [0.5, 0.6, 0.7, 0.91, 0.9, 0.9], fractions=F),
        run("hf", 3, [0.5] * 6, fractions=F),
        run("hf", 4, [0.5] * 6, fractions=F),
        # two of five: fewer than half
        run("sgd", 0, [0.9] * 6, fractions=F),
        run("sgd", 1, [0.9] * 6, fractions=F),
        run("sgd", 2, [0.5] * 6, fractions=F),
        run("sgd", 3, [0.5] * 6, fractions=F),
        run("sgd", 4, [0.5] * 6, fractions=F),
        # even count, exactly half: the lower median
        run("sgd-cosine", 0, [0.5, 0.5, 0.5, 0.5, 0.95, 0.9], fractions=F),
        run("sgd-cosine", 1, [0.5, 0.5, 0.5, 0.9, 0.9, 0.9], fractions=F),
        run("sgd-cosine", 2, [0.5] * 6, fractions=F),
        run("sgd-cosine", 3, [0.5] * 6, fractions=F),
    ]
    assert time_to_target(runs, 0.9) == {"hf": 0.6, "sgd": None, "sgd-cosine": 0.8}


def test_time_to_target_for_a_loss_means_at_most() -> None:
    runs = [run("hf", 0, [0.5] * 6, [2.0, 1.5, 1.0, 0.5, 0.4, 0.3], fractions=F)]
    assert time_to_target(runs, 0.5, metric="train_eval_loss") == {"hf": 0.6}


def test_best_baseline_target_ignores_hf() -> None:
    runs = [
        run("sgd", 0, [0.5, 0.80]),
        run("sgd", 1, [0.5, 0.82]),
        run("sgd-cosine", 0, [0.5, 0.86]),
        run("sgd-cosine", 1, [0.9, 0.88]),  # final, not best
        run("hf", 0, [0.5, 0.99]),
    ]
    name, target = best_baseline_target(runs)
    assert name == "sgd-cosine"
    assert target == pytest.approx(0.87)


def test_best_baseline_target_needs_sgd() -> None:
    with pytest.raises(ValueError, match="no SGD run"):
        best_baseline_target([run("hf", 0, [0.9])])


# --- relative performance -----------------------------------------------------------------


def test_relative_performance_scales_per_checkpoint() -> None:
    runs = [
        run("sgd", 0, [0.6], [0.4], checkpoint="a"),
        run("sgd", 1, [0.7], [0.2], checkpoint="a"),
        run("hf", 0, [0.8], [0.3], checkpoint="a"),
        run("hf", 1, [NAN], [NAN], checkpoint="a"),
        run("sgd", 0, [0.9], [0.5], checkpoint="b"),
        run("hf", 0, [0.9], [0.5], checkpoint="b"),
    ]
    acc = relative_performance(runs, "test_accuracy")
    assert list(acc) == ["a", "b"]
    assert acc["a"]["sgd"] == pytest.approx([0.0, 0.5])
    assert acc["a"]["hf"] == pytest.approx([1.0])
    assert acc["b"] == {"sgd": [1.0], "hf": [1.0]}  # all equal
    # losses: the smallest is best (1), the largest worst (0)
    loss = relative_performance(runs, "train_eval_loss")
    assert loss["a"]["sgd"] == pytest.approx([0.0, 1.0])
    assert loss["a"]["hf"] == pytest.approx([0.5])


# --- summary ------------------------------------------------------------------------------


def _summary_runs(checkpoints: list[str]) -> list[RunSummary]:
    # binary fractions, so that means and targets are exact
    runs = []
    for c in checkpoints:
        for seed in range(3):
            runs.append(run("sgd", seed, [0.25, 0.5 + 0.125 * seed], [1.0, 0.5], checkpoint=c))
            runs.append(run("hf", seed, [0.25, 0.75 + 0.0625 * seed], [1.0, 0.75], checkpoint=c))
    last = checkpoints[-1]
    runs[-1] = run("hf", 2, [0.75, 0.875], [1.0, NAN], status="diverged", checkpoint=last)
    return runs


def test_compare_summary_one_checkpoint_is_json_ready() -> None:
    summary: dict[str, Any] = compare_summary(_summary_runs(["c"]))
    json.dumps(summary, allow_nan=False)
    assert "relative_performance" not in summary
    (c,) = summary["checkpoints"]
    assert c["checkpoint"] == "c" and c["runs"] == 6
    assert c["status"] == {"completed": 5, "diverged": 1}
    acc = c["rankings"]["test_accuracy"]
    assert [s["strategy"] for s in acc] == ["hf", "sgd"]
    # seed 2 diverged at its first evaluation after the start: no best to count, left out
    assert acc[0]["values"] == [0.75, 0.8125] and acc[0]["dropped"] == [2]
    assert c["start"] == {"test_accuracy": 0.25, "train_eval_loss": 1.0}
    assert [s["strategy"] for s in c["rankings"]["train_eval_loss"]] == ["sgd", "hf"]
    ttt = c["time_to_target"]
    assert (ttt["metric"], ttt["baseline"], ttt["target"]) == ("test_accuracy", "sgd", 0.625)
    assert ttt["fractions"] == {"sgd": 1.0, "hf": 1.0}
    assert any(n.startswith("hf seed 2 diverged at 100 % of the budget") for n in c["notes"])


def test_compare_summary_several_checkpoints_has_relative_performance() -> None:
    summary = compare_summary(_summary_runs(["c1", "c2"]))
    json.dumps(summary, allow_nan=False)
    assert [c["checkpoint"] for c in summary["checkpoints"]] == ["c1", "c2"]
    rel = summary["relative_performance"]
    assert set(rel) == {"test_accuracy", "train_eval_loss"}
    # c1: best accuracies 0.5 … 0.875
    assert rel["test_accuracy"]["c1"]["sgd"] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert rel["test_accuracy"]["c1"]["hf"] == pytest.approx([2 / 3, 5 / 6, 1.0])


def test_no_time_to_target_when_the_target_is_not_beyond_the_start() -> None:
    # from a late checkpoint SGD's final value is the start's: "0 % to target" said nothing
    runs = [run("sgd", s, [0.9, 0.85, 0.9]) for s in range(3)]
    runs += [run("hf", s, [0.9, 0.92, 0.88]) for s in range(3)]
    (c,) = compare_summary(runs)["checkpoints"]
    assert c["start"]["test_accuracy"] == 0.9 and c["time_to_target"] is None
    assert [s["mean"] for s in c["rankings"]["test_accuracy"]] == pytest.approx([0.92, 0.9])


def test_step_times_per_strategy_and_a_note_when_seeds_differ() -> None:
    runs = [run("sgd", s, [0.5, 0.6, 0.7]) for s in range(3)]  # 10 s over 2 steps each
    runs += [run("hf", s, [0.5, 0.6, 0.7]) for s in range(3)]
    runs[-1].evaluations[-1]["seconds"] = 20.0  # one slow seed: 10 s per step, not 5
    (c,) = compare_summary(runs)["checkpoints"]
    assert c["step_seconds"]["sgd"] == {"mean": pytest.approx(5.0), "spread": pytest.approx(1.0)}
    assert c["step_seconds"]["hf"]["spread"] == pytest.approx(2.0)
    assert any(n.startswith("hf: seconds per step differ 2.00×") for n in c["notes"])
    assert not any(n.startswith("sgd:") for n in c["notes"])


def test_seconds_per_cg_iteration_from_the_hf_steps() -> None:
    log = {
        "strategy": "hf",
        "evaluations": [{"fraction": 0.0, "step": 0}, {"fraction": 1.0, "step": 2}],
        "steps": [
            {"cg_iterations": 10, "time_cg": 1.0},
            {"cg_iterations": 30, "time_cg": 2.0},
            {"loss": 0.5},  # an SGD step of auto: no CG
        ],
    }
    assert RunSummary.from_metrics("c", 0, log).cg_seconds == pytest.approx(3.0 / 40)
    assert RunSummary.from_metrics("c", 0, {**log, "steps": [{"loss": 0.5}]}).cg_seconds is None


def test_a_note_when_a_strategy_ends_past_the_budget() -> None:
    runs = [run("sgd", s, [0.5, 0.6, 0.7]) for s in range(3)]
    runs += [run("hf", s, [0.5, 0.6, 0.7], fractions=[0.0, 0.6, 1.3]) for s in range(3)]
    (c,) = compare_summary(runs)["checkpoints"]
    notes = [n for n in c["notes"] if "the budget on average" in n]
    assert len(notes) == 1 and notes[0].startswith("hf: its runs ended at 1.30×")
