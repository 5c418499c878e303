"""The cost of a new strategy: one module, registered, and finetune and compare run it.

The toy strategy below ("SGD at a fixed rate", ``sgd-fixed``) is declared
here and nowhere else: its entry, its option, its runner. Nothing in hfft
names it, yet the command line runs it under the same budget, evaluation
points, data pipeline and paired seeds as every other strategy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.limits import POSITIVE
from hfft.experiment.records import SGDStepEntry
from hfft.experiment.strategies.options import Option
from hfft.experiment.strategies.registry import (
    RunnerContext,
    Strategy,
    StrategyEntry,
    register,
    unregister,
)
from hfft.experiment.strategies.runners import SampledRunner
from hfft.models import param_groups

runner = CliRunner()


class FixedRateRunner(SampledRunner):
    """Plain SGD (no momentum) at the strategy's ``rate``, on SGD's seeded batches."""

    def __init__(self, strategy: Strategy, context: RunnerContext) -> None:
        s = context.settings
        super().__init__(context.model, context.splits, s.loss_fn, s.batch_size or 32, s.seed)
        self.rate = float(strategy.get("rate"))
        groups = param_groups(context.model, s.weight_decay)
        self.opt = torch.optim.SGD(groups, lr=self.rate)

    def step(self, fraction: float) -> SGDStepEntry:
        loss = self.update(self.opt)
        return {"step": self.count, "fraction": fraction, "lr": self.rate, "loss": loss}

    def settings(self) -> dict[str, float]:
        return {"lr": self.rate}


FIXED = StrategyEntry(
    "sgd-fixed",
    "SGD at a fixed rate",
    {"rate": Option(float, "the learning rate", range=POSITIVE, default=0.01)},
    build=FixedRateRunner,
    example="sgd-fixed:rate=0.05",
)


@pytest.fixture
def fixed() -> Iterator[StrategyEntry]:
    register(FIXED)
    try:
        yield FIXED
    finally:
        unregister(FIXED.name)


@pytest.mark.slow
def test_a_strategy_declared_in_one_module_runs_in_finetune_and_compare(
    trained_run: Path, tmp_path: Path, fixed: StrategyEntry
) -> None:
    ckpt = str(trained_run / "ckpt-02.safetensors")
    out = tmp_path / "ft"
    argv = ["finetune", ckpt, "--strategy", "sgd-fixed:rate=0.05", "--budget", "6steps"]
    done = runner.invoke(app, [*argv, "--eval-points", "3", "--out", str(out), "-q"])
    assert done.exit_code == 0, done.output
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "completed" and log["strategy"] == "sgd-fixed:rate=0.05"
    assert [s["lr"] for s in log["steps"]] == [0.05] * 6
    assert [e["step"] for e in log["evaluations"]] == [0, 2, 4, 6]
    assert (out / "final.safetensors").is_file()

    argv = ["compare", ckpt, "-s", "sgd", "-s", "sgd-fixed", "--seeds", "2", "--budget", "4steps"]
    done = runner.invoke(app, [*argv, "--eval-points", "2", "--out", str(tmp_path / "cmp"), "-q"])
    assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert summary["strategies"] == ["sgd", "sgd-fixed"]
    ranked = {r["strategy"] for r in summary["checkpoints"][0]["rankings"]["test_accuracy"]}
    assert ranked == {"sgd", "sgd-fixed"}
    fixed_runs = [r for r in summary["runs"] if r["strategy"] == "sgd-fixed"]
    assert sorted(r["seed"] for r in fixed_runs) == [0, 1]
    assert all(r["status"] == "completed" for r in fixed_runs)


def test_a_new_strategy_is_checked_like_the_built_in_ones(fixed: StrategyEntry) -> None:
    from hfft.experiment.strategies.registry import parse_strategy

    assert parse_strategy("SGD-Fixed").get("rate") == 0.01  # the declared default
    with pytest.raises(
        ValueError, match="option rate of strategy 'sgd-fixed' must be a number > 0"
    ):
        parse_strategy("sgd-fixed:rate=-1")
    with pytest.raises(ValueError, match="accepted options are rate"):
        parse_strategy("sgd-fixed:lr=1")
    with pytest.raises(ValueError, match="registered already"):
        register(FIXED)


def test_an_unregistered_strategy_is_unknown() -> None:
    from hfft.experiment.strategies.registry import parse_strategy

    with pytest.raises(ValueError, match="unknown strategy 'sgd-fixed'; use one of sgd, "):
        parse_strategy("sgd-fixed")
