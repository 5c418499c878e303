"""The command line: version, help without torch, bench, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hfft import __version__
from hfft.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hfft {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"]], ids=["root", "bench"])
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
        app, ["bench", "--model", "mlp", "--batch-size", "16", "--rounds", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["model"] == "mlp"
    assert entry["ratios"]["gradient"] == 1.0
    for key in ("forward", "ggn_product[func]", "ggn_product[backpack]"):
        assert entry["seconds"][key] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--model", "resnet9000"], "unknown model"),
        (["bench", "--device", "gpu"], "--device must be"),
    ],
    ids=["unknown-model", "bad-device"],
)
def test_bench_errors_are_one_sentence(argv: list[str], message: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
