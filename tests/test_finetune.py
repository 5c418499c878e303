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

from hfft.cli import app
from hfft.experiment.interrupts import Interrupted
from hfft.experiment.run.checkpoint import load_checkpoint
from hfft.experiment.run.finetune import FinetuneConfig, finetune

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
        with safetensors.safe_open(result.out / f"{name}.safetensors", framework="pt") as f:
            assert f.metadata()["format"] == "pt"  # what from_pretrained requires


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
        total = json.loads((run_dir / "run.json").read_text())["robust_train_seconds"]
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
        checkpoint=str(ckpt), out=str(tmp_path / "ft"), strategy="sgd", budget="500steps"
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
        (["{ckpt}", "--strategy", "rmsprop"], "rmsprop"),
        (["{ckpt}", "--strategy", "hf:dampng=1"], "dampng"),
        (["{ckpt}", "--budget", "10 parsecs"], "10 parsecs"),
        (["{ckpt}", "--device", "cuda"], "CUDA is not available"),
        (["{ckpt}", "--data", "cifar10", "--data-root", "{tmp}/nodata"], "--download"),
        (["{ckpt}", "--strategy", "hf:m=5000"], "training samples"),
        (["{ckpt}", "--out", "{tmp}/file.txt"], "not a directory"),
        (["{ckpt}", "--out", "{tmp}/file.txt/sub"], "file.txt is a file, not a directory"),
        (["{ckpt}", "--lr", "1e39"], "--lr must be a positive number no larger than 3.4e38"),
        (["{ckpt}", "--eval-points", "100000000"], "--eval-points must be an integer from 1"),
        (["{ckpt}", "--momentum", "5"], "--momentum must be a number in [0, 1)"),
        (["{ckpt}", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["{ckpt}", "--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
        (["{ckpt}", "--seed", str(2**64)], "--seed must be an integer from 0 to 4294967295"),
        (["{ckpt}", "--eval-points", "0"], "Invalid value for '--eval-points'"),
        (["{ckpt}", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["{ckpt}", "--budget", "10"], "budget '10' has no unit; write 10%"),
        (["{ckpt}", "--strategy", "hf:m=99999999"], "must hold 1 to 1292 of the 1293 training"),
        (["{nan}"], "NaN or infinite values in"),
        (["{ints}", "--model", "mlp", "--model-arg", "width=32"], "another kind than the model's"),
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
        "out-under-file",
        "lr",
        "eval-points-huge",
        "momentum",
        "weight-decay",
        "weight-decay-nan",
        "seed",
        "eval-points-0",
        "batch-size-0",
        "bare-budget",
        "hf-m-huge",
        "nan-weights",
        "int-weights",
    ],
)
def test_cli_bad_input(ckpt: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    state = load_checkpoint(ckpt).state_dict
    safetensors.torch.save_file(
        {k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()},
        tmp_path / "nan.safetensors",
        metadata={"hfft": json.dumps(load_checkpoint(ckpt).metadata)},
    )
    torch.save({k: v.to(torch.int32) for k, v in state.items()}, tmp_path / "ints.pt")
    fill = {
        "tmp": str(tmp_path),
        "ckpt": str(ckpt),
        "corrupt": str(_corrupt(tmp_path)),
        "nan": str(tmp_path / "nan.safetensors"),
        "ints": str(tmp_path / "ints.pt"),
    }
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
    assert len(result.output.strip().splitlines()) == 1, result.output  # one sentence
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
    deadline = time.time() + 60  # the run writes into a staging folder until it ends
    while not list(tmp_path.glob(".term.staging-*/best.safetensors")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"hfft: terminated; what was finished is saved in {out} and marked interrupted" in err
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "interrupted"
    assert log["steps"]


# --- what an interrupt leaves --------------------------------------------------------------


def _interrupt_inside_step(monkeypatch: pytest.MonkeyPatch, step: int, forward: int) -> list:
    """Make the runner raise KeyboardInterrupt in its ``forward``-th forward pass of step
    ``step``; returns the list that will hold the model's state at the start of each step."""
    import hfft.experiment.run.finetune

    real = hfft.experiment.run.finetune.make_runner
    starts: list = []

    def make(strategy, model, *args, **kwargs):
        made = real(strategy, model, *args, **kwargs)
        count = {"step": 0, "forward": 0, "inside": False}

        def hook(module, inputs, output) -> None:
            if count["inside"] and count["step"] == step:
                count["forward"] += 1
                if count["forward"] == forward:
                    raise KeyboardInterrupt

        model.register_forward_hook(hook)
        inner = made.step

        def step_(fraction: float):
            if count["step"] >= step:
                raise AssertionError("the interrupt never came")
            count["step"] += 1
            starts.append({k: v.clone() for k, v in model.state_dict().items()})
            count["inside"] = True  # forwards of evaluations do not count
            try:
                return inner(fraction)
            finally:
                count["inside"] = False

        made.step = step_
        return made

    monkeypatch.setattr(hfft.experiment.run.finetune, "make_runner", make)
    return starts


def _reevaluate(path: Path) -> dict:
    from hfft.experiment.run.evaluation import evaluate_splits
    from hfft.experiment.run.starting_point import load_starting_point

    src = load_starting_point(path)
    return evaluate_splits(src.model, src.splits, src.task, src.task.loss())


@pytest.mark.parametrize(
    ("strategy", "step", "forward"),
    [
        ("sgd", 2, 1),
        ("sgd-cosine", 2, 1),
        ("hf:m=256,cg_max_iter=20,lr=1000,linesearch_beta=0.99,linesearch_max_tries=200", 2, 6),
        ("auto:m=256,first=0,hf_cg_max_iter=20,hf_lr=1000,hf_linesearch_beta=0.99", 1, 6),
    ],
    ids=["sgd", "sgd-cosine", "hf-line-search", "auto-probe"],
)
def test_an_interrupt_inside_a_step_saves_the_last_accepted_weights(
    ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    step: int,
    forward: int,
) -> None:
    starts = _interrupt_inside_step(monkeypatch, step=step, forward=forward)
    out = tmp_path / "ft"
    cfg = FinetuneConfig(
        checkpoint=str(ckpt), out=str(out), strategy=strategy, budget="40steps", eval_batch_size=256
    )
    with pytest.raises(Interrupted, match=r"saved in .* and marked interrupted"):
        finetune(cfg)
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "interrupted" and len(log["steps"]) == step - 1
    saved = load_checkpoint(out / "final.safetensors").state_dict
    assert all(torch.equal(saved[k], v) for k, v in starts[step - 1].items())
    # "final" describes the weights in final.safetensors, in metrics.json and in its header
    assert log["final"]["step"] == step - 1
    measured = _reevaluate(out / "final.safetensors")
    for key, value in measured.items():
        assert log["final"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    header = load_checkpoint(out / "final.safetensors").metadata
    assert header["step"] == step - 1 and header["valid_accuracy"] == log["final"]["valid_accuracy"]


def test_an_sgd_update_cut_short_is_undone(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the interrupt arrives after SGD wrote its update but before the step returned
    real = torch.optim.SGD.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    out = tmp_path / "ft"
    cfg = FinetuneConfig(checkpoint=str(ckpt), out=str(out), strategy="sgd", budget="500steps")
    with pytest.raises(Interrupted):
        finetune(cfg)
    log = json.loads((out / "metrics.json").read_text())
    assert len(log["steps"]) == 2 and log["final"]["step"] == 2
    measured = _reevaluate(out / "final.safetensors")
    assert log["final"]["train_eval_loss"] == pytest.approx(measured["train_eval_loss"], rel=1e-6)


def test_a_second_interrupt_while_saving_waits_for_the_files(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hfft.experiment.run.finetune as ft

    real = ft.atomic_write_json

    def write(path, obj):  # Ctrl-C again, right while metrics.json is written
        os.kill(os.getpid(), signal.SIGINT)
        real(path, obj)

    monkeypatch.setattr(ft, "atomic_write_json", write)
    calls = {"n": 0}

    def stop(fraction: float, info: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    out = tmp_path / "ft"
    cfg = FinetuneConfig(checkpoint=str(ckpt), out=str(out), strategy="sgd", budget="500steps")
    with pytest.raises(Interrupted):
        finetune(cfg, on_progress=stop)
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "interrupted"
    assert set(log["files"]) == {"final.safetensors", "best.safetensors", "evaluations.csv"}


def test_an_interrupt_at_start_up_writes_nothing_and_says_so(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hfft.experiment.run.starting_point

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hfft.experiment.run.starting_point, "load_starting_point", interrupted)
    out = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", str(ckpt), "--budget", "3steps", "--out", str(out)])
    assert result.exit_code == 130
    assert "interrupted; nothing was written" in result.output
    assert not out.exists()


def test_divergence_keeps_the_last_weights_with_a_finite_loss(ckpt: Path, tmp_path: Path) -> None:
    result, log = run(ckpt, tmp_path, strategy="sgd:lr=1e4", budget="50steps", eval_points=2)
    assert log["status"] == "diverged"
    losses = [s["loss"] for s in log["steps"]]
    assert losses[-1] is None and all(v is not None for v in losses[:-1])
    measured = _reevaluate(result.out / "final.safetensors")
    assert math.isfinite(measured["train_eval_loss"])
    assert log["final"]["train_eval_loss"] == pytest.approx(measured["train_eval_loss"], rel=1e-6)
    assert all(math.isfinite(log["best"][k]) for k in log["best"] if k.endswith("_loss"))


def test_files_are_strict_json(ckpt: Path, tmp_path: Path) -> None:
    def no_constants(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    result, _ = run(ckpt, tmp_path, strategy="sgd:lr=1e8", budget="50steps", eval_points=2)
    json.loads(result.metrics_path.read_text(), parse_constant=no_constants)
    cli = runner.invoke(
        app,
        [
            *("finetune", str(ckpt), "--strategy", "sgd:lr=1e8", "--budget", "50steps"),
            *("--json", "--out", str(tmp_path / "j")),
        ],
    )
    assert cli.exit_code == 0, cli.output
    summary = json.loads(cli.output, parse_constant=no_constants)
    assert summary["status"] == "diverged"


def test_the_summary_lists_only_files_that_exist(ckpt: Path, tmp_path: Path) -> None:
    # weights so large that every loss overflows: no evaluation can be "best"
    state = load_checkpoint(ckpt).state_dict
    big = {k: v * 1e30 if v.is_floating_point() else v for k, v in state.items()}
    pt = tmp_path / "big.pt"
    torch.save(big, pt)
    args = ["finetune", str(pt), "--model", "mlp", "--model-arg", "width=32", "--data", "digits"]
    args += ["--lr", "0.01", "--batch-size", "32", "--budget", "3steps", "--strategy", "sgd"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert "best.safetensors" not in files
    text = " ".join(result.output.split())
    assert f"outputs in {tmp_path / 'o'}: final.safetensors, evaluations.csv, metrics.json" in text
    assert "no best.safetensors: no evaluation had finite losses" in text


# --- one run per output folder -------------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused(ckpt: Path, tmp_path: Path) -> None:
    from hfft.experiment.run.run_folder import locked_folder

    out = tmp_path / "ft"
    with locked_folder(out):  # another run holds the folder
        result = runner.invoke(
            app, ["finetune", str(ckpt), "--budget", "3steps", "--out", str(out)]
        )
    assert result.exit_code == 2
    assert (
        result.output.strip() == f"hfft: error: another hfft run is writing to {out}; wait "
        "for it to end or choose another --out."
    )


def test_another_runs_folder_needs_overwrite(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    base = ["finetune", str(ckpt), "--budget", "3steps", "--out", str(out), "--quiet"]
    assert runner.invoke(app, [*base, "--strategy", "sgd"]).exit_code == 0
    first = json.loads((out / "metrics.json").read_text())
    # the same configuration again: its own files are replaced
    assert runner.invoke(app, [*base, "--strategy", "sgd"]).exit_code == 0
    refused = runner.invoke(app, [*base, "--strategy", "sgd-div10"])
    assert refused.exit_code == 2 and "holds another run's files" in refused.output
    assert "--overwrite" in refused.output
    assert json.loads((out / "metrics.json").read_text())["strategy"] == first["strategy"]
    replaced = runner.invoke(app, [*base, "--strategy", "sgd-div10", "--overwrite"])
    assert replaced.exit_code == 0
    log = json.loads((out / "metrics.json").read_text())
    assert log["strategy"] == "sgd-div10"
    for name in ("final.safetensors", "best.safetensors"):
        assert load_checkpoint(out / name).metadata["strategy"] == "sgd-div10"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no staging left


@pytest.mark.slow
def test_a_killed_rerun_leaves_the_old_run_whole(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    base = [sys.executable, "-m", "hfft", "finetune", str(ckpt), "--quiet", "--out", str(out)]
    done = subprocess.run([*base, "--strategy", "sgd", "--budget", "3steps"], check=True)
    assert done.returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.Popen([*base, "--strategy", "sgd-div10", "--budget", "1h", "--overwrite"])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".ft.staging-*/best.safetensors")) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # never a mix
    # the next run on the folder removes what the killed one left
    again = subprocess.run([*base, "--strategy", "sgd", "--budget", "3steps"], check=True)
    assert again.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


def test_a_full_disk_is_one_sentence(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import hfft._io

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(hfft._io, "atomic_write_bytes", full)
    out = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", str(ckpt), "--budget", "3steps", "--out", str(out)])
    assert result.exit_code == 2
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.01, 0.04])
def test_a_second_ctrl_c_never_costs_the_files(ckpt: Path, tmp_path: Path, gap: float) -> None:
    # the second signal lands in the clean-up (restoring, evaluating, writing, swapping)
    out = tmp_path / "ft"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hfft", "finetune", str(ckpt), "--strategy", "sgd"),
            *("--budget", "1h", "--quiet", "--device", "cpu", "--out", str(out)),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".ft.staging-*/best.safetensors")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"saved in {out} and marked interrupted" in err
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    assert (out / "final.safetensors").exists()
