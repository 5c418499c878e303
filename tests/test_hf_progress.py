"""HF that makes no progress says so: the acceptance rule, the progress verdict and its
notes (summary, metrics.json, compare, report.md, selftest), and HF's sizes on small data.

The end-to-end case is a user's own overfit tabular project, as the README's "Your
own model" section describes it: scikit-learn's breast-cancer data standardised by
the user, a 64-wide MLP trained by the user's loop to a train loss of about 0.03.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from hfft.analysis.compare import default_strategies, hf_sizes, hf_sizes_note
from hfft.analysis.ranking import compare_summary
from hfft.analysis.report import report_markdown
from hfft.analysis.run_summary import RunSummary
from hfft.cli import app
from hfft.cli.render.summaries import ranking_table
from hfft.experiment.strategies.hf_progress import HFProgress, strategy_note
from hfft.optim.optimizer import _not_taken

runner = CliRunner()

PROJECT = """
import torch
from torch import nn
from sklearn.datasets import load_breast_cancer


def build():
    return nn.Sequential(
        nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )


def data():
    x, y = load_breast_cancer(return_X_y=True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = torch.tensor(x, dtype=torch.float32)[perm], torch.tensor(y)[perm]
    x = (x - x[:341].mean(0)) / x[:341].std(0)
    return (x[:341], y[:341]), (x[341:455], y[341:455]), (x[455:], y[455:])
"""


def _step(**fields: object) -> dict:
    base = dict(accepted=False, rho=-1.0, damping=1.0, loss_before=1.0, loss_after=1.0)
    return {**base, **fields}


# --- the acceptance rule ------------------------------------------------------------------


def _choice(alpha: float | None, loss_after: float, p: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(alpha=alpha, loss_after=loss_after, p=p)


@pytest.mark.parametrize(
    ("stop", "alpha", "loss_after", "step", "reason"),
    [
        ("non-finite", 1.0, 0.5, 1.0, "CG produced non-finite values"),
        ("residual", None, 0.5, 1.0, "no step size passed the line search"),
        ("residual", 1.0, 1.0, 1.0, "the step did not lower the loss on B̄"),
        ("residual", 1.0, math.nan, 1.0, "the step did not lower the loss on B̄"),
        ("residual", 1.0, 0.9, 1e-12, "the step was too small to change the weights"),
        ("residual", 1.0, 0.9, 1.0, None),
    ],
    ids=["non-finite CG", "no step size", "equal loss", "NaN loss", "vanishing step", "taken"],
)
def test_a_step_is_taken_only_when_it_changes_the_weights_and_lowers_the_loss(
    stop: str, alpha: float | None, loss_after: float, step: float, reason: str | None
) -> None:
    theta = torch.ones(3)
    choice = _choice(alpha, loss_after, torch.full((3,), step))
    result = SimpleNamespace(stop_reason=stop)
    new = None if alpha is None else theta + alpha * choice.p
    assert _not_taken({"use_linesearch": True}, result, choice, 1.0, theta, new) == reason
    # without the line search the step is taken as it is, even if the loss went up
    unsearched = _not_taken({"use_linesearch": False}, result, choice, 1.0, theta, new)
    assert unsearched == (None if reason and "lower the loss" in reason else reason) or (
        alpha is None and unsearched == "non-finite loss"
    )


# --- the verdict and its notes ------------------------------------------------------------


def test_progress_verdicts_and_notes() -> None:
    none = HFProgress(m=170, m_bar=171, n_train=341)
    for _ in range(10):
        none.observe(_step())
    entry = none.to_dict()
    assert (entry["verdict"], entry["steps"], entry["accepted"]) == ("none", 10, 0)
    assert entry["note"].startswith(
        "HF made no progress: none of its 10 steps was taken (median ρ on B̄ -1.00)."
    )
    assert "m is as large as the data allow" in entry["note"]
    # accepted steps whose total decrease is float noise are no progress either
    noise = HFProgress(m=64, m_bar=64, n_train=1000)
    noise.observe(_step(accepted=True, loss_after=1.0 - 1e-8))
    assert noise.verdict == "none" and "hf:m=256" in noise.to_dict()["note"]
    assert (
        "1 of 1 steps were taken, but together they lowered the loss on B̄ by less than 0.01 %"
        in (noise.to_dict()["note"])
    )
    assert HFProgress(m=64, m_bar=64, n_train=1000).to_dict()["note"] == (
        "HF took no step: the run ended before its first step did."
    )
    little = HFProgress(m=256, m_bar=1024, n_train=10_000)
    for k in range(10):
        little.observe(_step(accepted=k < 3, loss_after=0.9 if k < 3 else 1.0, rho=0.5))
    assert little.verdict == "little"
    assert little.to_dict()["note"].startswith(
        "HF made little progress: only 3 of 10 steps were taken (median ρ on B̄ 0.50)."
    )
    assert (
        "mostly did not lower the loss on B̄, a second batch of training data"
        in (little.to_dict()["note"])
    )
    made = HFProgress(m=256, m_bar=1024, n_train=10_000)
    for _ in range(4):
        made.observe(_step(accepted=True, loss_after=0.9, rho=0.8))
    assert made.verdict == "made" and made.to_dict()["note"] is None


def test_compare_notes_a_strategy_that_made_no_progress_in_most_seeds() -> None:
    poor = {"verdict": "none", "steps": 60, "accepted": 0, "median_rho": -0.8,
            "m": 256, "n_train": 1437}  # fmt: skip
    fine = {**poor, "verdict": "made", "accepted": 50, "steps": 55}
    note = strategy_note("hf:m=256", [poor, {**poor, "steps": 70}, fine])
    assert note is not None and note.startswith(
        "hf:m=256: HF made no progress in 2 of 3 seeds "
        "(0 of 60–70 steps taken, median ρ on B̄ -0.80)"
    )
    assert strategy_note("hf:m=256", [poor, fine, fine]) is None
    evaluation = {"fraction": 0.0, "step": 0, "seconds": 0.0, "test_accuracy": 0.9,
                  "test_loss": 0.3}  # fmt: skip
    later = {**evaluation, "fraction": 1.0, "step": 60, "seconds": 1.0}

    def metrics(strategy: str) -> dict:
        progress = {"hf_progress": poor} if strategy.startswith("hf") else {}
        return {"strategy": strategy, "status": "completed",
                "evaluations": [evaluation, later], **progress}  # fmt: skip

    runs = [
        RunSummary.from_metrics("ckpt", seed, metrics(strategy))
        for strategy in ("sgd", "hf:m=256")
        for seed in range(2)
    ]
    summary = compare_summary(runs)
    notes = summary["checkpoints"][0]["notes"]
    assert sum(n.startswith("hf:m=256: HF made no progress in 2 of 2 seeds") for n in notes) == 1
    report = report_markdown(summary, {}, [], [], 0.0)
    assert "hf:m=256: HF made no progress in 2 of 2 seeds" in report
    # and the ranking table marks the strategy
    console = Console(width=80, record=True)
    console.print(ranking_table(summary["checkpoints"][0], "test_accuracy"))
    shown = console.export_text()
    assert "hf:m=256 †" in shown
    assert "† HF made no progress in half of its seeds or more" in " ".join(shown.split())
    assert "sgd †" not in shown


# --- HF's sizes on small data -------------------------------------------------------------


def test_small_data_get_hf_at_fractions_of_the_training_set_and_a_line_saying_so() -> None:
    assert hf_sizes(341) == [42, 85, 170]
    labels = [s.label for s in default_strategies(341)]
    assert "hf:m=170" in labels and "auto:m=42" in labels
    note = hf_sizes_note(341)
    assert note is not None and note.startswith("hf at m=42, m=85, m=170, fractions of the 341")
    assert hf_sizes(1437) == [256, 512] and hf_sizes_note(5000) is None


# --- a user's overfit tabular project, end to end ---------------------------------------------


@pytest.fixture(scope="module")
def overfit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's project folder with ``model.pt`` trained by the user's own loop."""
    import importlib.util

    folder = tmp_path_factory.mktemp("breast-cancer")
    (folder / "my_project.py").write_text(PROJECT)
    spec = importlib.util.spec_from_file_location("overfit_project", folder / "my_project.py")
    assert spec is not None and spec.loader is not None
    project = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(project)
    torch.manual_seed(0)
    (x, y), _, _ = project.data()
    model = project.build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 128):
            idx = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.nn.functional.cross_entropy(model(x), y).item() < 0.05  # fits closely
    torch.save(model.state_dict(), folder / "model.pt")
    return folder


def _source(folder: Path) -> list[str]:
    project = f"{folder / 'my_project.py'}"
    return ["--model", f"{project}:build", "--data", f"{project}:data", "--device", "cpu"]


@pytest.mark.slow
def test_hf_on_an_overfit_project_says_it_made_no_progress(overfit: Path) -> None:
    out = overfit / "hf"
    args = ["finetune", str(overfit / "model.pt"), *_source(overfit), "--strategy", "hf",
            "--budget", "150steps", "--eval-points", "2", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "note: HF made no progress:" in result.output
    assert "the model fits its training data closely" in result.output
    log = json.loads((out / "metrics.json").read_text())
    assert log["hf_progress"]["verdict"] == "none" and log["hf_progress"]["m"] == 170
    steps = log["steps"]
    assert len(steps) == 150
    # the damping stops at its cap instead of growing by 3/2 per step (1e26 after 150)
    assert max(s["damping"] for s in steps) <= 1e4
    assert not any(s["accepted"] and s["cg_stop_reason"] == "non-finite" for s in steps)
    assert all(s["loss_after"] < s["loss_before"] for s in steps if s["accepted"])


@pytest.mark.slow
def test_selftest_warns_that_hf_will_make_no_progress(overfit: Path) -> None:
    args = ["selftest", str(overfit / "model.pt"), *_source(overfit), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output  # a warning, not a failure
    report = json.loads(result.output[result.output.index("{") :])
    check = next(c for c in report["checks"] if c["name"].startswith("HF progress"))
    assert check["status"] == "warn"
    assert check["detail"].startswith("HF made no progress")


@pytest.mark.slow
def test_selftest_passes_the_progress_check_where_hf_makes_progress(trained_run: Path) -> None:
    ckpt = sorted(trained_run.glob("*.safetensors"))[0]
    result = runner.invoke(app, ["selftest", str(ckpt), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    check = next(c for c in report["checks"] if c["name"].startswith("HF progress"))
    assert check["status"] == "pass", check


# --- review fixes: reuse, damping of rejected steps, sizes said whenever one is left out --------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            "delete",
            "it was written before hfft capped HF's damping and recorded hf_progress "
            "(its metrics.json has no valid hf_progress)",
        ),
        ("count", "its hf_progress counts 7 steps, not the 2 listed"),
    ],
)
def test_an_hf_run_without_a_valid_hf_progress_is_run_again(
    trained_run: Path, tmp_path: Path, change: str, why: str
) -> None:
    from hfft.analysis.compare import CompareConfig, compare, run_directory

    cfg = CompareConfig(
        checkpoints=(str(trained_run / "ckpt-02.safetensors"),),
        strategies=("sgd", "hf:m=128,cg_max_iter=3"),
        seeds=1,
        budget="2steps",
        out=str(tmp_path / "cmp"),
        eval_points=1,
    )
    assert compare(cfg).ran == 2
    metrics = run_directory(tmp_path / "cmp", "ckpt-02", "hf:m=128,cg_max_iter=3", 0)
    metrics = metrics / "metrics.json"
    log = json.loads(metrics.read_text())
    if change == "delete":
        del log["hf_progress"]
    else:
        log["hf_progress"]["steps"] = 7
    metrics.write_text(json.dumps(log))
    notes: list[str] = []
    again = compare(cfg, on_note=notes.append)
    assert (again.ran, again.reused) == (1, 1)
    assert [n for n in notes if "again" in n] == [
        f"running ckpt-02 hf:m=128,cg_max_iter=3 seed 0 again: {why}"
    ]
    assert json.loads(metrics.read_text())["hf_progress"]["steps"] == 2


def test_a_rejected_step_raises_the_damping_whatever_rho_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CG run that turned non-finite after an iterate with ρ > 3/4: the LM rule alone
    would lower λ, and the next CG would overflow sooner."""
    from hfft import HessianFree
    from hfft.optim import hf_step

    choose = hf_step.HFStep.choose

    def choose_then_overflow(self, result, grad):  # type: ignore[no-untyped-def]
        choice = choose(self, result, grad)
        object.__setattr__(result, "stop_reason", "non-finite")
        return dataclasses.replace(choice, rho=0.9, next_damping=self.damping * 2 / 3)

    monkeypatch.setattr(hf_step.HFStep, "choose", choose_then_overflow)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Flatten(0))
    x = torch.randn(32, 4)
    opt = HessianFree(model.parameters(), damping=2.0, cg_max_iter=5)
    record = opt.step(model, torch.nn.MSELoss(), (x, x.sum(1)), (x, x.sum(1)))
    assert not record.accepted and record.reject_reason == "CG produced non-finite values"
    assert record.next_damping == pytest.approx(3.0) and opt.damping == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("n", "eval_batch_size", "sizes", "said"),
    [
        (1437, None, [256, 512], "hf at m=256, m=512 of 1437 training samples (B̄ the rest, at "
         "most 1024): m=1024 and larger do not fit beside B̄"),
        (341, 200, [35, 70, 141], "hf at m=35, m=70, m=141, fractions of the 341 training "
         "samples (B̄ 200 (--eval-batch-size))"),
        (1, None, [], "hf and auto left out: 1 training samples hold no two disjoint batches"),
        (5000, None, [512, 1024, 2048], None),
    ],
)  # fmt: skip
def test_hf_sizes_say_whenever_a_standard_size_is_left_out(
    n: int, eval_batch_size: int | None, sizes: list[int], said: str | None
) -> None:
    assert hf_sizes(n, eval_batch_size) == sizes
    note = hf_sizes_note(n, eval_batch_size)
    assert note == said if said is None else note is not None and note.startswith(said)
    strategies = [s.label for s in default_strategies(n, eval_batch_size=eval_batch_size)]
    assert [s for s in strategies if s.startswith(("hf", "auto"))] == (
        [f"auto:m={sizes[0]}", *(f"hf:m={m}" for m in sizes)] if sizes else []
    )


def test_hf_steps_that_fail_in_selftest_are_a_warning_not_an_error(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfft.diagnostics import progress_check

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore lines")

    monkeypatch.setattr(progress_check, "HFRunner", out_of_memory)
    ckpt = sorted(trained_run.glob("*.safetensors"))[0]
    result = runner.invoke(app, ["selftest", str(ckpt), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    check = next(c for c in report["checks"] if c["name"].startswith("HF progress"))
    assert check["status"] == "warn"
    assert check["detail"] == (
        "HF steps could not be taken: CUDA out of memory. Tried to allocate 20.00 GiB"
    )


def test_notes_say_which_batch_rho_was_measured_on() -> None:
    # hf:rho_batch=curvature measures ρ on B: the notes must not call it ρ on B̄
    on_b = HFProgress(m=256, m_bar=1024, n_train=10_000, rho_batch="curvature")
    for _ in range(4):
        on_b.observe(_step(rho=0.9))
    entry = on_b.to_dict()
    assert entry["rho_batch"] == "curvature"
    assert "(median ρ on B 0.90)" in entry["note"] and "ρ on B̄" not in entry["note"]
    note = strategy_note("hf:m=256,rho_batch=curvature", [entry, entry])
    assert note is not None and "median ρ on B 0.90" in note and "ρ on B̄" not in note
    old = {k: v for k, v in entry.items() if k != "rho_batch"}  # written before it was kept
    assert "median ρ on B̄ 0.90" in (strategy_note("hf:m=256", [old, old]) or "")
