"""The robust training time: a slow spell during training does not multiply ``N%`` budgets."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.run import train as train_module
from hfft.experiment.run.budget import robust_training_seconds
from hfft.experiment.run.train import BUDGET_TIME, TrainConfig, finished_run, train

runner = CliRunner()

SLOW_EPOCH, SPELL = 3, 30.0
"""The epoch the fake clock slows, and by how many seconds."""


@pytest.mark.parametrize(
    ("epoch_seconds", "expected"),
    [
        ([2.0], 2.0),
        ([1.0, 1.0, 1.0], 3.0),
        ([1.0, 2.0, 100.0], 6.0),
        ([1.0, 2.0, 3.0, 4.0], 10.0),  # an even count: the mean of the middle two
        ([0.1] * 9 + [50.0], 1.0),
        ([0.0, 0.0, 7.0], 0.0),
    ],
    ids=["one", "steady", "one-slow", "even", "spell", "zeros"],
)
def test_robust_training_seconds_is_the_median_epoch_times_the_epochs(
    epoch_seconds: list[float], expected: float
) -> None:
    assert robust_training_seconds(epoch_seconds) == pytest.approx(expected)


@pytest.mark.parametrize(
    "epoch_seconds",
    [[], [1.0, math.nan], [1.0, -1.0], [math.inf]],
    ids=["none", "nan", "neg", "inf"],
)
def test_robust_training_seconds_refuses_what_is_no_time(epoch_seconds: list[float]) -> None:
    with pytest.raises(ValueError, match="epoch"):
        robust_training_seconds(epoch_seconds)


def _config(out: Path) -> TrainConfig:
    return TrainConfig(
        model="mlp",
        data="digits",
        out=str(out),
        epochs=5,
        lr=0.05,
        batch_size=64,
        momentum=0.0,
        weight_decay=0.0,
        checkpoints=1,
        seed=2,
        model_args={"width": 8},
    )


@pytest.fixture(scope="module")
def slowed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training whose epoch 3 took 30 s longer, by a clock that jumps inside it."""
    out = tmp_path_factory.mktemp("slowed") / "run"
    calls = {"n": 0}

    def clock(cuda: bool) -> float:
        # two readings per epoch (start, end): the end of epoch 3 is the 6th
        calls["n"] += 1
        return time.perf_counter() + (SPELL if calls["n"] >= 2 * SLOW_EPOCH else 0.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "synced_time", clock)
        result = train(_config(out))
    assert result.status == "completed" and calls["n"] == 10
    return out


def test_a_slow_epoch_is_recorded_and_left_out_of_the_robust_time(slowed_run: Path) -> None:
    manifest = json.loads((slowed_run / "run.json").read_text())
    epoch_seconds = [e["epoch_seconds"] for e in manifest["epochs"]]
    assert len(epoch_seconds) == 5 and epoch_seconds[SLOW_EPOCH - 1] > SPELL
    assert manifest["train_seconds"] == pytest.approx(sum(epoch_seconds))
    assert manifest["train_seconds"] > SPELL
    assert manifest["robust_train_seconds"] == pytest.approx(5 * statistics.median(epoch_seconds))
    assert manifest["robust_train_seconds"] < 5 * max(epoch_seconds[:2] + epoch_seconds[3:]) < 5
    assert manifest["budget_time"] == BUDGET_TIME == "robust_train_seconds"
    kept = finished_run(slowed_run, _config(slowed_run))
    assert kept is not None and kept.robust_train_seconds == manifest["robust_train_seconds"]
    assert "epoch_seconds" not in kept.final_metrics


def _finetune(ckpt: Path, out: Path, *more: str):
    argv = ["finetune", str(ckpt), "--strategy", "sgd", "--eval-points", "1", "--quiet"]
    return runner.invoke(app, [*argv, "--out", str(out), *more])


def _limit(out: Path) -> float:
    return float(json.loads((out / "metrics.json").read_text())["budget"]["limit"])


def test_a_percent_budget_takes_the_robust_time_and_says_so(
    slowed_run: Path, tmp_path: Path
) -> None:
    manifest = json.loads((slowed_run / "run.json").read_text())
    robust = manifest["robust_train_seconds"]
    result = _finetune(slowed_run / "ckpt-01.safetensors", tmp_path / "ft", "--budget", "10%")
    assert result.exit_code == 0, result.output
    assert _limit(tmp_path / "ft") == pytest.approx(0.1 * robust)
    said = " ".join(result.stderr.split())
    assert f"hfft: note: budget 10%: {0.1 * robust:.3g} s, 10% of the training's " in said
    assert "its median epoch × 5 epochs (robust_train_seconds;" in said
    assert f"its clock said {manifest['train_seconds']:.3g} s)" in said


def test_an_older_run_json_gives_its_raw_time_and_says_so(slowed_run: Path, tmp_path: Path) -> None:
    old = Path(shutil.copytree(slowed_run, tmp_path / "old"))
    manifest = json.loads((old / "run.json").read_text())
    for name in ("robust_train_seconds", "budget_time"):
        del manifest[name]
    for entry in manifest["epochs"]:
        del entry["epoch_seconds"]
    (old / "run.json").write_text(json.dumps(manifest))
    assert finished_run(old, _config(old)) is not None  # still a finished training
    result = _finetune(old / "ckpt-01.safetensors", tmp_path / "ft", "--budget", "1%")
    assert result.exit_code == 0, result.output
    assert _limit(tmp_path / "ft") == pytest.approx(0.01 * manifest["train_seconds"])
    said = " ".join(result.stderr.split())
    assert "by its clock (train_seconds: its run.json, written before hfft recorded " in said
    assert "robust_train_seconds, cannot tell a slow spell of the machine" in said


def test_a_given_training_time_is_named_in_the_note(slowed_run: Path, tmp_path: Path) -> None:
    ckpt = slowed_run / "ckpt-01.safetensors"
    result = _finetune(ckpt, tmp_path / "ft", "--budget", "10%", "--train-time", "0.5s")
    assert result.exit_code == 0, result.output
    assert _limit(tmp_path / "ft") == pytest.approx(0.05)
    assert "hfft: note: budget 10%: 0.05 s, 10% of the 0.5 s of --train-time" in result.stderr


def test_other_budgets_print_no_time_note(slowed_run: Path, tmp_path: Path) -> None:
    result = _finetune(slowed_run / "ckpt-01.safetensors", tmp_path / "ft", "--budget", "3steps")
    assert result.exit_code == 0, result.output
    assert "budget" not in result.stderr


@pytest.mark.parametrize("robust", [-1.0, "fast", 1e300], ids=["negative", "string", "1e300"])
def test_a_recorded_robust_time_is_checked(
    slowed_run: Path, tmp_path: Path, robust: object
) -> None:
    edited = Path(shutil.copytree(slowed_run, tmp_path / "edited"))
    manifest = json.loads((edited / "run.json").read_text())
    (edited / "run.json").write_text(json.dumps({**manifest, "robust_train_seconds": robust}))
    result = _finetune(edited / "ckpt-01.safetensors", tmp_path / "ft", "--budget", "10%")
    assert result.exit_code == 2, result.output
    assert "robust_train_seconds in" in result.output and "pass --train-time" in result.output
    assert not (tmp_path / "ft").exists()
