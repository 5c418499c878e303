"""A user's own problems end to end: selftest, finetune (HF and SGD) and compare on each.

Each case is trained by the user's plain loop in ``tests/user_problems.py``,
saved with ``torch.save`` (or as a Lightning-style ``.ckpt``), and handed to
the command line with ``--model`` and ``--data`` naming that file. The first
check everywhere: hfft's evaluation at budget fraction 0 equals the user's own
evaluation of the same checkpoint on the same split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tests.user_problems as up
from hfft.cli import app

FILE = Path(up.__file__).resolve()
runner = CliRunner()


def spec(name: str) -> str:
    return f"{FILE}:{name}"


def hfft(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def finetune_json(ckpt: Path, out: Path, *source: str, strategy: str = "hf:m=64,cg_max_iter=5"):
    text = hfft(
        "finetune", ckpt, *source, "--strategy", strategy, "--budget", "3steps",
        "--eval-points", "1", "--out", out, "--json", "--device", "cpu",
    )  # fmt: skip
    return json.loads(text[text.index("{") :])


def saved(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


# --- tabular classification -------------------------------------------------------------------


@pytest.fixture(scope="module")
def wine_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = up.tabular_mlp()
    up.plain_training(model, up.wine(), nn.CrossEntropyLoss(), epochs=5, lr=0.02)
    return saved(model, tmp_path_factory.mktemp("wine") / "wine.pt")


def test_tabular_start_equals_the_users_own_evaluation(wine_ckpt: Path, tmp_path: Path) -> None:
    model = up.tabular_mlp()
    model.load_state_dict(torch.load(wine_ckpt, weights_only=True))
    (_, _), (test_x, test_y) = up.wine()
    loss, acc = up.own_evaluation(model, test_x, test_y, nn.CrossEntropyLoss())
    src = ("--model", spec("tabular_mlp"), "--data", spec("wine"))
    result = finetune_json(wine_ckpt, tmp_path / "hf", *src)
    assert result["initial"]["test_loss"] == pytest.approx(loss, rel=1e-6)
    assert result["initial"]["test_accuracy"] == pytest.approx(acc)
    # (train, test): nothing held out unasked, so no best to choose, and hfft says so
    assert "best.safetensors" in result["missing"] and "valid_loss" not in result["initial"]
    assert result["steps"] == 3 and result["final"]["test_loss"] < loss


def test_tabular_selftest_sgd_and_compare(wine_ckpt: Path, tmp_path: Path) -> None:
    src = ("--model", spec("tabular_mlp"), "--data", spec("wine"))
    out = runner.invoke(app, ["selftest", str(wine_ckpt), *src, "--batch-size", "64", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output[out.output.index("{") :])
    assert report["passed"] and report["subject"]["task"]["kind"] == "classification"
    sgd = finetune_json(
        wine_ckpt, tmp_path / "sgd", *src, "--lr", "0.01", "--batch-size", "32", strategy="sgd"
    )
    assert sgd["steps"] == 3
    held = finetune_json(wine_ckpt, tmp_path / "held", *src, "--valid-fraction", "0.2")
    assert "best.safetensors" in held["files"]
    text = hfft(
        "compare", wine_ckpt, *src,
        "-s", "sgd:lr=0.01,batch_size=32", "-s", "hf:m=64,cg_max_iter=5",
        "--seeds", "1", "--budget", "2steps", "--eval-points", "1", "--out", tmp_path / "cmp",
        "--json", "--device", "cpu", "--valid-fraction", "0.2",
    )  # fmt: skip
    summary = json.loads(text[text.index("{") :])
    assert summary["metrics"] == ["test_accuracy", "train_eval_loss"]
    assert len(summary["checkpoints"][0]["rankings"]["test_accuracy"]) == 2


def test_a_three_way_factory_gives_the_validation_split(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = up.tabular_mlp(features=30, classes=2)
    up.plain_training(model, up.breast_cancer(), nn.CrossEntropyLoss(), epochs=3, lr=0.01)
    ckpt = saved(model, tmp_path / "bc.pt")
    (_, _), (valid_x, valid_y), _ = up.breast_cancer()
    loss, acc = up.own_evaluation(model, valid_x, valid_y, nn.CrossEntropyLoss())
    src = (
        "--model", spec("tabular_mlp"), "--model-arg", "features=30", "--model-arg", "classes=2",
        "--data", spec("breast_cancer"),
    )  # fmt: skip
    result = finetune_json(ckpt, tmp_path / "hf", *src)
    assert result["initial"]["valid_loss"] == pytest.approx(loss, rel=1e-6)
    assert result["initial"]["valid_accuracy"] == pytest.approx(acc)
    assert "best.safetensors" in result["files"]


# --- regression -------------------------------------------------------------------------------


def test_regression_reports_rmse_and_r2_and_never_an_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = up.regression_mlp()
    up.plain_training(model, up.diabetes(), nn.MSELoss(), epochs=1, lr=0.002)
    ckpt = saved(model, tmp_path / "diabetes.pt")
    (_, _), (test_x, test_y) = up.diabetes()
    loss, _ = up.own_evaluation(model, test_x, test_y, nn.MSELoss(), class_dim=None)
    src = ("--model", spec("regression_mlp"), "--data", spec("diabetes"))
    result = finetune_json(ckpt, tmp_path / "hf", *src)
    initial = result["initial"]
    assert initial["test_loss"] == pytest.approx(loss, rel=1e-6)
    assert initial["test_rmse"] == pytest.approx(loss**0.5, rel=1e-6)
    assert not any("accuracy" in k for k in initial) and "test_r2" in initial
    assert result["final"]["test_loss"] < loss
    text = hfft(
        "compare", ckpt, *src, "-s", "sgd:lr=0.01,batch_size=32", "-s", "hf:m=64,cg_max_iter=5",
        "--seeds", "1", "--budget", "2steps", "--eval-points", "1", "--out", tmp_path / "cmp",
        "--device", "cpu",
    )  # fmt: skip
    assert "best test loss" in text and "accuracy" not in text


# --- sequences --------------------------------------------------------------------------------


def test_a_token_classifier_with_dict_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = up.TokenClassifier()
    up.plain_training(model, up.token_classes(), nn.CrossEntropyLoss(), epochs=2, lr=0.05)
    ckpt = saved(model, tmp_path / "tokens.pt")
    (_, _), (test_x, test_y) = up.token_classes()
    loss, acc = up.own_evaluation(model, test_x, test_y, nn.CrossEntropyLoss())
    src = ("--model", spec("TokenClassifier"), "--data", spec("token_classes"))
    result = finetune_json(ckpt, tmp_path / "hf", *src)
    assert result["initial"]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert result["initial"]["test_accuracy"] == pytest.approx(acc)
    log = json.loads((tmp_path / "hf" / "metrics.json").read_text())
    assert "reverse-over-reverse" not in log["curvature_products"]
    assert all(s["cg_iterations"] > 0 for s in log["steps"])
    out = runner.invoke(app, ["selftest", str(ckpt), *src, "--batch-size", "32", "--json"])
    assert out.exit_code == 0, out.output  # dict inputs are checked like a tensor
    report = json.loads(out.output[out.output.index("{") :])
    assert report["passed"]


def test_a_per_token_language_model_with_ignored_positions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = up.TinyLanguageModel()
    loss_fn = nn.CrossEntropyLoss()  # the user's: classes last, so they permute
    (train, test) = up.next_tokens()

    def permuted(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(out.transpose(1, 2), y)

    up.plain_training(model, (train, test), permuted, epochs=2, lr=0.05)
    ckpt = saved(model, tmp_path / "lm.pt")
    model.eval()
    with torch.no_grad():
        out = model(test[0])
    own_loss = float(permuted(out, test[1]))
    keep = test[1] != -100
    own_acc = float(((out.argmax(-1) == test[1]) & keep).sum() / keep.sum())
    src = ("--model", spec("TinyLanguageModel"), "--data", spec("next_tokens"))
    result = finetune_json(ckpt, tmp_path / "hf", *src)
    assert result["initial"]["test_loss"] == pytest.approx(own_loss, rel=1e-5)
    assert result["initial"]["test_accuracy"] == pytest.approx(own_acc)
    assert result["final"]["test_loss"] < own_loss
    assert "final.safetensors" in result["files"]  # the causal mask's -inf is no divergence


# --- checkpoints from the ecosystem -------------------------------------------------------------


def test_a_lightning_checkpoint_is_read_with_its_prefix_said(wine_ckpt: Path, tmp_path: Path):
    weights = torch.load(wine_ckpt, weights_only=True)
    ckpt = tmp_path / "epoch=4-step=20.ckpt"
    torch.save(
        {
            "epoch": 4,
            "global_step": 20,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {
                **{f"model.{k}": v for k, v in weights.items()},
                "criterion.weight": torch.ones(3),  # the LightningModule's loss, not the model
            },
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.02}]}],
            "hyper_parameters": {"lr": 0.02},
        },
        ckpt,
    )
    result = runner.invoke(
        app,
        ["finetune", str(ckpt), "--model", spec("tabular_mlp"), "--data", spec("wine"),
         "--strategy", "sgd:lr=0.01,batch_size=32", "--budget", "2steps", "--eval-points", "1",
         "--out", str(tmp_path / "ft"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "stripped prefix 'model.'" in result.output
        and "left out 1 entry outside it" in result.output
    )


# --- MNIST-1D and the ecosystem's models ----------------------------------------------------------


@pytest.mark.slow
def test_mnist1d_cnn_trains_and_fine_tunes(tmp_path: Path) -> None:
    hfft("train", "cnn1d", "--out", tmp_path / "run", "--epochs", "3", "--checkpoints", "1",
         "--device", "cpu")  # fmt: skip
    ckpt = tmp_path / "run" / "ckpt-01.safetensors"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["data"]["name"] == "mnist1d" and meta["data"]["train_size"] == 3600
    result = finetune_json(ckpt, tmp_path / "hf", strategy="hf:m=256,cg_max_iter=5")
    assert result["final"]["train_eval_loss"] < result["initial"]["train_eval_loss"]


@pytest.mark.slow
def test_torchvision_resnet18_on_the_users_upsampled_digits(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    (train, test) = up.digits_rgb32()
    up.plain_training(model, (train, test), nn.CrossEntropyLoss(), epochs=1, lr=0.01, batch=64)
    ckpt = saved(model, tmp_path / "resnet.pt")
    loss, acc = up.own_evaluation(model, *test, nn.CrossEntropyLoss())
    src = ("--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10",
           "--data", spec("digits_rgb32"))  # fmt: skip
    result = finetune_json(ckpt, tmp_path / "hf", *src, strategy="hf:m=64,cg_max_iter=3")
    assert result["initial"]["test_loss"] == pytest.approx(loss, rel=1e-4)
    assert result["initial"]["test_accuracy"] == pytest.approx(acc)
    assert sum(s["accepted"] for s in json.loads(
        (tmp_path / "hf" / "metrics.json").read_text())["steps"]) >= 1  # fmt: skip


# --- every example of docs/user-problems.md: selftest, HF and SGD, compare --------------------

_MULTILABEL = ("--model-arg", "features=64", "--model-arg", "classes=3", "--task", "multilabel")
_OWN_LOSS = ("--loss", spec("smoothed_cross_entropy"), "--task", "classification")
EXAMPLES = {
    "regression": ("diabetes.pt", "regression_mlp", "diabetes", ()),
    "multilabel": ("properties.pt", "tabular_mlp", "digit_properties", _MULTILABEL),
    "own-loss": ("wine.pt", "tabular_mlp", "wine", _OWN_LOSS),
    "tokens": ("tokens.pt", "TokenClassifier", "token_classes", ()),
    "language-model": ("lm.pt", "TinyLanguageModel", "next_tokens", ()),
}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    up.save_examples(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EXAMPLES))
def test_each_example_selftests_finetunes_and_compares(examples: Path, tmp_path: Path, case: str):
    name, model, data, extra = EXAMPLES[case]
    ckpt = examples / name
    src = ("--model", spec(model), "--data", spec(data), *extra)
    out = runner.invoke(app, ["selftest", str(ckpt), *src, "--batch-size", "32", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{") :])["passed"]
    hf = finetune_json(ckpt, tmp_path / "hf", *src)
    sgd = finetune_json(ckpt, tmp_path / "sgd", *src, strategy="sgd:lr=0.01,batch_size=32")
    metrics = [k for k in hf["initial"] if k.startswith(("train_eval_", "valid_", "test_"))]
    assert metrics and all(hf["initial"][k] == sgd["initial"][k] for k in metrics)
    assert hf["final"]["train_eval_loss"] < hf["initial"]["train_eval_loss"]
    text = hfft(
        "compare", ckpt, *src, "-s", "sgd:lr=0.01,batch_size=32", "-s", "hf:m=64,cg_max_iter=5",
        "--seeds", "1", "--budget", "2steps", "--eval-points", "1", "--out", tmp_path / "cmp",
        "--json", "--device", "cpu",
    )  # fmt: skip
    summary = json.loads(text[text.index("{") :])
    assert len(summary["checkpoints"][0]["rankings"][summary["metrics"][0]]) == 2
