"""auto: the switching rule on constructed measurements, probes, and runs that (do not) switch."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.run.finetune import FinetuneConfig, finetune
from hfft.experiment.run.starting_point import StartingPointOptions
from hfft.experiment.strategies.auto import (
    AutoRunner,
    Decision,
    ProbeMeasurement,
    decide,
    decide_back,
)
from hfft.experiment.strategies.make import make_runner
from hfft.experiment.strategies.registry import parse_strategy

runner = CliRunner()
# cheap HF on the digits MLP of the trained_run fixture, and SGD at a rate at which it
# makes steady progress there (the fixture trained at 0.05 with momentum 0.9)
HF_CHEAP = "m=128,hf_cg_max_iter=10"
CHEAP = f"{HF_CHEAP},lr=0.005,momentum=0"
# the rule without the ρ floor and with fixed windows, so that rates alone decide
RATES_ONLY = "rho_min=0,backoff=1"


def measured(sgd_gain: float, hf_gain: float, sgd_s: float = 2.0, hf_s: float = 1.0):
    return ProbeMeasurement(
        sgd_gain=sgd_gain,
        sgd_seconds=sgd_s,
        sgd_steps=10,
        hf_gain=hf_gain,
        hf_seconds=hf_s,
        rho=1.0,
    )


@pytest.mark.parametrize(
    ("measurement", "margin", "action"),
    [
        (measured(0.4, 0.3), 1.0, "switch"),  # HF 0.3/s against SGD 0.2/s
        (measured(0.4, 0.3), 1.5, "roll back"),  # needs more than 0.3/s
        (measured(0.4, 0.2), 1.0, "roll back"),  # equal rates: stay on SGD
        (measured(0.4, 0.1), 0.4, "switch"),
        (measured(0.0, 0.01), 100.0, "switch"),  # SGD made no progress, HF did
        (measured(-0.1, 0.01), 100.0, "switch"),
        (measured(0.4, 0.0), 1.0, "roll back"),  # the probe did not pay off
        (measured(-0.4, -1e-9), 1.0, "roll back"),
        (measured(0.4, math.nan), 1.0, "roll back"),
        (measured(math.nan, 0.3), 1.0, "roll back"),
        (measured(0.4, 0.3, hf_s=0.0), 1.0, "roll back"),
        (measured(0.4, 0.3, sgd_s=0.0), 1.0, "roll back"),
    ],
    ids=[
        "hf-faster",
        "hf-faster-but-not-by-margin",
        "equal-rates",
        "small-margin",
        "sgd-flat",
        "sgd-worse",
        "probe-flat",
        "probe-worse",
        "probe-nan",
        "sgd-nan",
        "no-hf-time",
        "no-sgd-time",
    ],
)
def test_decide(measurement: ProbeMeasurement, margin: float, action: str) -> None:
    decision = decide(measurement, margin)
    assert decision.action == action
    assert decision.rolls_back == (action == "roll back")
    assert decision.reason


def test_rates_and_reasons() -> None:
    m = measured(0.4, 0.3)
    assert (m.sgd_rate, m.hf_rate) == (0.2, 0.3)
    assert decide(m, 1.0) == Decision(
        "switch", "HF lowered the B̄ loss 1.5× as fast as SGD per second"
    )
    assert decide(m, 2.0).reason == ("HF lowered the B̄ loss only 1.5× as fast as SGD (needs > 2×)")


@pytest.mark.parametrize(
    ("rho", "rho_min", "action"),
    [
        (0.8, 0.75, "switch"),
        (0.75, 0.75, "switch"),
        (0.3, 0.75, "roll back"),  # HF's model does not carry over from B to B̄
        (math.nan, 0.75, "roll back"),
        (0.3, 0.0, "switch"),  # no test
        (math.nan, 0.0, "switch"),
    ],
)
def test_decide_with_a_reduction_ratio_floor(rho: float, rho_min: float, action: str) -> None:
    m = ProbeMeasurement(
        sgd_gain=0.4, sgd_seconds=2.0, sgd_steps=10, hf_gain=0.3, hf_seconds=1.0, rho=rho
    )
    decision = decide(m, 1.0, rho_min)
    assert decision.action == action
    if action == "roll back":
        assert "reduction ratio" in decision.reason
    # the floor comes after "did the probe lower the loss at all"
    assert decide(ProbeMeasurement(0.4, 2.0, 10, 0.0, 1.0, 0.9), 1.0, rho_min).reason == (
        "the probe did not lower the B̄ loss"
    )


def test_a_probe_before_any_sgd_step_is_judged_by_rho_alone() -> None:
    at_once = ProbeMeasurement(0.0, 0.0, 0, 0.2, 1.0, rho=0.9)
    assert decide(at_once, 1.0, 0.5).action == "switch"
    assert "before any SGD step" in decide(at_once, 1.0, 0.5).reason
    assert decide(ProbeMeasurement(0.0, 0.0, 0, 0.2, 1.0, rho=0.3), 1.0, 0.5).rolls_back
    assert decide(ProbeMeasurement(0.0, 0.0, 0, -0.2, 1.0, rho=0.9), 1.0, 0.5).rolls_back


def test_margin_zero_drops_the_rate_test() -> None:
    slower = ProbeMeasurement(0.4, 2.0, 10, 0.01, 1.0, rho=0.6)  # HF 0.01/s, SGD 0.2/s
    assert decide(slower, 1.0, 0.5).rolls_back
    assert decide(slower, 0.0, 0.5) == Decision(
        "switch", "the probe lowered the B̄ loss with ρ = 0.60 ≥ 0.5"
    )
    assert decide(slower, 0.0, 0.75).rolls_back  # the ρ floor still applies
    assert decide(ProbeMeasurement(0.4, 2.0, 10, -0.01, 1.0, rho=0.9), 0.0).rolls_back


def test_decision_actions_are_checked() -> None:
    with pytest.raises(ValueError, match="action must be one of switch, roll back"):
        Decision("keep", "because")


@pytest.mark.parametrize("margin", [-1.0, math.inf, math.nan])
def test_decide_rejects_a_bad_margin(margin: float) -> None:
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        decide(measured(0.4, 0.3), margin)


@pytest.mark.parametrize(
    ("sgd_gain", "sgd_seconds", "hf_rate", "margin", "action"),
    [
        (0.6, 2.0, 0.2, 1.0, "switch"),  # SGD 0.3/s against HF 0.2/s: stay on SGD
        (0.6, 2.0, 0.2, 2.0, "roll back"),  # needs more than 0.4/s
        (0.4, 2.0, 0.2, 1.0, "roll back"),  # equal rates: back to HF
        (0.1, 2.0, 0.0, 1.0, "switch"),  # HF had stalled, SGD made progress
        (0.1, 2.0, math.nan, 1.0, "switch"),
        (0.0, 2.0, 0.0, 1.0, "roll back"),  # SGD made none either
        (-0.1, 2.0, 0.0, 1.0, "roll back"),
        (math.nan, 2.0, 0.1, 1.0, "roll back"),  # a diverged trial
        (0.1, 0.0, 0.1, 1.0, "roll back"),
    ],
    ids=[
        "sgd-faster",
        "not-by-margin",
        "equal",
        "hf-flat",
        "hf-nan",
        "both-flat",
        "sgd-worse",
        "sgd-nan",
        "no-sgd-time",
    ],
)
def test_decide_back(
    sgd_gain: float, sgd_seconds: float, hf_rate: float, margin: float, action: str
) -> None:
    decision = decide_back(sgd_gain, sgd_seconds, hf_rate, margin)
    assert decision.action == action and decision.reason
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        decide_back(sgd_gain, sgd_seconds, hf_rate, -1.0)


@pytest.fixture(scope="module")
def ckpt(trained_run: Path) -> Path:
    return trained_run / "ckpt-02.safetensors"


def auto_runner(ckpt: Path, options: str) -> AutoRunner:
    src = StartingPointOptions().load(ckpt, "cpu")
    made = make_runner(
        parse_strategy(f"auto:{options}"),
        src.model,
        src.splits,
        loss_fn=src.task.loss(),
        lr=src.lr,
        batch_size=src.batch_size,
        momentum=src.momentum,
        weight_decay=src.weight_decay,
        eval_batch_size=256,
        evaluations=4,
        seed=0,
    )
    assert isinstance(made, AutoRunner)
    return made


def test_a_probe_that_does_not_pay_off_is_rolled_back_bit_exactly(ckpt: Path) -> None:
    # without a line search, step size 20 overshoots: HF applies a step that raises the loss
    auto = auto_runner(ckpt, f"{HF_CHEAP},interval=0.2,hf_use_linesearch=0,hf_lr=20")
    for fraction in (0.0, 0.05, 0.1):
        assert auto.step(fraction)["phase"] == "sgd"
    params = copy.deepcopy(auto.model.state_dict())
    sgd_state = copy.deepcopy(auto.sgd.opt.state_dict())
    sampler = auto.sgd.sampler
    perm, pos, rng = sampler._perm.clone(), sampler._pos, sampler._gen.get_state()
    generator = auto.sgd.gen.get_state()
    assert any(s["momentum_buffer"] is not None for s in sgd_state["state"].values())

    record = auto.step(0.25)
    assert record["phase"] == "probe" and record["accepted"]
    assert record["loss_after"] > record["loss_before"]
    assert record["probe"]["decision"] == "roll back"
    state = auto.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in params.items())
    after = auto.sgd.opt.state_dict()
    for key, s in sgd_state["state"].items():
        assert torch.equal(after["state"][key]["momentum_buffer"], s["momentum_buffer"])
    assert after["param_groups"] == sgd_state["param_groups"]
    assert torch.equal(sampler._perm, perm) and sampler._pos == pos
    assert torch.equal(sampler._gen.get_state(), rng)
    assert torch.equal(auto.sgd.gen.get_state(), generator)
    assert auto.phase == "sgd" and auto.switch is None
    assert auto.step(0.3)["phase"] == "sgd"  # a new window opens


def test_the_window_measures_sgd_on_the_probes_eval_batch(ckpt: Path) -> None:
    auto = auto_runner(ckpt, f"{CHEAP},interval=0.5")
    assert (auto.rho_min, auto.margin, auto.backoff, auto.switch_back) == (0.5, 0.0, 2.0, False)
    start = copy.deepcopy(auto.model.state_dict())
    auto.step(0.0)  # opens the window at the checkpoint, then one SGD step
    assert auto._window is not None
    (_, eval_batch), f_start = auto._window
    moved = copy.deepcopy(auto.model.state_dict())
    auto.model.load_state_dict(start)
    assert f_start == auto.hf.objective(eval_batch)
    auto.model.load_state_dict(moved)
    for fraction in (0.1, 0.2, 0.3):
        auto.step(fraction)
    f_now = auto.hf.objective(eval_batch)
    record = auto.step(0.6)
    probe = record["probe"]
    assert record["loss_before"] == f_now
    assert probe["sgd_gain"] == pytest.approx(f_start - f_now, abs=1e-12)
    assert probe["sgd_steps"] == 4
    assert probe["hf_gain"] == pytest.approx(record["loss_before"] - record["loss_after"])
    assert probe["rho"] == record["rho"]
    assert 0 < probe["sgd_seconds"] and 0 < probe["hf_seconds"]


def run(ckpt: Path, tmp_path: Path, strategy: str, budget: str = "30steps") -> dict:
    cfg = FinetuneConfig(
        checkpoint=str(ckpt),
        out=str(tmp_path / "ft"),
        strategy=strategy,
        budget=budget,
        eval_batch_size=256,
        eval_points=3,
    )
    result = finetune(cfg)
    assert result.status == "completed"
    return json.loads(result.metrics_path.read_text())


def test_a_run_that_switches(ckpt: Path, tmp_path: Path) -> None:
    # a negligible margin: the first probe that lowers the loss switches (and without
    # switching back, off by default, every later step is HF)
    log = run(ckpt, tmp_path, f"auto:{CHEAP},{RATES_ONLY},interval=0.25,margin=1e-9")
    phases = [s["phase"] for s in log["steps"]]
    # fraction = steps done / 30: the first step with fraction ≥ 0.25 is the 9th
    assert phases == ["sgd"] * 8 + ["probe"] + ["hf"] * 21
    assert [s["step"] for s in log["steps"]] == list(range(1, 31))
    auto = log["auto"]
    assert auto["switched"] and auto["switch"] == auto["probes"][0]
    switch = auto["switch"]
    assert (switch["step"], switch["decision"], switch["fraction"]) == (9, "switch", 8 / 30)
    assert switch["hf_gain"] > 0 and switch["sgd_rate"] is not None
    assert auto["m"] == 128 and auto["interval"] == 0.25 and auto["switch_back"] is False
    assert "lr" in log["evaluations"][0] and "damping" in log["evaluations"][-1]


def test_a_run_that_stays_on_sgd_is_the_sgd_run_with_probes(ckpt: Path, tmp_path: Path) -> None:
    # an enormous margin: every probe that SGD's progress does not beat is rolled back
    log = run(ckpt, tmp_path, f"auto:{CHEAP},{RATES_ONLY},interval=0.35,margin=1e9")
    phases = [s["phase"] for s in log["steps"]]
    assert "hf" not in phases and phases.count("probe") == 2
    probes = log["auto"]["probes"]
    assert [p["decision"] for p in probes] == ["roll back", "roll back"]
    assert all(p["sgd_gain"] > 0 and p["hf_gain"] > 0 for p in probes)  # both lowered it
    assert not log["auto"]["switched"] and log["auto"]["switch"] is None
    assert all("lr" in e for e in log["evaluations"])
    # rolled back bit for bit, with SGD's state untouched: exactly the sgd run's steps
    sgd = run(ckpt, tmp_path / "sgd", "sgd:lr=0.005,momentum=0", budget="28steps")
    auto_losses = [s["loss"] for s in log["steps"] if s["phase"] == "sgd"]
    assert auto_losses == [s["loss"] for s in sgd["steps"]]


def test_a_probe_below_the_rho_floor_is_rolled_back(ckpt: Path, tmp_path: Path) -> None:
    log = run(ckpt, tmp_path, f"auto:{CHEAP},interval=0.25,margin=1e-9,rho_min=50")
    probes = log["auto"]["probes"]
    assert probes and all(p["decision"] == "roll back" for p in probes)
    assert all(p["rho"] < 50 and "reduction ratio" in p["reason"] for p in probes)
    assert log["auto"]["rho_min"] == 50 and not log["auto"]["switched"]


@pytest.mark.parametrize(
    ("backoff", "probe_steps"), [(1.0, [8, 16, 24, 32, 40]), (2.0, [8, 23])], ids=["1", "2"]
)
def test_backoff_lengthens_the_window_after_each_roll_back(
    ckpt: Path, tmp_path: Path, backoff: float, probe_steps: list[int]
) -> None:
    # probes that raise the loss (step size 20 without a line search) are always rolled back
    strategy = f"auto:{HF_CHEAP},hf_use_linesearch=0,hf_lr=20,interval=0.17,backoff={backoff}"
    log = run(ckpt, tmp_path, strategy, budget="40steps")
    probes = log["auto"]["probes"]
    assert [p["step"] for p in probes] == probe_steps
    assert {p["decision"] for p in probes} == {"roll back"}
    assert log["auto"]["backoff"] == backoff


def test_first_zero_probes_before_any_sgd_step(ckpt: Path, tmp_path: Path) -> None:
    # a probe that raises the loss (step size 20, no line search) is rolled back; with
    # first=0 it comes at once, and the windows then grow from interval as usual
    strategy = f"auto:{HF_CHEAP},hf_use_linesearch=0,hf_lr=20,interval=0.17,first=0"
    log = run(ckpt, tmp_path, strategy, budget="40steps")
    probes = log["auto"]["probes"]
    assert [p["step"] for p in probes] == [1, 9, 24]  # at 0, then 0 + 0.17, then + 0.34
    assert probes[0]["sgd_steps"] == 0 and probes[0]["sgd_gain"] == 0.0
    assert probes[0]["sgd_rate"] is None  # no SGD window to measure
    assert {p["decision"] for p in probes} == {"roll back"}
    assert log["auto"]["first"] == 0.0 and log["auto"]["interval"] == 0.17
    # a probe at once that pays switches before SGD has taken a step, also with margin > 0
    switched = run(ckpt, tmp_path / "s", f"auto:{CHEAP},first=0,margin=1", budget="6steps")
    assert [s["phase"] for s in switched["steps"]] == ["probe"] + ["hf"] * 5
    assert "before any SGD step" in switched["auto"]["switch"]["reason"]


def test_first_defaults_to_interval(ckpt: Path) -> None:
    assert auto_runner(ckpt, f"{CHEAP},interval=0.3").first == 0.3
    assert auto_runner(ckpt, f"{CHEAP},interval=0.3,first=0.05").first == 0.05


def test_hf_that_slows_below_sgd_gets_an_sgd_trial_that_stays_when_it_pays(
    ckpt: Path, tmp_path: Path
) -> None:
    # tiny HF steps (step size 0.01, no line search) lower the loss, so the first probe
    # switches (margin 1e-9), but far more slowly than SGD did: a window later auto tries
    # SGD from HF's parameters, and SGD lowering the loss faster keeps it
    strategy = f"auto:{CHEAP},{RATES_ONLY},interval=0.25,margin=1e-9,hf_use_linesearch=0,hf_lr=0.01"
    strategy += ",switch_back=true"
    log = run(ckpt, tmp_path, strategy, budget="40steps")
    phases = [s["phase"] for s in log["steps"]]
    # fraction = steps done / 40: probe at step 11 (0.25), HF until the check at 0.5
    # starts the trial (step 21), the trial until 0.75 (step 31), then an SGD window
    assert phases == ["sgd"] * 10 + ["probe"] + ["hf"] * 9 + ["trial"] * 10 + ["sgd"] * 10
    (trial,) = [s["trial"] for s in log["steps"] if "trial" in s]
    assert trial["decision"] == "back to sgd" and trial["sgd_steps"] == 10
    assert trial["sgd_gain"] > 0 and trial["sgd_rate"] > trial["hf_rate"] > 0
    auto = log["auto"]
    assert auto["switch_back"] and auto["trials"][0]["step"] == 21
    assert auto["trials"][0]["end_step"] == 31
    # switching back is an option (off by default)
    off = run(ckpt, tmp_path / "off", strategy.replace("true", "false"), budget="40steps")
    assert [s["phase"] for s in off["steps"]] == ["sgd"] * 10 + ["probe"] + ["hf"] * 29
    assert off["auto"]["trials"] == []


def test_an_sgd_trial_that_does_not_pay_is_rolled_back_to_hf_bit_exactly(ckpt: Path) -> None:
    # SGD at step size 50 diverges; HF is made to look stalled (no gain in its window)
    auto = auto_runner(ckpt, f"{HF_CHEAP},lr=50,momentum=0,interval=0.2,switch_back=true")
    auto._enter_hf(0.0)
    auto._hf_window = [0.0, 1.0]
    hf_state = copy.deepcopy(auto.model.state_dict())
    record = auto.step(0.2)  # the check starts a trial: the first SGD step
    assert record["phase"] == "trial" and auto.phase == "trial"
    for fraction in (0.25, 0.3):
        assert auto._sgd_step(fraction)["phase"] == "trial"
    extra = auto._end_trial(0.4)
    assert extra["decision"] == "back to hf" and extra["sgd_steps"] == 3
    assert auto.phase == "hf" and not auto.diverged and not auto.sgd.diverged
    state = auto.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in hf_state.items())
    assert auto._check_interval == 0.4  # tried less often after a trial that did not pay


def test_cli_prints_the_switch_unless_quiet_or_json(ckpt: Path, tmp_path: Path) -> None:
    strategy = f"auto:{CHEAP},{RATES_ONLY},interval=0.25,margin=1e-9"
    base = ["finetune", str(ckpt), "--strategy", strategy]
    base += ["--budget", "12steps", "--eval-batch-size", "256", "--device", "cpu"]
    loud = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    # steps done / 12 reaches 0.25 before the 4th step
    assert "auto: switched from SGD to HF at step 4 (25% of the budget):" in " ".join(
        loud.output.split()
    )
    quiet = runner.invoke(app, [*base, "--quiet", "--out", str(tmp_path / "q")])
    assert quiet.exit_code == 0 and quiet.output == ""
    as_json = runner.invoke(app, [*base, "--json", "--out", str(tmp_path / "j")])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["steps"] == 12


def test_an_interrupted_probe_is_rolled_back(ckpt: Path) -> None:
    # first=0: the first step is a probe; the interrupt lands in its HF step after the
    # step was accepted (in the record), before auto decided anything
    auto = auto_runner(ckpt, f"{HF_CHEAP},first=0")
    start = copy.deepcopy(auto.model.state_dict())
    real_step_on = auto.hf.step_on

    def take_then_interrupt(batches, fraction):
        real_step_on(batches, fraction)
        raise KeyboardInterrupt

    auto.hf.step_on = take_then_interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        auto.step(0.0)
    state = auto.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in start.items())


def test_settle_undoes_a_trial_in_progress(ckpt: Path) -> None:
    auto = auto_runner(ckpt, f"{HF_CHEAP},lr=50,momentum=0,interval=0.2,switch_back=true")
    auto._enter_hf(0.0)
    auto._hf_window = [0.0, 1.0]
    hf_state = copy.deepcopy(auto.model.state_dict())
    assert auto.step(0.2)["phase"] == "trial"
    auto.step(0.25)
    assert not all(torch.equal(auto.model.state_dict()[k], v) for k, v in hf_state.items())
    auto.settle()  # the run ends inside the trial: HF's accepted parameters come back
    state = auto.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in hf_state.items())
    assert auto.phase == "hf" and not auto.diverged
