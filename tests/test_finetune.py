"""hfft finetune: every strategy and budget kind end to end on digits, outputs, failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from typer.testing import CliRunner

from hfft.checkpoint import load_checkpoint
from hfft.cli import app
from hfft.finetune import FinetuneConfig, finetune

runner = CliRunner()
HF_SMALL = "hf:m=256,cg_max_iter=20"


@pytest.fixture(scope="module")
def run_dir(trained_run: Path) -> Path:
    return trained_run


@pytest.fixture(scope="module")
def ckpt(run_dir: Path) -> Path:
    return run_dir / "ckpt-02.safetensors"


def run(ckpt: Path, tmp_path: Path, **kw) -> tuple:
    out = tmp_path / f"ft-{len(list(tmp_path.glob('ft-*')))}"  # one folder per run
    cfg = FinetuneConfig(checkpoint=str(ckpt), out=str(out), eval_batch_size=256, **kw)
    result = finetune(cfg)
    return result, json.loads(result.metrics_path.read_text())


@pytest.mark.parametrize(
    ("strategy", "budget", "steps"),
    [
        ("sgd", "12steps", 12),
        ("sgd-div10", "12steps", 12),
        ("sgd-cosine", "12steps", 12),
        ("sgd-plateau", "12steps", 12),
        (HF_SMALL, "3steps", 3),
    ],
    ids=["sgd", "sgd-div10", "sgd-cosine", "sgd-plateau", "hf"],
)
def test_every_strategy_runs_and_writes_outputs(
    ckpt: Path, tmp_path: Path, strategy: str, budget: str, steps: int
) -> None:
    result, log = run(ckpt, tmp_path, strategy=strategy, budget=budget, eval_points=4)
    assert result.status == log["status"] == "completed"
    assert result.steps == len(log["steps"]) == steps
    assert log["schema_version"] == 1
    assert (
        log["source"]["sha256"] == log["source"]["sha256"].lower()
        and len(log["source"]["sha256"]) == 64
    )
    assert {"torch", "hfft"} <= set(log["versions"])
    fractions = [e["fraction"] for e in log["evaluations"]]
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions)
    for key in ("train_eval_loss", "valid_accuracy", "test_accuracy", "seconds", "step"):
        assert key in log["evaluations"][-1]
    # best is selected on validation accuracy, never on test
    assert log["best"]["valid_accuracy"] == max(e["valid_accuracy"] for e in log["evaluations"])
    for name in ("final", "best"):
        tensors = safetensors.torch.load_file(result.out / f"{name}.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
        meta = load_checkpoint(result.out / f"{name}.safetensors").metadata
        assert meta["model"] == "mlp" and meta["strategy"] == log["strategy"]


def test_sgd_schedules_follow_the_budget_fraction(ckpt: Path, tmp_path: Path) -> None:
    _, log = run(ckpt, tmp_path, strategy="sgd-cosine", budget="20steps", eval_points=2)
    lrs = [s["lr"] for s in log["steps"]]
    assert lrs[0] == pytest.approx(0.05)  # the checkpoint's training learning rate
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * 0.05
    _, log = run(ckpt, tmp_path, strategy="sgd-div10", budget="3steps", eval_points=2)
    assert [s["lr"] for s in log["steps"]] == pytest.approx([0.005] * 3)


def test_hf_steps_are_logged_with_every_decision(ckpt: Path, tmp_path: Path) -> None:
    _, log = run(ckpt, tmp_path, strategy=HF_SMALL, budget="2steps", eval_points=2)
    step = log["steps"][0]
    for key in (
        "loss_before",
        "loss_after",
        "damping",
        "rho",
        "cg_iterations",
        "cg_stop_reason",
        "cg_chosen_iterate",
        "alpha",
        "accepted",
        "time_gradient",
        "time_cg",
        "time_eval",
    ):
        assert key in step
    assert "damping" in log["evaluations"][0]


@pytest.mark.parametrize(
    ("budget", "kind"),
    [("10%", "seconds"), ("0.3s", "seconds"), ("0.5epochs", "epochs")],
    ids=["percent", "seconds", "epochs"],
)
def test_budget_kinds(ckpt: Path, run_dir: Path, tmp_path: Path, budget: str, kind: str) -> None:
    result, log = run(ckpt, tmp_path, strategy="sgd", budget=budget, eval_points=3)
    assert log["budget"]["kind"] == kind
    if budget == "10%":
        total = json.loads((run_dir / "run.json").read_text())["train_seconds"]
        assert log["budget"]["limit"] == pytest.approx(0.1 * total)
    assert result.fraction >= 1.0
    if kind == "epochs":
        n_train = 1293
        assert result.steps == math.ceil(0.5 * n_train / 64)


def test_interrupt_writes_what_exists(ckpt: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop(fraction: float, info: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    cfg = FinetuneConfig(
        checkpoint=str(ckpt), out=str(tmp_path / "ft"), strategy="sgd", budget="1h"
    )
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, on_progress=stop)
    log = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert log["status"] == "interrupted"
    assert (tmp_path / "ft" / "final.safetensors").exists()
    assert (tmp_path / "ft" / "best.safetensors").exists()


def test_divergence_stops_without_nan_weights(ckpt: Path, tmp_path: Path) -> None:
    result, log = run(ckpt, tmp_path, strategy="sgd:lr=1e8", budget="50steps", eval_points=2)
    assert result.status == log["status"] == "diverged"
    assert log["steps"][-1]["loss"] is None  # strict JSON: a non-finite loss is null
    tensors = safetensors.torch.load_file(result.out / "best.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_foreign_state_dict_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    state = load_checkpoint(ckpt).state_dict
    pt = tmp_path / "plain.pt"
    torch.save(state, pt)
    base = [
        "finetune",
        str(pt),
        "--strategy",
        "sgd",
        "--quiet",
        "--device",
        "cpu",
        "--model",
        "mlp",
        "--model-arg",
        "width=32",
        "--data",
        "digits",
    ]
    result = runner.invoke(app, [*base, "--budget", "10%", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "--train-time" in result.output
    assert not (tmp_path / "a").exists()
    result = runner.invoke(
        app,
        [
            *base,
            "--budget",
            "5%",
            "--train-time",
            "4s",
            "--lr",
            "0.01",
            "--batch-size",
            "32",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code == 0, result.output
    log = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert log["budget"]["limit"] == pytest.approx(0.2)
    assert log["steps"][0]["lr"] == 0.01


def test_cli_json_summary(ckpt: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "finetune",
            str(ckpt),
            "--strategy",
            "sgd",
            "--budget",
            "3steps",
            "--json",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "j"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "completed" and summary["steps"] == 3


def _corrupt(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    return bad


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/missing.safetensors"], "missing.safetensors"),
        (["{corrupt}"], "bad.safetensors"),
        (["{ckpt}", "--model", "cnn"], "missing"),
        (["{ckpt}", "--strategy", "adam"], "adam"),
        (["{ckpt}", "--strategy", "hf:dampng=1"], "dampng"),
        (["{ckpt}", "--budget", "10 parsecs"], "10 parsecs"),
        (["{ckpt}", "--device", "cuda"], "CUDA is not available"),
        (["{ckpt}", "--data", "cifar10", "--data-root", "{tmp}/nodata"], "--download"),
        (["{ckpt}", "--strategy", "hf:m=5000"], "training samples"),
        (["{ckpt}", "--out", "{tmp}/file.txt"], "not a directory"),
    ],
    ids=[
        "missing",
        "corrupt",
        "mismatch",
        "strategy",
        "option",
        "budget",
        "device",
        "data",
        "too-big-m",
        "out-file",
    ],
)
def test_cli_bad_input(ckpt: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    fill = {"tmp": str(tmp_path), "ckpt": str(ckpt), "corrupt": str(_corrupt(tmp_path))}
    args = [a.format(**fill) for a in argv]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = runner.invoke(
        app,
        ["finetune", *args, "--budget", "3steps", "--quiet"]
        if "--budget" not in args
        else ["finetune", *args, "--quiet"],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "term"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hfft",
            "finetune",
            str(ckpt),
            "--strategy",
            "sgd",
            "--budget",
            "1h",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 60
    while not (out / "best.safetensors").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "interrupted"
    assert log["steps"]
