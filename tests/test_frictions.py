"""The smaller frictions of a first session (issue 24), one regression test each.

Help and tables at 80 columns, the user's project folder on ``sys.path``, the
SGD settings a run lacks, the commands of README.md and docs/user-problems.md
as written, a folder named ``hfft`` in the way, and Figure 2's look-alike
colours.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from io import StringIO
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from rich.console import Console
from typer.testing import CliRunner

from hfft.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "finetune", "compare", "study", "selftest", "bench", "demo")


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


# --- 1. nothing is cut at 80 columns ---------------------------------------------------------


@pytest.mark.parametrize("command", [*COMMANDS, None], ids=[*COMMANDS, "hfft"])
def test_help_at_80_columns_cuts_nothing(command: str | None) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    cut = [line for line in result.output.splitlines() if "…" in line]
    assert not cut, "\n".join(cut)


def test_help_at_80_columns_keeps_the_strategy_examples_whole() -> None:
    result = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "80"})
    from hfft.experiment.strategies.registry import entries

    examples = [e.example for e in entries() if e.example]
    assert "hf:m=2048,damping=0.5" in examples
    for example in examples:
        assert example in result.output


def test_the_ranking_table_at_80_columns_shows_every_strategy_name_whole() -> None:
    from hfft.cli.render.summaries import ranking_table
    from hfft.experiment.strategies.registry import entries

    STRATEGIES = [e.name for e in entries()]

    names = [*sorted(STRATEGIES, key=len, reverse=True)[:6], "hf:m=2048", "auto:m=256"]
    ranked = [
        {"strategy": s, "rank": i + 1, "mean": 0.9 - 0.01 * i, "q25": 0.89, "q75": 0.91,
         "values": [0.9] * 5, "tied_with": [n for n in names if n != s][:3]}
        for i, s in enumerate(names)
    ]  # fmt: skip
    entry = {
        "checkpoint": "runs/digits/ckpt-10.safetensors",
        "start": {"test_accuracy": 0.85},
        "rankings": {"test_accuracy": ranked},
        "time_to_target": {"metric": "test_accuracy", "baseline": "sgd", "target": 0.9,
                           "fractions": dict.fromkeys(names, 0.5)},
    }  # fmt: skip
    console = Console(file=StringIO(), width=80, color_system=None)
    console.print(ranking_table(entry, "test_accuracy"))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in names:
        assert re.search(rf"│ {re.escape(name)} +│", text), name


# --- 2. the user's project folder is on sys.path for the whole run ----------------------------

MY_PROJECT = """
import torch
from torch import nn


def data():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return (x[:48], y[:48]), (x[48:], y[48:])


def build(num_classes=2):
    import helper  # a module beside this file, imported when hfft calls the factory

    width = helper.WIDTH
    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, num_classes))
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_project.py").write_text(MY_PROJECT)
    (folder / "helper.py").write_text("WIDTH = 7\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    for name in ("my_project", "helper"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return folder


def test_a_module_spec_is_found_in_the_current_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfft.experiment.data.factories import load_factory

    monkeypatch.chdir(project)
    (train_x, _), _ = load_factory("my_project:data")()
    assert train_x.shape == (48, 4)
    assert load_factory("my_project:build")()[0].out_features == 7


def test_a_factory_file_imports_a_sibling_module_when_called(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfft.experiment.data.factories import load_factory

    monkeypatch.chdir(tmp_path)  # not the project's folder
    build = load_factory(f"{project / 'my_project.py'}:build")
    assert build()[0].out_features == 7


# --- 3. the SGD settings a run lacks, and only those -----------------------------------------


@pytest.mark.parametrize(
    ("strategy", "lr", "batch_size", "missing", "given"),
    [
        ("sgd:lr=0.002", None, None, "batch size", "learning rate"),
        ("sgd:batch_size=32", None, None, "learning rate", "batch size"),
        ("sgd", 0.1, None, "batch size", "learning rate"),
        ("sgd", None, None, "learning rate and batch size", None),
    ],
    ids=["rate-given", "batch-given", "rate-from-checkpoint", "neither"],
)
def test_a_missing_sgd_setting_is_named_alone(
    strategy: str, lr: float | None, batch_size: int | None, missing: str, given: str | None
) -> None:
    from hfft.experiment.strategies.registry import parse_strategy
    from hfft.experiment.strategies.runners import sgd_settings

    with pytest.raises(ValueError, match="needs the training") as info:
        sgd_settings(parse_strategy(strategy), lr, batch_size)
    message = str(info.value)
    assert f"needs the training {missing}," in message
    flags = {"learning rate": "--lr", "batch size": "--batch-size"}
    for what, flag in flags.items():
        assert (flag in message) == (what in missing)
    if given is not None:
        assert given not in message


# --- 4. the commands of the README and of docs/user-problems.md run as written ---------------


def test_the_readme_optimizer_snippet_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    (code,) = _blocks(_section(readme, "The optimizer in your own loop"), "python")
    exec(compile(code, "README.md", "exec"), {})


def test_the_readme_own_model_commands_name_existing_options() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = " ".join(_blocks(_section(readme, "Your own model, data and loss"), "bash"))
    commands = commands.replace("\\\n", " ")
    for line in re.findall(r"hfft (\w+) ([^\n]*)", commands):
        command, args = line
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        for flag in re.findall(r"(?<!\S)(--[a-z-]+)", args.split("#")[0]):
            assert flag in result.output, (command, flag)
    assert {"selftest", "finetune", "compare"} <= set(re.findall(r"hfft (\w+)", commands))


SLOW_SECTIONS = ("MNIST-1D with the 1-D CNN", "Library models: torchvision's ResNet-18")
"""Sections of docs/user-problems.md too slow for a test (100 epochs; ResNet-18 on a CPU)."""


@pytest.mark.slow
def test_the_user_problems_page_runs_in_order_as_written(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "user-problems.md").read_text()
    sections = re.split(r"\n(?=## )", page)
    blocks = [
        block
        for section in sections
        if not section.startswith(tuple(f"## {s}" for s in SLOW_SECTIONS))
        for block in _blocks(section, "bash")
    ]
    assert len(blocks) >= 8
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, run in (("hfft", f'"{sys.executable}" -m hfft'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "tests").symlink_to(ROOT / "tests")  # the page's paths are from the repository root
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STEPS": "1"}
    script = "set -euo pipefail\n" + "\n".join(blocks)
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outs = re.findall(r"--out (\S+)", script)
    assert len(outs) == len(set(outs)), "two commands share an --out"
    for out in outs:
        assert (work / out).is_dir(), out


# --- 5. a folder named hfft in the current directory -----------------------------------------


def test_the_example_names_a_folder_that_hides_the_package(tmp_path: Path) -> None:
    (tmp_path / "hfft").mkdir()
    probe = subprocess.run(
        [sys.executable, "-c", "import hfft; print(getattr(hfft, '__file__', None))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if probe.stdout.strip() != "None":
        pytest.skip("on this install a bare folder named hfft hides nothing")
    done = subprocess.run(
        [sys.executable, "-m", "hfft.example"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert str((tmp_path / "hfft").resolve()) in line
    assert "run from another folder or rename" in line
    assert "Traceback" not in done.stderr


def test_the_installed_package_is_not_taken_for_a_shadow() -> None:
    from hfft.example import shadowing_folder

    assert shadowing_folder() is None


# --- 6. every strategy of a comparison looks different ---------------------------------------


def test_every_strategy_has_its_own_colour_and_line_style() -> None:
    from hfft.analysis.plots import strategy_colors, strategy_linestyle
    from hfft.experiment.strategies.registry import entries

    STRATEGIES = [e.name for e in entries()]

    labels = [s for s in STRATEGIES if s != "hf"] + ["hf:m=256", "hf:m=1024", "hf:m=2048"]
    colors = strategy_colors(labels)
    styles = {s: (colors[s], strategy_linestyle(s)) for s in labels}
    assert len(set(styles.values())) == len(labels)
    # a colour close to another's comes with another line style
    for a, b in combinations(labels, 2):
        distance = np.linalg.norm(np.subtract(to_rgb(colors[a]), to_rgb(colors[b])))
        assert distance > 0.25 or strategy_linestyle(a) != strategy_linestyle(b), (a, b)
    adam, adamw = (np.array(to_rgb(colors[s])) for s in ("adam", "adamw"))
    assert np.linalg.norm(adam - adamw) > 0.6  # not two shades of one olive
    assert strategy_linestyle("adam") != strategy_linestyle("sgd")
    assert strategy_linestyle("sgd") == strategy_linestyle("hf:m=256") == "-"


def test_the_budget_curves_draw_the_line_styles(tmp_path: Path) -> None:
    from matplotlib.axes import Axes

    from hfft.analysis import plots
    from tests.test_plots import RUNS

    drawn: list[str] = []
    original = Axes.plot

    def spy(self: Axes, *args: object, **kwargs: object) -> object:
        drawn.append(str(kwargs.get("linestyle")))
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Axes, "plot", spy)
        plots.plot_budget_curves(RUNS, tmp_path / "curves.png", checkpoint="ckpt-10")
    strategies = {r.strategy for r in RUNS}
    assert set(drawn) == {plots.strategy_linestyle(s) for s in strategies}
