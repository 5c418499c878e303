"""Loading a checkpoint's source: metadata is data, never code; values are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.run.checkpoint import load_checkpoint
from hfft.experiment.run.starting_point import (
    StartingPointError,
    StartingPointOptions,
    load_starting_point,
    trusted_metadata,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(trained_run: Path) -> Path:
    return trained_run / "ckpt-02.safetensors"


def forged(tmp_path: Path, ckpt: Path, **meta: object) -> Path:
    """A copy of a real checkpoint whose hfft header says ``meta`` instead."""
    real = load_checkpoint(ckpt)
    path = tmp_path / "forged.safetensors"
    header = {**(real.metadata or {}), **meta}
    save_file(dict(real.state_dict), path, metadata={"hfft": json.dumps(header)})
    return path


def evil_file(tmp_path: Path, marker: Path) -> Path:
    """A Python file that leaves ``marker`` behind when it is executed."""
    evil = tmp_path / "evil.py"
    evil.write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef build(**kw):\n    raise SystemExit\n"
    )
    return evil


COMMANDS = {
    "finetune": ["finetune", "{ckpt}", "--budget", "2steps", "--out", "{tmp}/o", "--quiet"],
    "compare": ["compare", "{ckpt}", "-s", "sgd", "--budget", "2steps", "--out", "{tmp}/c"],
    "selftest": ["selftest", "{ckpt}", "--quiet"],
    "bench": ["bench", "{ckpt}", "--rounds", "1", "--cg-iterations", "0", "--no-memory"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("how", ["module", "file", "data-file"])
def test_metadata_naming_code_runs_nothing(
    ckpt: Path, tmp_path: Path, command: str, how: str
) -> None:
    marker = tmp_path / "PWNED"
    if how == "module":
        meta = {"model": "os:system", "model_args": {"command": f"touch {marker}"}}
    elif how == "file":
        meta = {"model": f"{evil_file(tmp_path, marker)}:build", "model_args": {}}
    else:
        meta = {"data": f"{evil_file(tmp_path, marker)}:build"}
    path = forged(tmp_path, ckpt, **meta)
    argv = [a.format(ckpt=path, tmp=tmp_path) for a in COMMANDS[command]]
    result = runner.invoke(app, [*argv, "--device", "cpu"])
    assert not marker.exists(), "code named by a checkpoint ran"
    assert result.exit_code == 2, result.output
    flag = "--data" if how == "data-file" else "--model"
    assert f"pass {flag} " in result.output and "if you trust that code" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"model": "mlp", "model_args": {"width": [1, 2]}}, "not plain values"),
        ({"model": "mlp", "model_args": {"width": {"__class__": "x"}}}, "not plain values"),
        ({"model": "mlp", "model_args": "width=3"}, "not plain values"),
        ({"model": "mlp", "model_args": {"command": "x"}}, None),  # refused by the signature
        ({"model": 3}, "is not one of hfft's models"),
        ({"data": "torchvision.datasets:CIFAR10"}, "is not one of hfft's data sets"),
        ({"batch_size": -5}, "batch_size in the metadata"),
        ({"lr": "0.1"}, "lr in the metadata"),
        ({"momentum": 5}, "momentum in the metadata"),
        ({"weight_decay": -1.0}, "weight_decay in the metadata"),
        ({"data_seed": 2**64}, "data_seed in the metadata"),
    ],
    ids=[
        "list-arg",
        "dict-arg",
        "str-args",
        "unknown-arg",
        "model-type",
        "data-module",
        "batch-size",
        "lr-type",
        "momentum",
        "weight-decay",
        "seed",
    ],
)
def test_untrusted_metadata_values_are_refused(
    ckpt: Path, tmp_path: Path, meta: dict, message: str | None
) -> None:
    path = forged(tmp_path, ckpt, **meta)
    with pytest.raises(ValueError, match=message or "does not take the argument 'command'"):
        load_starting_point(path)


def test_bad_metadata_is_refused_before_files_are_written(ckpt: Path, tmp_path: Path) -> None:
    path = forged(tmp_path, ckpt, batch_size=-5)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["finetune", str(path), "--strategy", "sgd", "--budget", "2steps", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "batch_size in the metadata" in result.output and "-5" in result.output
    assert not out.exists()


def test_named_code_is_the_users_choice(ckpt: Path, tmp_path: Path) -> None:
    # the same checkpoint loads once the user names the model and data on the command line
    path = forged(tmp_path, ckpt, model="os:system", data="evil.py:make")
    given = StartingPointOptions(model="mlp", model_args={"width": 32}, data="digits")
    src = load_starting_point(path, given)
    assert src.model_name == "mlp" and src.data_name == "digits"


def test_trusted_metadata_takes_only_what_the_user_did_not_give(ckpt: Path) -> None:
    meta = {"model": "os:system", "data": "x.py:f", "lr": 0.1, "batch_size": 8}
    got = trusted_metadata(ckpt, meta, model_given=True, data_given=True)
    assert got["lr"] == 0.1 and got["batch_size"] == 8 and "model" not in got
    with pytest.raises(StartingPointError, match="pass --model os:system if you trust"):
        trusted_metadata(ckpt, meta, model_given=False, data_given=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", 1e39, "--lr must be a positive number no larger than 3.4e38"),
        ("lr", 0.0, "--lr must be"),
        ("momentum", 5.0, r"--momentum must be a number in \[0, 1\)"),
        ("weight_decay", -1.0, "--weight-decay must be a finite number >= 0"),
        ("weight_decay", float("nan"), "--weight-decay must be a finite number >= 0"),
        ("batch_size", 0, "--batch-size must be a positive integer"),
        ("train_time", float("inf"), "--train-time must be"),
    ],
)
def test_overrides_are_checked_when_given(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StartingPointOptions(**{field: value})  # type: ignore[arg-type]


def test_labels_beyond_the_models_outputs_are_refused(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "wide.py"
    data.write_text(
        "import torch\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(200, 1, 8, 8, generator=g)\n"
        "    y = torch.arange(200) % 13\n"
        "    return (x[:150], y[:150]), (x[150:], y[150:])\n"
    )
    fixed = tmp_path / "fixed.py"
    fixed.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    )
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    pt = tmp_path / "net.pt"
    torch.save(net.state_dict(), pt)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "finetune",
            str(pt),
            "--model",
            f"{fixed}:build",
            "--data",
            f"{data}:make",
            "--lr",
            "0.1",
            "--batch-size",
            "16",
            "--strategy",
            "sgd",
            "--budget",
            "2steps",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "class labels up to 12 but the model outputs 10 classes" in result.output
    assert not out.exists()


# --- issue #23: metadata that would make a broken run look completed ----------------------


@pytest.mark.parametrize(
    "norm",
    [
        {"mean": [0.0], "std": [1e-320]},
        {"mean": [0.0], "std": [1e-13]},
        {"mean": [0.0], "std": [1e39]},
        {"mean": [1e39], "std": [1.0]},
        {"mean": [0.0], "std": [-1.0]},
    ],
    ids=["std-subnormal", "std-tiny", "std-beyond-float32", "mean-beyond-float32", "std-negative"],
)
def test_degenerate_normalisation_is_refused(ckpt: Path, tmp_path: Path, norm: dict) -> None:
    path = forged(tmp_path, ckpt, normalization=norm)
    out = tmp_path / "out"
    argv = ["finetune", str(path), "--strategy", "sgd", "--budget", "2steps"]
    result = runner.invoke(app, [*argv, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "normalisation" in result.output and "1e-12" in result.output
    assert not out.exists()


def test_normalisation_that_makes_inputs_infinite_is_refused(ckpt: Path, tmp_path: Path) -> None:
    # each statistic is within float32, but (x - mean) / std is not
    path = forged(tmp_path, ckpt, normalization={"mean": [-3e38], "std": [1e-12]})
    with pytest.raises(ValueError, match="infinite in float32"):
        load_starting_point(path)


@pytest.fixture
def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST-1D generation fails loudly: a size must be refused before it starts."""
    from hfft.experiment.data import datasets

    def generate(samples: int) -> None:
        raise AssertionError(f"generation of {samples} samples started")

    monkeypatch.setattr(datasets, "_generated_mnist1d", generate)


@pytest.mark.parametrize("samples", [999_999_999, 200_001, 9, 10**100])
def test_data_sizes_in_metadata_are_bounded_before_any_work(
    ckpt: Path, tmp_path: Path, no_generation: None, samples: int
) -> None:
    path = forged(tmp_path, ckpt, data=f"mnist1d:samples={samples}")
    with pytest.raises(StartingPointError, match="samples from 10 to 200000"):
        load_starting_point(path)


def test_data_sizes_on_the_command_line_are_bounded(tmp_path: Path, no_generation: None) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["train", "cnn1d", "--data", "mnist1d:samples=999999999", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "samples from 10 to 200000" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [{"width": 10**12}, {"num_classes": 10**9}, {"depth": 10**9}],
    ids=["width", "num-classes", "depth"],
)
def test_model_sizes_in_metadata_are_checked_before_the_model_is_built(
    ckpt: Path, tmp_path: Path, args: dict
) -> None:
    # the model would take terabytes, or a billion layers: refused against the checkpoint first
    path = forged(tmp_path, ckpt, model_args={"width": 32, **args})
    with pytest.raises(ValueError, match=r"does not fit|larger than any size of the weights"):
        load_starting_point(path)


@pytest.mark.parametrize("key", ["model", "data"])
def test_long_metadata_names_are_cut(ckpt: Path, tmp_path: Path, key: str) -> None:
    path = forged(tmp_path, ckpt, **{key: "os:" + "x" * 1_000_000})
    result = runner.invoke(app, ["finetune", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output[:300]
    assert len(result.output) < 700 and "…" in result.output


def test_long_data_options_are_cut(ckpt: Path, tmp_path: Path) -> None:
    path = forged(tmp_path, ckpt, data="mnist1d:" + "x" * 1_000_000)
    with pytest.raises(StartingPointError) as info:
        load_starting_point(path)
    assert len(str(info.value)) < 500 and "…" in str(info.value)


def test_checkpoint_key_takes_the_ema_weights_and_the_choice_is_said(
    ckpt: Path, tmp_path: Path
) -> None:
    import argparse

    sd = load_checkpoint(ckpt).state_dict
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in sd.items()}
    pt = tmp_path / "timm-style.pth.tar"
    torch.save({"state_dict": sd, "state_dict_ema": ema, "args": argparse.Namespace(lr=0.05)}, pt)
    common = dict(model="mlp", model_args={"width": 32}, data="digits", lr=0.05, batch_size=64)
    default = StartingPointOptions(**common).load(pt)
    assert any("using 'state_dict' (--checkpoint-key" in n for n in default.notes)
    picked = StartingPointOptions(**common, checkpoint_key="state_dict_ema").load(pt)
    for name, value in picked.model.state_dict().items():
        assert torch.equal(value, ema[name])
    assert StartingPointOptions(checkpoint_key="state_dict_ema").record()["checkpoint_key"] == (
        "state_dict_ema"
    )
    assert "checkpoint_key" not in StartingPointOptions().record()  # older records still match
    argv = ["finetune", str(pt), "--model", "mlp", "--model-arg", "width=32", "--data", "digits"]
    argv += ["--lr", "0.05", "--batch-size", "64", "--strategy", "sgd", "--budget", "2steps"]
    argv += ["--checkpoint-key", "state_dict_ema", "--out", str(tmp_path / "out")]
    done = runner.invoke(app, argv)
    assert done.exit_code == 0, done.output
    log = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert log["config"]["source"]["checkpoint_key"] == "state_dict_ema"
