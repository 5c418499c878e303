"""``kfac`` (issue #28): K-FAC's runner, held to Newton's step where K-FAC is the exact
curvature, on HF's batches, reproducible; and K-FAC's loss rule applied before any run, to
``kfac`` and to HF's ``preconditioner=kfac`` alike."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from test_second_order import CE, _same_weights, conv_problem, settings, splits_of
from torch import nn
from typer.testing import CliRunner

from hfft.experiment.data.sampling import BatchSampler
from hfft.experiment.data.splits import DataSplits
from hfft.experiment.strategies.kfac_runner import KFACRunner, check_kfac
from hfft.experiment.strategies.registry import (
    StartingFacts,
    StrategyUnavailable,
    parse_strategy,
)


def regression(n: int = 64) -> tuple[nn.Module, DataSplits, torch.Tensor]:
    """Noise-free linear regression in float64: every batch has the same minimiser."""
    torch.manual_seed(1)
    x = torch.randn(n, 4, dtype=torch.float64)
    solution = torch.randn(2, 5, dtype=torch.float64)
    y = x @ solution[:, :4].T + solution[:, 4]
    return nn.Linear(4, 2).double(), splits_of(x, y), solution


def kfac(text: str, model: nn.Module, splits: DataSplits, **given: Any) -> KFACRunner:
    return KFACRunner(parse_strategy(text), model, splits, settings(**given), eval_batch_size=16)


def test_kfac_is_newtons_step_where_kfac_is_the_exact_curvature() -> None:
    # one Linear layer under MSE: the GGN is A ⊗ G exactly (type-2), and it is the Hessian;
    # factored damping perturbs it by O(√λ), so λ is tiny
    model, splits, solution = regression()
    start = copy.deepcopy(model)
    runner = kfac("kfac:m=32,fisher=type-2,damping=1e-16,adapt_damping=false", model,
                  splits, loss_fn=nn.MSELoss(), weight_decay=0.0)  # fmt: skip
    entry = runner.step(0.0)
    found = torch.cat([model.weight.detach(), model.bias.detach().unsqueeze(1)], dim=1)
    torch.testing.assert_close(found, solution, rtol=1e-6, atol=1e-6)
    assert entry["accepted"] and entry["alpha"] == pytest.approx(1.0, abs=1e-6)
    assert entry["loss_after"] is not None and entry["loss_after"] < 1e-10
    # the quadratic model on B is the loss on B, so it predicts −f_B(θ): ρ = f_B̄(θ) / f_B(θ)
    b, b_bar = BatchSampler(64, seed=3).disjoint_pair(32, 16)
    with torch.no_grad():
        f_b, f_bar = (float(nn.MSELoss()(start(splits.train_x[i]), splits.train_y[i]))
                      for i in (b, b_bar))  # fmt: skip
    assert entry["loss"] == pytest.approx(f_bar, rel=1e-12)
    assert entry["rho"] == pytest.approx(f_bar / f_b, rel=1e-6)


def test_a_kfac_step_that_raises_the_loss_is_rejected_and_damping_grows() -> None:
    model, splits = conv_problem()
    before = copy.deepcopy(model)
    runner = kfac("kfac:m=32,lr=1000,damping=0.5", model, splits)  # far past the minimum
    entry = runner.step(0.0)
    assert not entry["accepted"] and entry["damping"] == 0.5
    assert entry["loss_after"] is not None and entry["loss"] is not None
    assert entry["loss_after"] > entry["loss"]
    assert _same_weights(model, before)
    assert runner.damping == pytest.approx(0.75)  # rejected: at least 3/2 × λ


def test_kfac_is_reproducible_from_its_seed() -> None:
    runs = []
    for seed in (3, 3, 4):
        model, splits = conv_problem()
        runner = kfac("kfac:m=32", model, splits, seed=seed)  # Monte-Carlo labels
        entries = [runner.step(k / 3) for k in range(3)]
        runs.append((model, entries))
    assert _same_weights(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not _same_weights(runs[0][0], runs[2][0])
    assert any(e["accepted"] for e in runs[0][1])


def test_kfac_steps_on_hfs_batches() -> None:
    from hfft.experiment.strategies.runners import HFRunner

    model, splits = conv_problem()
    runner = kfac("kfac:m=32", model, splits)
    hf = HFRunner(parse_strategy("hf:m=32"), copy.deepcopy(model), splits, loss_fn=CE,
                  weight_decay=0.01, eval_batch_size=16, seed=3)  # fmt: skip
    for _ in range(2):
        (xb, yb), (xe, ye) = hf.draw()
        x, y = runner.batches.next()
        assert torch.equal(x, torch.cat([xb, xe])) and torch.equal(y, torch.cat([yb, ye]))


def test_kfac_step_puts_theta_back_when_interrupted_in_its_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hfft.optim.kfac_step as kfac_step_module
    from hfft.optim.kfac import KFAC
    from hfft.optim.kfac_step import kfac_step

    model, splits = conv_problem()
    real, calls = kfac_step_module.batch_loss, {"n": 0}

    def batch_loss(*args: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 2:  # f at the trial point θ + αp, written into the model
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(kfac_step_module, "batch_loss", batch_loss)
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    x, y = splits.train_x, splits.train_y
    batch, eval_batch = (x[:32], y[:32]), (x[32:48], y[32:48])
    factors = KFAC.compute(model, CE, *batch, params)
    wd = torch.zeros(sum(p.numel() for p in params))
    with pytest.raises(KeyboardInterrupt):
        kfac_step(model, CE, params, wd, batch, eval_batch, factors, damping=1.0,
                  weight_decay=0.0)  # fmt: skip
    assert calls["n"] == 2 and all(torch.equal(p, t) for p, t in zip(params, theta, strict=True))


def test_kfac_reports_what_it_leaves_to_the_identity() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    runner = kfac("kfac:m=32,fisher=type-2", model, splits_of(x, y))
    runner.step(0.0)
    report = runner.report()["kfac"]
    assert report["uncovered"] == ["1.weight", "1.bias"] and report["fisher"] == "type-2"
    assert set(report["covered"]) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert report["note"] is not None and "2 of the 6 parameter tensors" in report["note"]
    assert kfac("kfac", *conv_problem()).report()["kfac"]["note"] is None


# --- the loss, checked before any run ----------------------------------------------------

FACTS = {"n_train": 100, "lr": 0.1, "batch_size": 16, "eval_batch_size": None}


@pytest.mark.parametrize(
    ("loss_fn", "float_targets", "says"),
    [
        (nn.BCEWithLogitsLoss(), True, "not this run's BCEWithLogitsLoss"),
        (nn.CrossEntropyLoss(label_smoothing=0.1), False, "cross-entropy with label smoothing"),
        (nn.CrossEntropyLoss(weight=torch.ones(3)), False, "cross-entropy with class weights"),
        (nn.CrossEntropyLoss(), True, "cross-entropy on class probabilities"),
        (nn.MultiMarginLoss(), False, "not this run's MultiMarginLoss"),
    ],
    ids=["bce", "label-smoothing", "class-weights", "soft-targets", "custom"],
)
def test_kfac_refuses_a_loss_it_does_not_support(
    loss_fn: nn.Module, float_targets: bool, says: str
) -> None:
    facts = StartingFacts(**FACTS, loss_fn=loss_fn, float_targets=float_targets)
    with pytest.raises(StrategyUnavailable, match=says):
        check_kfac(parse_strategy("kfac:m=32"), facts)
    check_kfac(parse_strategy("kfac:m=32"), StartingFacts(**FACTS, loss_fn=CE))
    check_kfac(parse_strategy("kfac:m=32"), StartingFacts(**FACTS))  # the loss not known


def test_kfacs_batches_are_hfs_named_kfac() -> None:
    facts = StartingFacts(**FACTS, loss_fn=CE)
    with pytest.raises(ValueError, match=r"K-FAC's batch B \(kfac:m=100\).*kfac:m=50 or less"):
        check_kfac(parse_strategy("kfac:m=100"), facts)
    with pytest.raises(ValueError, match=r"K-FAC needs two disjoint.*smaller kfac:m= or"):
        check_kfac(parse_strategy("kfac:m=50"), StartingFacts(**{**FACTS, "eval_batch_size": 60}))


@pytest.mark.parametrize(
    "text", ["hf:m=32,preconditioner=kfac", "auto:m=32,hf_preconditioner=kfac"]
)
def test_hfs_kfac_preconditioner_refuses_such_a_loss_too(text: str) -> None:
    from hfft.experiment.strategies.make import check_strategy

    bce = {"loss_fn": nn.BCEWithLogitsLoss(), "float_targets": True}
    with pytest.raises(ValueError, match=r"HF's preconditioner=kfac cannot be used here: K-FAC"):
        check_strategy(parse_strategy(text), 100, lr=0.1, batch_size=8, eval_batch_size=None,
                       **bce)  # fmt: skip
    check_strategy(parse_strategy(text), 100, lr=0.1, batch_size=8, eval_batch_size=None,
                   loss_fn=CE)  # fmt: skip
    check_strategy(parse_strategy("hf:m=32,preconditioner=empirical-fisher"), 100, lr=0.1,
                   batch_size=8, eval_batch_size=None, **bce)  # fmt: skip


def test_make_runner_refuses_before_it_builds_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    from hfft.experiment.strategies.make import make_runner

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the runner was built")

    monkeypatch.setattr(KFACRunner, "__init__", built)
    model, splits = nn.Linear(4, 3), splits_of(torch.randn(64, 4), torch.rand(64, 3))
    with pytest.raises(StrategyUnavailable, match="not this run's BCEWithLogitsLoss"):
        make_runner(parse_strategy("kfac"), model, splits, loss_fn=nn.BCEWithLogitsLoss(),
                    lr=0.1, batch_size=8, momentum=0.0, weight_decay=0.0, eval_batch_size=None,
                    evaluations=2, seed=0)  # fmt: skip


def test_finetune_refuses_kfac_on_a_users_loss_in_one_sentence(
    trained_run: Path, tmp_path: Path
) -> None:
    from hfft.cli import app

    out = tmp_path / "run"
    ckpt = str(trained_run / "ckpt-02.safetensors")
    argv = ["finetune", ckpt, "--strategy", "kfac", "--loss", "torch.nn:MultiMarginLoss",
            "--budget", "2steps", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    said = result.output.strip().splitlines()
    assert said[-1].startswith("hfft: error: K-FAC supports nn.CrossEntropyLoss on class")
    assert said[-1].endswith("not this run's MultiMarginLoss.")
    assert not out.exists()
