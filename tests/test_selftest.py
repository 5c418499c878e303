"""hfft selftest: models that must fail and models that must pass, built-in checks, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections import OrderedDict
from io import StringIO
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import Tensor, nn
from typer.testing import CliRunner

from hfft.cli import app
from hfft.cli.render.selftest import print_selftest
from hfft.diagnostics.selftest import Check, Report, measure_cost, model_checks, selftest_model

runner = CliRunner()


class Noise(nn.Module):
    """Adds fresh Gaussian noise in every mode: a model HF cannot use."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * torch.randn_like(x)


class SumLoss:
    """Cross-entropy summed over the batch, with no ``reduction`` attribute (taken as a mean)."""

    def __call__(self, z: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(z, y, reduction="sum")


def mlp(*extra: tuple[str, nn.Module]) -> nn.Module:
    layers = [("flatten", nn.Flatten()), ("fc1", nn.Linear(16, 8)), ("act", nn.Tanh()), *extra]
    return nn.Sequential(OrderedDict([*layers, ("fc2", nn.Linear(8, 3))]))


def cnn(batchnorm: bool = False) -> nn.Module:
    layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(1, 3, 3))]
    if batchnorm:
        layers.append(("bn", nn.BatchNorm2d(3)))
    layers += [("relu", nn.ReLU()), ("flatten", nn.Flatten()), ("fc", nn.Linear(12, 3))]
    return nn.Sequential(OrderedDict(layers))


MODELS = {
    "mlp": lambda: mlp(),
    "cnn": lambda: cnn(),
    "batchnorm": lambda: cnn(batchnorm=True),
    "dropout": lambda: mlp(("drop", nn.Dropout(0.5))),
    "noise": lambda: mlp(("noise", Noise())),
}


def batch(n: int = 12) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def run(model: str, **kw) -> dict[str, Check]:
    torch.manual_seed(0)
    net = MODELS[model]()
    if model == "batchnorm":  # running statistics that differ from any batch's
        net.bn.running_mean.fill_(0.3)
        net.bn.running_var.fill_(2.0)
    x, y = batch()
    checks = model_checks(net, kw.pop("loss_fn", nn.CrossEntropyLoss()), x, y, **kw)
    return {c.name: c for c in checks}


@pytest.mark.parametrize("model", ["mlp", "cnn", "batchnorm", "dropout"])
def test_models_that_must_pass_in_eval_mode(model: str) -> None:
    checks = run(model)
    assert Report(list(checks.values())).passed
    for name, c in checks.items():
        if name.endswith("[eval]") or "[" not in name:
            assert c.status == "pass", (name, c.detail)


def test_dropout_left_in_training_mode_fails_and_names_the_fix() -> None:
    checks = run("dropout", mode="train")
    forward = checks["forward determinism [train]"]
    assert forward.status == "fail"
    assert forward.measured is not None and forward.measured > forward.tolerance  # type: ignore[operator]
    assert "dropout is active in training mode ('drop')" in forward.detail
    assert "model_mode='eval'" in forward.detail
    assert checks["product determinism [train]"].status == "fail"
    assert not Report(list(checks.values())).passed


def test_training_mode_explains_but_does_not_fail_when_eval_is_fine() -> None:
    checks = run("dropout")
    explained = checks["forward determinism [train]"]
    assert explained.status == "warn"
    assert "dropout" in explained.detail
    assert checks["forward determinism [eval]"].status == "pass"


def test_layer_drawing_random_numbers_fails_in_eval_mode() -> None:
    checks = run("noise")
    for name in ("forward determinism [eval]", "product determinism [eval]"):
        assert checks[name].status == "fail", name
    assert "'noise' (Noise) draws random numbers in eval mode" in (
        checks["forward determinism [eval]"].detail
    )
    # still a failure in training mode, where eval mode fails too
    assert checks["forward determinism [train]"].status == "fail"
    assert checks["linearisation [eval]"].status == "warn"


def test_loss_that_sums_but_is_treated_as_mean_fails_reduction() -> None:
    check = run("mlp", loss_fn=SumLoss())["reduction consistency"]
    assert check.status == "fail"
    assert "sums over the batch but is treated as a mean" in check.detail
    SumLoss.reduction = "sum"  # type: ignore[attr-defined]
    try:
        assert run("mlp", loss_fn=SumLoss())["reduction consistency"].status == "pass"
    finally:
        del SumLoss.reduction  # type: ignore[attr-defined]


def test_batchnorm_in_training_mode_with_chunks_fails() -> None:
    checks = run("batchnorm", mode="train", chunk_size=4)
    check = checks["batch independence [train]"]
    assert check.status == "fail"
    assert "BatchNorm 'bn'" in check.detail
    assert "model_mode='eval'" in check.detail
    # HF's train mode pauses the running-statistics update, so products still repeat
    assert checks["product determinism [train]"].status == "pass"


def test_report_leaves_out_the_cost_when_products_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    import hfft.diagnostics.measure

    def broken(*args, **kwargs):
        raise RuntimeError("products cannot be computed for this model")

    monkeypatch.setattr(hfft.diagnostics.measure, "linearize_curvature", broken)
    x, y = batch()
    report = selftest_model(cnn(), nn.CrossEntropyLoss(), x, y)
    assert not report.passed
    assert report.cost is None


def test_non_finite_weights_fail() -> None:
    net = MODELS["mlp"]()
    with torch.no_grad():
        net.fc2.weight[0, 0] = math.nan
    x, y = batch()
    checks = {c.name: c for c in model_checks(net, nn.CrossEntropyLoss(), x, y)}
    check = checks["finite values [eval]"]
    assert check.status == "fail"
    assert "weights" in check.detail


def test_model_mode_buffers_and_random_state_are_left_alone() -> None:
    net = MODELS["batchnorm"]().train()
    net.bn.eval()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = batch()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model_checks(net, nn.CrossEntropyLoss(), x, y)
    assert torch.equal(torch.rand(3), expected)
    assert net.training and not net.bn.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_arguments_raise_value_error() -> None:
    x, y = batch()
    with pytest.raises(ValueError, match="mode must be one of"):
        model_checks(mlp(), nn.CrossEntropyLoss(), x, y, mode="inference")
    with pytest.raises(ValueError, match="reduce to a scalar"):
        model_checks(mlp(), nn.CrossEntropyLoss(reduction="none"), x, y)
    with pytest.raises(ValueError, match="forward pass fails"):
        model_checks(nn.Linear(3, 2), nn.CrossEntropyLoss(), x, y)


def test_cost_line_fills_the_budget() -> None:
    x, y = batch()
    cost = measure_cost(cnn(), nn.CrossEntropyLoss(), x, y, budget_seconds=2.0, repeats=1)
    assert min(cost.forward_s, cost.gradient_s, cost.setup_s, cost.product_s) > 0
    assert cost.hf_step_s == pytest.approx(cost.setup_s + 50 * cost.product_s + 5 * cost.forward_s)
    assert cost.hf_steps_in_budget == int(2.0 // cost.hf_step_s)
    assert cost.sgd_steps_in_budget == int(2.0 // cost.gradient_s)
    assert cost.peak_memory_bytes is None  # CPU
    assert measure_cost(cnn(), nn.CrossEntropyLoss(), x, y, repeats=1).hf_steps_in_budget is None


def test_report_json_and_table() -> None:
    x, y = batch()
    report = selftest_model(mlp(("drop", nn.Dropout(0.5))), nn.CrossEntropyLoss(), x, y)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True
    assert data["counts"]["fail"] == 0 and data["counts"]["warn"] >= 1
    assert {"name", "status", "measured", "tolerance", "detail"} <= set(data["checks"][0])
    out = StringIO()
    print_selftest(Console(file=out, width=80, color_system=None), report)
    text = out.getvalue()
    assert "forward determinism [train]" in text  # brackets survive Rich markup
    assert "selftest passed" in text
    assert "HF step ≈ setup + 50 CG products" in text


def test_builtin_checks_catch_wrong_products(monkeypatch: pytest.MonkeyPatch) -> None:
    from hfft.diagnostics.selftest import builtin_checks
    from hfft.optim.curvature import CurvatureOperator

    matvec = CurvatureOperator.matvec

    def off_by_a_millionth(self: CurvatureOperator, v: Tensor) -> Tensor:
        return matvec(self, v) * (1 + 1e-6)

    monkeypatch.setattr(CurvatureOperator, "matvec", off_by_a_millionth)
    checks = {c.name: c for c in builtin_checks("cpu")}
    for name in ("GGN cnn/ce [cpu]", "Hessian mlp/ce [cpu]"):
        assert checks[name].status == "fail", name
        assert "wrong curvature" in checks[name].detail
    assert checks["CG, SPD 12×12 [cpu]"].status == "pass"


# -- command line ------------------------------------------------------------------------


BAD_MODEL = """
import torch
from torch import nn


class Noise(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def make(num_classes, in_channels, input_size):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * input_size**2, 8), Noise(), nn.Linear(8, num_classes)
    )
"""


@pytest.fixture
def bad_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD_MODEL))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Identity(), nn.Linear(8, 10))
    torch.save(net.state_dict(), tmp_path / "bad.pt")
    return tmp_path / "bad.pt", f"{tmp_path / 'bad.py'}:make"


def test_cli_builtin_json_all_pass() -> None:
    result = runner.invoke(app, ["selftest", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["subject"]["devices"] == ["cpu"]
    assert all(c["status"] == "pass" for c in data["checks"]), data["checks"]
    names = [c["name"] for c in data["checks"]]
    assert len(names) == len(set(names)) >= 10


def test_cli_builtin_table() -> None:
    result = runner.invoke(app, ["selftest", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "GGN cnn/ce [cpu]" in result.stdout
    assert "selftest passed" in result.stdout


def test_cli_bad_model_exits_1(bad_checkpoint: tuple[Path, str]) -> None:
    ckpt, model = bad_checkpoint
    argv = ["selftest", str(ckpt), "--model", model, "--data", "synthetic", "--batch-size", "16"]
    result = runner.invoke(app, [*argv, "--device", "cpu", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    failed = {c["name"] for c in data["checks"] if c["status"] == "fail"}
    assert "forward determinism [eval]" in failed
    assert data["cost"]["hf_steps_in_budget"] is None  # no training time, no budget


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["missing.pt"], "does not exist"),
        (
            ["{ckpt}", "--model", "{model}", "--data", "synthetic", "--budget", "3steps"],
            "time budget",
        ),
        (["--model", "mlp"], "give one or drop them"),
    ],
    ids=["missing-checkpoint", "step-budget", "options-without-checkpoint"],
)
def test_cli_bad_input_exits_2(
    extra: list[str], message: str, bad_checkpoint: tuple[Path, str], tmp_path: Path
) -> None:
    ckpt, model = bad_checkpoint
    argv = [a.format(ckpt=ckpt, model=model) for a in extra]
    if argv[0] == "missing.pt":
        argv[0] = str(tmp_path / "missing.pt")
    result = runner.invoke(app, ["selftest", *argv, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_selftest_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from hfft.cli import app\n"
        "try:\n"
        "    app(['selftest', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH")


# -- CUDA (exercised where a GPU is present) ---------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_builtin_checks_pass_on_cuda_and_agree_with_cpu() -> None:
    from hfft.diagnostics.selftest import builtin_checks

    checks = {c.name: c for c in builtin_checks("cuda")}
    assert checks["CPU vs cuda"].status == "pass"
    assert all(c.status != "fail" for c in checks.values()), checks


@cuda
def test_model_checks_on_cuda() -> None:
    x, y = batch()
    net = cnn(batchnorm=True).cuda()
    report = selftest_model(net, nn.CrossEntropyLoss(), x.cuda(), y.cuda(), budget_seconds=1.0)
    assert report.passed, [c for c in report.checks if c.status == "fail"]
    assert report.cost is not None and report.cost.peak_memory_bytes is not None
    noisy = {
        c.name: c
        for c in model_checks(
            mlp(("noise", Noise())).cuda(), nn.CrossEntropyLoss(), x.cuda(), y.cuda()
        )
    }
    assert noisy["forward determinism [eval]"].status == "fail"
