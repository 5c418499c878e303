"""The command line: version, help without torch, bench, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfft import __version__
from hfft.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hfft {__version__}"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["bench", "--help"], ["train", "--help"], ["finetune", "--help"]],
    ids=["root", "bench", "train", "finetune"],
)
def test_help_does_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from hfft.cli import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH")


def test_python_dash_m_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hfft", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"hfft {__version__}"


def test_bench_json_reports_ratios() -> None:
    result = runner.invoke(
        app,
        [
            *("bench", "--model", "mlp", "--batch-size", "16", "--rounds", "1", "--json"),
            *("--cg-iterations", "2", "--no-memory"),
        ],
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["model"] == "mlp"
    assert entry["ratios"]["gradient"] == 1.0
    for key in ("forward", "ggn_product[func]", "ggn_product[backpack]", "sgd_step[hfft]"):
        assert entry["seconds"][key] > 0
    assert entry["peak_bytes"] == {}
    assert entry["step"]["records"]["func"]["cg_iterations"] == 2
    assert entry["targets"]["product / gradient"]["target"] == "≤ 1.2"


def test_bench_of_a_checkpoint_prints_the_tables(trained_run) -> None:
    ckpt = sorted(trained_run.glob("*.safetensors"))[-1]
    result = runner.invoke(
        app, ["bench", str(ckpt), "--batch-size", "32", "--rounds", "1", "--cg-iterations", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "GGN-vector product, func" in result.output
    assert "one HF step, 2 CG iterations" in result.output
    assert "targets" in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--model", "resnet9000"], "unknown model"),
        (["bench", "--device", "gpu"], "--device must be"),
        (["bench", "missing.safetensors", "--model", "mlp"], "not both"),
        (["bench", "missing.safetensors"], "missing.safetensors"),
    ],
    ids=["unknown-model", "bad-device", "checkpoint-and-model", "missing-checkpoint"],
)
def test_bench_errors_are_one_sentence(argv: list[str], message: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_only_finetune_and_compare_run_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["train", "mlp", "--epochs", "1", "--out", "never-written"])
    assert result.exit_code == 2
    assert "hfft train runs in one process" in result.output
    assert not Path("never-written").exists()
