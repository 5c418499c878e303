"""The late-phase strategies: SWA, L-BFGS, Adam/AdamW and schedule-free SGD.

Each is held to its maths with explicit values (SWALR's rate, the average of
known iterates, L-BFGS at a quadratic's minimiser, Adam continuing from saved
moments, schedule-free's x), and each runs through ``finetune`` bitwise
reproducibly.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.data.sampling import BatchSampler
from hfft.experiment.data.splits import DataSplits
from hfft.experiment.strategies.late_phase import (
    AdamRunner,
    LBFGSRunner,
    ScheduleFreeRunner,
    SWARunner,
    adam_moments,
)
from hfft.experiment.strategies.make import check_strategy
from hfft.experiment.strategies.registry import parse_strategy, suite_members
from hfft.experiment.strategies.runners import SGDSettings

EXTENDED_STRATEGIES = [e.name for e in suite_members("extended") if "paper" not in e.suites]
runner = CliRunner()
CE = nn.CrossEntropyLoss()


def splits_of(x: torch.Tensor, y: torch.Tensor) -> DataSplits:
    """Every split the same data (the runners only train on ``train``)."""
    return DataSplits(
        name="test", train_x=x, train_y=y, valid_x=x, valid_y=y, train_eval_x=x,
        train_eval_y=y, test_x=x, test_y=y, num_classes=int(y.max()) + 1 if y.dtype == torch.int64
        else 1, input_shape=tuple(x.shape[1:]), augment=None, normalization=None, seed=0,
    )  # fmt: skip


def classification(n: int = 96) -> tuple[nn.Module, DataSplits]:
    torch.manual_seed(0)
    x, y = torch.randn(n, 6), torch.randint(0, 3, (n,))
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), splits_of(x, y)


def settings(**given: Any) -> SGDSettings:
    """The SGD settings of these tests' checkpoints (rate 0.1, batch 16, no momentum or L2)."""
    base: dict[str, Any] = dict(loss_fn=CE, lr=0.1, batch_size=16, momentum=0.0,
                                weight_decay=0.0, seed=0)  # fmt: skip
    return SGDSettings(**{**base, **given})


def swa(options: str, model: nn.Module, splits: DataSplits, lr: float = 0.1) -> SWARunner:
    return SWARunner(parse_strategy(f"swa:{options}"), model, splits, settings(lr=lr))


def test_swalr_anneals_from_alpha_to_the_swa_rate_by_cosine() -> None:
    model, splits = classification()
    r = swa("start=0,swa_lr=0.01,anneal_steps=4", model, splits, lr=0.1)
    rates = [r.step(0.0)["lr"] for _ in range(6)]

    def cosine(t: float) -> float:  # SWALR's cosine anneal from α = 0.1 to 0.01
        a = (1 - math.cos(math.pi * t)) / 2
        return 0.01 * a + 0.1 * (1 - a)

    expected = [cosine(k / 4) for k in range(5)] + [0.01]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[0] == pytest.approx(0.1) and rates[2] == pytest.approx(0.055)


def test_swa_evaluates_the_mean_of_its_iterates_after_start() -> None:
    model, splits = classification()
    r = swa("start=0.5", model, splits)
    r.step(0.2)  # before start: plain SGD, nothing averaged, the iterate is evaluated
    with r.evaluated() as evaluated:
        assert evaluated is model
    iterates = []
    for _ in range(3):
        r.step(0.6)
        iterates.append([p.detach().clone() for p in model.parameters()])
    with r.evaluated() as evaluated:
        for p, *its in zip(evaluated.parameters(), *iterates, strict=True):
            torch.testing.assert_close(p, torch.stack(its).mean(0), rtol=1e-6, atol=1e-7)
    assert r.averaged == 3


def test_swa_recomputes_batchnorm_statistics_of_the_average() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 6) * 3 + 2, torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    r = swa("start=0", model, splits_of(x, y))
    for _ in range(3):
        r.step(0.0)
    r.prepare_evaluation()  # update_bn: running statistics of the average over train
    with r.evaluated() as avg, torch.no_grad():
        h = avg[0](x)
        torch.testing.assert_close(avg[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    assert r.report()["swa"]["batchnorm_update"] == "on the clock"


def test_lbfgs_reaches_the_minimiser_of_a_least_squares_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1) + 0.1 * torch.randn(64, 1)
    model = nn.Linear(5, 1)
    strategy = parse_strategy("lbfgs:m=64,max_iter=50")
    r = LBFGSRunner(strategy, model, splits_of(x, y), settings(loss_fn=nn.MSELoss()))
    record = r.step(0.0)
    design = torch.cat([x, torch.ones(64, 1)], 1)
    solution = torch.linalg.lstsq(design, y).solution.squeeze(1)
    found = torch.cat([model.weight.detach().squeeze(0), model.bias.detach()])
    torch.testing.assert_close(found, solution, rtol=1e-4, atol=1e-4)
    assert record["loss_after"] < record["loss"] and record["function_evals"] >= 1


def test_adam_continues_from_the_checkpoints_moments() -> None:
    model, splits = classification()
    own = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # the user's own training with Adam, then torch.save of both states
        own.zero_grad()
        CE(model(splits.train_x), splits.train_y).backward()
        own.step()
    saved = copy.deepcopy(own.state_dict())
    assert adam_moments(saved, model) is not None
    twin = copy.deepcopy(model)
    r = AdamRunner(parse_strategy("adam:lr=0.001"), model, splits, settings(seed=4), saved)
    r.step(0.0)
    # the user's Adam one step further, on the batch the runner's sampler drew
    idx = BatchSampler(splits.num_train, seed=4).next_batch(16)
    again = torch.optim.Adam(twin.parameters(), lr=1e-3)
    again.load_state_dict(saved)
    again.zero_grad()
    CE(twin(splits.train_x[idx]), splits.train_y[idx]).backward()
    again.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    assert r.report()["adam"]["moments"] == "the checkpoint's"
    fresh = AdamRunner(parse_strategy("adam"), twin, splits, settings(seed=4))
    assert fresh.report()["adam"] == {"lr": 1e-3, "lr_source": "default 0.001 (not tuned)",
                                      "moments": "fresh", "schedule": "constant"}  # fmt: skip


def test_schedule_free_evaluates_and_saves_its_x_point() -> None:
    model, splits = classification()
    r = ScheduleFreeRunner(parse_strategy("sgd-schedulefree:momentum=0.9"), model, splits,
                           settings())  # fmt: skip
    for _ in range(5):
        r.step(0.0)
    y = [p.detach().clone() for p in model.parameters()]
    z = [r.opt.state[p]["z"].clone() for p in model.parameters()]
    with r.evaluated() as evaluated:
        for p, yp, zp in zip(evaluated.parameters(), y, z, strict=True):
            x = yp + (1 - 1 / 0.9) * (zp - yp)  # the package's eval(): x from y and z
            torch.testing.assert_close(p, x, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(p, yp)
    for p, yp in zip(model.parameters(), y, strict=True):  # train() again: back at y
        torch.testing.assert_close(p, yp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("swa:start=1.5", "start of strategy 'swa' must be a number in"),
        ("lbfgs:m=0", "m of strategy 'lbfgs' must be an integer > 0"),
        ("adam:schedule=linear", "must be one of constant, cosine"),
        ("sgd-schedulefree:warmup_steps=-1", "warmup_steps"),
        ("adamw:damping=1", "unknown option 'damping' for strategy 'adamw'"),
    ],
)
def test_bad_options_are_one_sentence(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_strategy(text)


def test_the_new_strategies_refuse_data_parallel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from hfft.optim import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="does not run data-parallel"):
        check_strategy(parse_strategy("swa"), 100, lr=0.1, batch_size=8, eval_batch_size=None)


def _finetune(ckpt: Path, out: Path, strategy: str) -> dict:
    args = ["finetune", str(ckpt), "--strategy", strategy, "--budget", "6steps",
            "--eval-points", "2", "--out", str(out), "--json", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


@pytest.mark.parametrize("name", EXTENDED_STRATEGIES)
def test_each_strategy_finetunes_reproducibly(trained_run: Path, tmp_path: Path, name: str):
    strategy = {"swa": "swa:start=0.3", "lbfgs": "lbfgs:m=256,max_iter=3"}.get(name, name)
    ckpt = trained_run / "ckpt-01.safetensors"
    runs = [_finetune(ckpt, tmp_path / f"run{i}", strategy) for i in range(2)]
    assert runs[0]["steps"] == 6 and runs[0]["status"] == "completed"
    weights = [load_file(tmp_path / f"run{i}" / "final.safetensors") for i in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    log = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    assert log["strategy"].startswith(name) and len(log["steps"]) == 6
    assert math.isfinite(runs[0]["final"]["test_loss"])


def test_saved_moments_are_matched_by_name_or_not_at_all() -> None:
    model, splits = classification()
    groups = [  # decay / no-decay groups list the parameters in another order than the model
        {"params": [model[2].weight, model[0].weight]},
        {"params": [model[2].bias, model[0].bias], "weight_decay": 0.0},
    ]
    for named in (False, True):
        if named:
            params = dict(model.named_parameters())
            groups = [
                {"params": [(n, params[n]) for n in ("2.weight", "0.weight")]},
                {"params": [(n, params[n]) for n in ("2.bias", "0.bias")], "weight_decay": 0.0},
            ]
        opt = torch.optim.Adam(groups, lr=2e-3)
        CE(model(splits.train_x), splits.train_y).backward()
        opt.step()
        moments = adam_moments(opt.state_dict(), model)
        if not named:  # no names: the order cannot be known, so fresh moments
            assert moments is None
            continue
        assert moments is not None
        for entry, p in zip(moments, model.parameters(), strict=True):
            torch.testing.assert_close(entry["exp_avg"], opt.state[p]["exp_avg"])
        r = AdamRunner(parse_strategy("adam"), model, splits, settings(), opt.state_dict())
        assert r.report()["adam"]["lr"] == 2e-3  # the saved state's rate, not the default


@pytest.mark.parametrize("name", ["swa", "sgd-schedulefree"])
def test_the_step_history_puts_back_what_is_evaluated(name: str) -> None:
    from hfft.experiment.snapshot import StepHistory

    model, splits = classification()
    if name == "swa":
        r: SWARunner | ScheduleFreeRunner = swa("start=0", model, splits)
    else:
        r = ScheduleFreeRunner(parse_strategy(name), model, splits, settings())
    history = StepHistory(model, r.step_state())
    for _ in range(3):
        history.save()
        r.step(0.0)
    with r.evaluated() as evaluated:
        before = [p.detach().clone() for p in evaluated.parameters()]
    history.save()
    r.step(0.0)  # a step that an interrupt or a divergence takes back
    history.restore_current()
    with r.evaluated() as evaluated:
        for p, q in zip(evaluated.parameters(), before, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
