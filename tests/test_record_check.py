"""The plausibility check of metrics.json: every record hfft writes passes, every damage fails."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hfft.experiment.run.finetune import FinetuneConfig, finetune
from hfft.experiment.run.record_check import RecordError, check_finetune_log

HF_SMALL = "hf:m=128,cg_max_iter=5"


@pytest.fixture(scope="module")
def ckpt(trained_run: Path) -> Path:
    return trained_run / "ckpt-02.safetensors"


def _run(ckpt: Path, out: Path, strategy: str, budget: str, **kw: Any) -> dict[str, Any]:
    cfg = FinetuneConfig(
        checkpoint=str(ckpt), strategy=strategy, budget=budget, out=str(out), eval_batch_size=128,
        **{"eval_points": 2, **kw},
    )  # fmt: skip
    return json.loads(finetune(cfg).metrics_path.read_text())


@pytest.fixture(scope="module")
def written(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real SGD run's record (each test damages a copy)."""
    return _run(ckpt, tmp_path_factory.mktemp("sgd"), "sgd", "4steps")


# --- every record hfft writes passes ---------------------------------------------------------

WRITTEN = {
    "sgd": ("sgd", "6steps"),
    "sgd-plateau": ("sgd-plateau", "6steps"),
    "hf": (HF_SMALL, "3steps"),
    "auto": ("auto:interval=0.25,m=128,hf_cg_max_iter=5", "8steps"),
    "swa": ("swa", "6steps"),
    "lbfgs": ("lbfgs", "2steps"),
    "adamw": ("adamw", "6steps"),
    "schedulefree": ("sgd-schedulefree", "6steps"),
    "seconds": ("sgd", "0.2s"),
    # a budget shorter than one step: the only step ends hundreds of budgets past it
    "one-step-far-past": ("lbfgs", "0.0001s"),
    "epochs": (HF_SMALL, "0.3epochs"),  # overruns: one step draws 0.1 of an epoch
    "percent": ("sgd", "1%"),
    "diverged-at-once": ("sgd:lr=1e8", "20steps"),  # no evaluation after the start
    "diverged-later": ("sgd:lr=1e4", "50steps"),
    "null-losses": ("sgd:lr=1e8", "2steps"),  # completes with non-finite (null) losses
}


@pytest.mark.parametrize("case", list(WRITTEN))
def test_every_record_hfft_writes_passes(ckpt: Path, tmp_path: Path, case: str) -> None:
    strategy, budget = WRITTEN[case]
    log = _run(ckpt, tmp_path / "ft", strategy, budget)
    check_finetune_log(log)
    if case == "one-step-far-past":
        assert log["spent"]["fraction"] > 10
    if case.startswith("diverged"):
        assert log["status"] == "diverged"
    if case == "null-losses":
        assert log["evaluations"][-1]["train_eval_loss"] is None


def test_an_interrupted_record_passes(ckpt: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop(fraction: float, info: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    cfg = FinetuneConfig(
        checkpoint=str(ckpt), strategy="sgd", budget="500steps", out=str(tmp_path / "ft")
    )
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, on_progress=stop)
    log = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert log["status"] == "interrupted"
    check_finetune_log(log)


@pytest.mark.parametrize("kind", ["regression", "custom"])
def test_records_of_other_tasks_pass(tmp_path: Path, kind: str) -> None:
    import torch
    from torch import nn

    import tests.user_problems as up
    from hfft.experiment.run.starting_point import StartingPointOptions

    torch.manual_seed(0)
    model = up.regression_mlp()
    up.plain_training(model, up.diabetes(), nn.MSELoss(), epochs=1, lr=0.002)
    torch.save(model.state_dict(), tmp_path / "diabetes.pt")
    file = Path(up.__file__).resolve()
    source = StartingPointOptions(model=f"{file}:regression_mlp", data=f"{file}:diabetes")
    log = _run(tmp_path / "diabetes.pt", tmp_path / "ft", "hf:m=64,cg_max_iter=5", "2steps",
               source=source)  # fmt: skip
    assert log["source"]["task"]["kind"] == "regression" and "test_r2" in log["final"]
    if kind == "custom":  # a custom loss may be negative
        log["source"]["task"]["kind"] = "custom"
        log["evaluations"][1]["test_loss"] = -3.5
    check_finetune_log(log)


# --- every damage fails, in a few words ------------------------------------------------------


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(log: dict[str, Any]) -> None:
        record = log
        for part in path[:-1]:
            record = record[part]
        record[path[-1]] = value

    return edit


def _delete(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(log: dict[str, Any]) -> None:
        record = log
        for part in path[:-1]:
            record = record[part]
        del record[path[-1]]

    return edit


def _last_evaluation_at(step: int) -> Callable[[dict[str, Any]], None]:
    def edit(log: dict[str, Any]) -> None:
        log["evaluations"][-1]["step"] = step

    return edit


DAMAGED = {
    "not-an-object": (lambda log: log.clear(), "is incomplete (no schema_version)"),
    "schema-version": (_set("schema_version", value=2), "has schema_version 2, not 1"),
    "kind": (_set("kind", value="hfft-train"), 'has kind "hfft-train", not "hfft-finetune"'),
    "status": (
        _set("status", value="running"),
        'has status "running", not completed, diverged, interrupted',
    ),
    "strategy-number": (_set("strategy", value=7), "has strategy 7, not a string"),
    "strategy-empty": (_set("strategy", value=""), "has an empty strategy"),
    "budget-kind": (_set("budget", "kind", value="percent"), 'has budget.kind "percent", not'),
    "budget-limit": (_set("budget", "limit", value=0), "has budget.limit 0, not a budget of steps"),
    "task-missing": (_delete("source", "task"), "is incomplete (no source.task)"),
    "task-metric": (
        _set("source", "task", "metric", value="f1"),
        'has source.task.metric "f1", not a metric',
    ),
    "spent-missing": (_delete("spent"), "is incomplete (no spent)"),
    "spent-steps": (_set("spent", "steps", value=5), "has spent.steps 5, more than its 4-step"),
    "spent-fraction": (
        _set("spent", "fraction", value=0.5),
        "has spent.fraction 0.5, not 4 steps / 4 steps",
    ),
    "spent-seconds": (_set("spent", "seconds", value=-1), "has spent.seconds -1, below 0"),
    "accuracy-5": (
        _set("evaluations", 2, "test_accuracy", value=5.0),
        "has test_accuracy 5.0 at evaluation 2, outside [0, 1]",
    ),
    "accuracy-1e308": (
        _set("evaluations", 1, "valid_accuracy", value=1e308),
        "has valid_accuracy 1e+308 at evaluation 1, outside [0, 1]",
    ),
    "accuracy-negative": (
        _set("evaluations", 1, "train_eval_accuracy", value=-0.1),
        "has train_eval_accuracy -0.1 at evaluation 1, outside [0, 1]",
    ),
    "loss-negative": (
        _set("evaluations", 2, "test_loss", value=-1),
        "has test_loss -1 at evaluation 2, below 0",
    ),
    "r2-above-1": (_set("evaluations", 1, "test_r2", value=1.5), "has test_r2 1.5 at evaluation"),
    "rmse-negative": (_set("evaluations", 1, "test_rmse", value=-2.0), "has test_rmse -2.0 at"),
    "nan": (
        _set("evaluations", 2, "test_accuracy", value=float("nan")),
        "has test_accuracy NaN at evaluation 2, not a finite number",
    ),
    "infinity": (
        _set("evaluations", 2, "test_loss", value=float("inf")),
        "has test_loss Infinity at evaluation 2, not a finite number",
    ),
    "string": (
        _set("evaluations", 2, "test_accuracy", value="0.9"),
        'has test_accuracy "0.9" at evaluation 2, not a number',
    ),
    "bool": (
        _set("evaluations", 2, "test_accuracy", value=True),
        "has test_accuracy true at evaluation 2, not a number",
    ),
    "nested": (
        _set("evaluations", 2, "test_accuracy", value=[[[0.9]]]),
        "has test_accuracy a list at evaluation 2, not a number",
    ),
    "evaluations-missing": (_delete("evaluations"), "is incomplete (no evaluations)"),
    "evaluations-empty": (_set("evaluations", value=[]), "is incomplete (no evaluation)"),
    "evaluations-object": (_set("evaluations", value={}), "has evaluations an object, not a list"),
    "evaluation-number": (_set("evaluations", 1, value=3), "has evaluation 1 3, not an object"),
    "fraction-missing": (
        _delete("evaluations", 1, "fraction"),
        "is incomplete (no fraction at evaluation 1)",
    ),
    "fraction-1e308": (
        _set("evaluations", 1, "fraction", value=1e308),
        "has fraction 1e+308 at evaluation 1, more than spent.fraction (1.0)",
    ),
    "step-started-past-the-budget": (
        _set("steps", 3, "fraction", value=1.25),
        "has fraction 1.25 at step 4: it started past the budget",
    ),
    "fraction-inconsistent": (
        _set("evaluations", 1, "fraction", value=0.75),
        "has fraction 0.75 at evaluation 1, not 2 steps / 4 steps",
    ),
    "start-not-at-0": (
        _set("evaluations", 0, "step", value=1),
        "has step 1 at evaluation 0, not 0 (the start)",
    ),
    "step-float": (_set("evaluations", 1, "step", value=2.0), "has step 2.0 at evaluation 1, not"),
    "step-beyond-spent": (
        _last_evaluation_at(9),
        "has step 9 at evaluation 2, more than spent.steps (4)",
    ),
    "step-backwards": (
        _set("evaluations", 2, "step", value=1),
        "has step 1 at evaluation 2, less than the one before",
    ),
    "seconds-negative": (
        _set("evaluations", 1, "seconds", value=-0.5),
        "has seconds -0.5 at evaluation 1, below 0",
    ),
    "lr-string": (_set("evaluations", 1, "lr", value="fast"), 'has lr "fast" at evaluation 1'),
    "steps-missing": (_delete("steps"), "is incomplete (no steps)"),
    "steps-too-few": (_delete("steps", 3), "lists 3 steps, not the 4 of spent.steps"),
    "step-entry": (_set("steps", 0, value="x"), 'has step 1 "x", not an object'),
    "step-fraction": (
        _set("steps", 1, "fraction", value=float("nan")),
        "has fraction NaN at step 2, not a finite number",
    ),
    "step-seconds": (
        _set("steps", 3, "seconds", value=1e9),
        "has seconds 1000000000.0 at step 4, more than spent.seconds",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_every_damage_fails_with_its_field(written: dict[str, Any], case: str) -> None:
    check_finetune_log(written)
    log = copy.deepcopy(written)
    edit, why = DAMAGED[case]
    edit(log)
    with pytest.raises(RecordError) as err:
        check_finetune_log(log)
    assert str(err.value).startswith(why)


@pytest.mark.parametrize(
    "value",
    ["x" * 1_000_000, 10**4000, {"k": "v" * 1_000_000}],
    ids=["string", "integer", "object"],
)
def test_a_message_never_echoes_a_huge_value(written: dict[str, Any], value: Any) -> None:
    log = copy.deepcopy(written)
    log["evaluations"][1]["test_accuracy"] = value
    with pytest.raises(RecordError) as err:
        check_finetune_log(log)
    assert len(str(err.value)) < 80


def test_a_record_that_is_not_an_object_fails() -> None:
    for value in (None, [], "metrics", 3):
        with pytest.raises(RecordError, match=r"^is not a JSON object$"):
            check_finetune_log(value)
