"""SGD training: checkpoints, manifest, clock, interruption, the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.data.factories import build_model
from hfft.experiment.run.checkpoint import apply_state_dict, load_checkpoint
from hfft.experiment.run.train import TrainConfig, checkpoint_epochs, train

runner = CliRunner()


@pytest.mark.parametrize(
    ("epochs", "count", "expected"),
    [
        (100, 10, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),
        (5, 10, [1, 2, 3, 4, 5]),
        (7, 3, [2, 5, 7]),
        (1, 1, [1]),
    ],
    ids=["100/10", "more-ckpts-than-epochs", "7/3", "1/1"],
)
def test_checkpoint_epochs(epochs: int, count: int, expected: list[int]) -> None:
    assert checkpoint_epochs(epochs, count) == expected


def config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        model="mlp",
        data="digits",
        out=str(tmp_path / "run"),
        epochs=4,
        lr=0.05,
        batch_size=64,
        momentum=0.9,
        weight_decay=1e-4,
        checkpoints=2,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def test_training_writes_checkpoints_and_manifest(tmp_path: Path) -> None:
    result = train(config(tmp_path))
    assert result.status == "completed"
    manifest = json.loads(result.manifest.read_text())
    assert manifest["status"] == "completed"
    assert [c["epoch"] for c in manifest["checkpoints"]] == [2, 4]
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2, 3, 4]
    # the clock: the last checkpoint is at the end of training
    assert manifest["train_seconds"] == manifest["checkpoints"][-1]["elapsed_seconds"] > 0
    elapsed = [e["elapsed_seconds"] for e in manifest["epochs"]]
    assert elapsed == sorted(elapsed)
    assert manifest["epochs"][-1]["test_accuracy"] > 0.8
    ckpt = load_checkpoint(result.checkpoints[-1])
    meta = ckpt.metadata
    assert meta is not None
    assert (meta["model"], meta["data"], meta["epoch"], meta["data_seed"]) == (
        "mlp",
        "digits",
        4,
        3,
    )
    assert meta["elapsed_seconds"] == manifest["train_seconds"]
    assert meta["lr"] == 0.05 and meta["batch_size"] == 64
    model = build_model("mlp", {}, {"num_classes": 10, "in_channels": 1, "input_size": 8})
    apply_state_dict(model, ckpt.state_dict)
    assert set(safetensors.torch.load_file(result.checkpoints[0])) == set(model.state_dict())


def test_interrupted_training_keeps_valid_checkpoints(tmp_path: Path) -> None:
    def stop_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, epochs=4, checkpoints=4), on_epoch=stop_after_two)
    run = tmp_path / "run"
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [c["epoch"] for c in manifest["checkpoints"]] == [1, 2]
    for c in manifest["checkpoints"]:
        assert load_checkpoint(run / c["path"]).metadata["epoch"] == c["epoch"]
    assert not [p for p in run.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"weight_decay": -1.0}],
    ids=["epochs", "lr", "batch", "wd"],
)
def test_config_validation(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        config(tmp_path, **kwargs)


def test_cli_train_quiet(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "train",
            "mlp",
            "--data",
            "digits",
            "--epochs",
            "2",
            "--checkpoints",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "ckpt-01.safetensors",
        "ckpt-02.safetensors",
        "evaluations.csv",
        "run.json",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "resnet9000"], "unknown model"),
        (["train", "mlp", "--data", "imagenet"], "imagenet"),
        (["train", "mlp", "--device", "cuda:0"], "CUDA is not available"),
        (["train", "mlp", "--model-arg", "width"], "width"),
        (["train", "mlp", "--model-arg", "depthh=3"], "depthh"),
        (["train", "x.py:make"], "needs --data"),
    ],
    ids=["model", "data", "device", "malformed-arg", "unknown-arg", "own-model"],
)
def test_cli_train_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    out = tmp_path / "new" / "o"
    result = runner.invoke(app, [*argv, "--out", str(out), "--quiet", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "new").exists()  # a run that did not start leaves nothing behind


def test_cli_train_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    result = runner.invoke(app, ["train", "mlp", "--out", str(f), "--quiet"])
    assert result.exit_code == 2
    assert "not a directory" in result.output


def test_cli_train_interrupt_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hfft.experiment.run.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hfft.experiment.run.train, "train", interrupted)
    result = runner.invoke(app, ["train", "mlp", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 130
    assert "interrupted; nothing was written" in result.output


def test_another_runs_folder_needs_overwrite(tmp_path: Path) -> None:
    first = train(config(tmp_path, epochs=2, checkpoints=2))
    assert len(first.checkpoints) == 2
    # a rerun of the same configuration replaces its own files
    train(config(tmp_path, epochs=2, checkpoints=2))
    with pytest.raises(ValueError, match="holds another run's files"):
        train(config(tmp_path, epochs=1, checkpoints=1))
    run = tmp_path / "run"
    assert len(json.loads((run / "run.json").read_text())["checkpoints"]) == 2
    # --overwrite clears the old run first: no ckpt-02 of the old run stays beside the new
    train(config(tmp_path, epochs=1, checkpoints=1, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == [
        "ckpt-01.safetensors",
        "evaluations.csv",
        "run.json",
    ]


def test_an_interrupt_names_what_was_saved(tmp_path: Path) -> None:
    from hfft.experiment.interrupts import Interrupted

    def stop_after_one(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"1 checkpoint and run.json are saved in .*interrupted"):
        train(config(tmp_path, epochs=2, checkpoints=2), on_epoch=stop_after_one)


# --- a training that did not finish says so, and its time is no budget ---

SMALL = ["train", "mlp", "--data", "digits", "--device", "cpu", "--quiet"]


def _finetune_ten_percent(ckpt: Path, *more: str):
    out = ckpt.parent.parent / f"ft-{ckpt.parent.name}"
    argv = ["finetune", str(ckpt), "--budget", "10%", "--strategy", "sgd", "--out", str(out)]
    return runner.invoke(app, [*argv, *more, "--quiet"])


@pytest.mark.slow
def test_a_killed_training_is_no_budget(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "hfft", *SMALL, "--epochs", "500", "--checkpoints", "500"]
    proc = subprocess.Popen([*argv, "--out", str(out)])
    deadline = time.time() + 120
    while not (out / "ckpt-02.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    refused = _finetune_ten_percent(out / "ckpt-01.safetensors")
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip() == (
        f"hfft: error: the training in {out} did not finish (its run.json says 'running'); "
        "rerun it or pass --train-time."
    )
    given = _finetune_ten_percent(out / "ckpt-01.safetensors", "--train-time", "2s")
    assert given.exit_code == 0, given.output


@pytest.mark.parametrize("also_the_manifest", [False, True], ids=["checkpoint", "everything"])
def test_a_full_disk_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, also_the_manifest: bool
) -> None:
    import errno
    import os

    real_fsync, full = os.fsync, []

    def fsync(fd: int) -> None:  # the disk fills up while ckpt-02 is written
        if ".hfft.ckpt-02" in os.readlink(f"/proc/self/fd/{fd}") or (full and also_the_manifest):
            full.append(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    result = runner.invoke(app, [*SMALL, "--epochs", "2", "--checkpoints", "2", "--out", str(out)])
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"hfft: error: No space left on device: {out / 'ckpt-02.safetensors'}."
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "ckpt-01.safetensors",
        "evaluations.csv",
        "run.json",
    ]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == ("running" if also_the_manifest else "failed")
    assert [c["path"] for c in manifest["checkpoints"]] == ["ckpt-01.safetensors"]
    load_checkpoint(out / "ckpt-01.safetensors")  # whole
    refused = _finetune_ten_percent(out / "ckpt-01.safetensors")
    assert refused.exit_code == 2 and "did not finish" in refused.output


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (1e300, "must be a positive number of seconds, at most a year"),
        (-5.0, "must be a positive number of seconds, at most a year"),
        ("ten", "must be a positive number of seconds, at most a year"),
        (None, "records no train_seconds"),
    ],
    ids=["1e300", "negative", "string", "missing"],
)
def test_a_recorded_training_time_is_checked(
    trained_run: Path, tmp_path: Path, seconds: object, message: str
) -> None:
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    manifest = json.loads((run / "run.json").read_text())
    manifest["train_seconds"] = seconds
    (run / "run.json").write_text(json.dumps(manifest))
    result = _finetune_ten_percent(run / "ckpt-02.safetensors")
    assert result.exit_code == 2, result.output
    assert message in result.output and "pass --train-time" in result.output
    assert "Traceback" not in result.output


def test_a_diverging_training_stops_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [*SMALL, "--epochs", "3", "--checkpoints", "3", "--lr", "1e38", "--out", str(out)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert result.output.strip().startswith("hfft: error: training diverged in epoch 1")
    assert "no checkpoint was written" in result.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "diverged" and manifest["checkpoints"] == []
    assert sorted(p.name for p in out.iterdir()) == ["evaluations.csv", "run.json"]


NAN_LATER = """
import torch
from torch import nn


class NanLater(nn.Module):
    \"\"\"A classifier whose training steps turn NaN in its second epoch.\"\"\"

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        self.calls = 0

    def forward(self, x):
        self.calls += self.training
        out = self.body(x)
        return out * float("nan") if self.calls > 25 else out


def build(num_classes=10):
    return NanLater(num_classes)


def nan_at_start(num_classes=10):
    model = NanLater(num_classes)
    with torch.no_grad():
        model.body[1].weight[0, 0] = float("inf")
    return model
"""


def test_a_training_that_diverges_later_keeps_the_checkpoints_before(tmp_path: Path) -> None:
    (tmp_path / "nan_later.py").write_text(NAN_LATER)
    out = tmp_path / "run"
    argv = ["train", f"{tmp_path / 'nan_later.py'}:build", "--data", "digits", "--epochs", "3"]
    argv += ["--checkpoints", "3", "--lr", "0.1", "--batch-size", "64", "--out", str(out)]
    result = runner.invoke(app, [*argv, "--device", "cpu", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "training diverged in epoch 2" in result.output
    assert "the checkpoint written before it is kept" in result.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "diverged"
    assert [c["epoch"] for c in manifest["checkpoints"]] == [1]
    assert sorted(p.name for p in out.iterdir()) == [
        "ckpt-01.safetensors",
        "evaluations.csv",
        "run.json",
    ]
    assert manifest["epochs"][0]["train_eval_loss"] is not None


def test_a_model_built_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nan_later.py").write_text(NAN_LATER)
    out = tmp_path / "new" / "run"
    argv = ["train", f"{tmp_path / 'nan_later.py'}:nan_at_start", "--data", "digits"]
    argv += ["--epochs", "1", "--lr", "0.1", "--batch-size", "64", "--out", str(out)]
    result = runner.invoke(app, [*argv, "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "has NaN or infinite values in body.1.weight before training" in result.output
    assert not (tmp_path / "new").exists()
