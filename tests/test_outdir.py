"""Output folders: the lock, the owner check, staging and the swap, what killed runs left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfft.experiment.run.run_folder import (
    FolderBusy,
    FolderTaken,
    RunFolder,
    check_owner,
    clean_stale,
    locked_folder,
)

HOLD_LOCK = """
import sys, time
from pathlib import Path
from hfft.experiment.run.run_folder import locked_folder
with locked_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_folder_fails_at_once(tmp_path: Path) -> None:
    target = tmp_path / "out"
    proc = _holder(target)
    try:
        start = time.perf_counter()
        with pytest.raises(FolderBusy, match=f"another hfft run is writing to {target}"):
            with locked_folder(target):
                pass
        assert time.perf_counter() - start < 5
    finally:
        proc.kill()
        proc.communicate()


def test_the_lock_of_a_killed_run_is_not_stale(tmp_path: Path) -> None:
    target = tmp_path / "out"
    proc = _holder(target)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    with locked_folder(target):  # the kernel released it with the process
        pass


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), locked_folder(target):
        assert target.is_dir()
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()


def _record(folder: Path, config: str, *weights: str) -> None:
    """A fine-tuning run's files as hfft writes them: weights listed in metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in weights:
        (folder / name).write_text(f"{config} weights")
    listed = {name: "0" * 64 for name in weights}
    record = {"kind": "hfft-finetune", "config": config, "files": listed}
    (folder / "metrics.json").write_text(json.dumps(record))


def _same(folder: Path) -> bool:
    return json.loads((folder / "metrics.json").read_text())["config"] == "mine"


@pytest.mark.parametrize(
    ("config", "overwrite", "expected"),
    [(None, False, "empty"), ("mine", False, "same"), ("theirs", True, "overwrite")],
    ids=["empty", "same-run", "overwrite"],
)
def test_check_owner(tmp_path: Path, config: str | None, overwrite: bool, expected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".hfft.metrics.json.x1y2z3w4.tmp").write_text("{")  # scratch does not count
    if config is not None:
        _record(out, config, "final.safetensors")
    assert check_owner(out, _same, overwrite) == expected


def test_another_runs_folder_is_refused(tmp_path: Path) -> None:
    _record(tmp_path / "out", "theirs", "final.safetensors")
    with pytest.raises(FolderTaken, match=r"holds another run's files.*--overwrite"):
        check_owner(tmp_path / "out", _same, overwrite=False)


def test_commit_swaps_the_new_run_in_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _record(target, "mine", "final.safetensors", "best.safetensors")
    with RunFolder(target, _same, overwrite=False) as folder:
        assert folder.note is not None and "replacing the earlier run" in folder.note
        _record(folder.staging, "mine", "final.safetensors")
        assert (target / "best.safetensors").exists()  # nothing changes until the swap
        folder.commit()
    assert sorted(p.name for p in target.iterdir()) == ["final.safetensors", "metrics.json"]
    assert (target / "final.safetensors").read_text() == "mine weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


def test_a_failed_run_leaves_the_old_folder_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _record(target, "mine", "final.safetensors")
    with pytest.raises(RuntimeError), RunFolder(target, _same, overwrite=False) as folder:
        _record(folder.staging, "mine", "final.safetensors", "best.safetensors")
        raise RuntimeError("diverged into a bug")
    assert sorted(p.name for p in target.iterdir()) == ["final.safetensors", "metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_what_killed_runs_left_is_cleaned_up(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    stale = tmp_path / ".out.staging-99999"
    stale.mkdir()
    (stale / "best.safetensors").write_text("half a run")
    (target / ".hfft.metrics.json.abc12345.tmp").write_text("{")
    (target / "keep.txt").write_text("x")
    (target / ".notes.tmp").write_text("the user's")  # not hfft's naming: stays
    with locked_folder(target):
        clean_stale(target)
    assert not stale.exists()
    assert sorted(p.name for p in target.iterdir()) == [".notes.tmp", "keep.txt"]


def test_a_signal_during_the_swap_waits_for_it(tmp_path: Path) -> None:
    from hfft.experiment.interrupts import signals_held

    target = tmp_path / "out"
    with RunFolder(target, _same, overwrite=False) as folder:
        _record(folder.staging, "mine", "final.safetensors")
        real_swap = folder._swap

        def interrupted_swap() -> None:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the folder is swapped
            real_swap()

        folder._swap = interrupted_swap  # type: ignore[method-assign]
        with signals_held(deliver=False) as caught:
            folder.commit()
        assert caught == [signal.SIGINT]
    assert _same(target) and (target / "final.safetensors").read_text() == "mine weights"


# --- hfft never deletes or replaces a file it did not write (end to end) ---

TRAIN = ["train", "mlp", "--data", "digits", "--epochs", "4", "--lr", "0.05"]
TRAIN += ["--batch-size", "64", "--momentum", "0.9", "--weight-decay", "1e-4"]
TRAIN += ["--checkpoints", "2", "--seed", "1", "--model-arg", "width=32", "--device", "cpu"]
"""The configuration of conftest's ``trained_run``: a rerun of it into its folder is "the same"."""


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` with its bytes (``None`` for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def _invoke(*argv: str):
    from typer.testing import CliRunner

    from hfft.cli import app

    return CliRunner().invoke(app, [*argv, "--quiet"])


@pytest.fixture
def train_copy(trained_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "train"))


def _refused(result, entry: str) -> None:
    assert result.exit_code == 2, result.output
    assert f"holds {entry!r}, which is not a file of an hfft run there" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["rerun", "overwrite"])
def test_a_training_rerun_never_deletes_the_users_files(
    train_copy: Path, overwrite: list[str]
) -> None:
    (train_copy / "NOTES.md").write_text("my notes")
    (train_copy / "analysis").mkdir()
    (train_copy / "analysis" / "plot.csv").write_text("1,2")
    before = _tree(train_copy)
    _refused(_invoke(*TRAIN, "--out", str(train_copy), *overwrite), "NOTES.md")
    assert _tree(train_copy) == before


def test_a_training_rerun_leaves_other_hfft_runs_inside_its_folder(train_copy: Path) -> None:
    ft = train_copy / "finetune-sgd"
    assert _invoke("finetune", str(train_copy / "ckpt-02.safetensors"), "--strategy", "sgd",
                   "--budget", "3steps").exit_code == 0  # fmt: skip
    kept = _tree(ft)
    old = (train_copy / "ckpt-02.safetensors").read_bytes()
    result = _invoke(*TRAIN, "--out", str(train_copy), "--epochs", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert _tree(ft) == kept  # another run of hfft's, not this training's: left alone
    names = sorted(p.name for p in train_copy.iterdir())
    assert names == [
        "ckpt-01.safetensors",
        "ckpt-02.safetensors",
        "evaluations.csv",
        "finetune-sgd",
        "run.json",
    ]
    assert (train_copy / "ckpt-02.safetensors").read_bytes() != old


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["rerun", "overwrite"])
def test_a_finetune_rerun_never_deletes_the_users_files(
    trained_run: Path, tmp_path: Path, overwrite: list[str]
) -> None:
    out = tmp_path / "ft"
    base = ["finetune", str(trained_run / "ckpt-02.safetensors"), "--strategy", "sgd"]
    base += ["--budget", "3steps", "--out", str(out)]
    assert _invoke(*base).exit_code == 0
    (out / "README-mine.txt").write_text("mine")
    before = _tree(out)
    _refused(_invoke(*base, *overwrite), "README-mine.txt")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no staging left


@pytest.mark.parametrize("command", ["train", "finetune", "compare", "study"])
def test_overwrite_never_empties_a_folder_that_holds_no_hfft_run(
    trained_run: Path, tmp_path: Path, command: str
) -> None:
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "main.tex").write_text("\\documentclass{book}")
    (thesis / "chapters" / "one.tex").write_text("Once upon a time")
    before = _tree(thesis)
    ckpt = str(trained_run / "ckpt-02.safetensors")
    argv = {
        "train": [*TRAIN, "--overwrite"],
        "finetune": ["finetune", ckpt, "--budget", "3steps", "--overwrite"],
        "compare": [
            "compare",
            ckpt,
            "-s",
            "sgd",
            "--seeds",
            "1",
            "--budget",
            "3steps",
            "--overwrite",
        ],
        "study": ["study", "mlp", "--data", "digits", "--epochs", "1", "-s", "sgd"],
    }[command]
    _refused(_invoke(*argv, "--out", str(thesis)), "chapters/")
    assert _tree(thesis) == before


@pytest.mark.parametrize(
    ("command", "where"),
    [("finetune", "same"), ("finetune", "above"), ("compare", "same"), ("compare", "above")],
)
def test_a_run_never_writes_into_its_inputs_folder(
    train_copy: Path, command: str, where: str
) -> None:
    before = _tree(train_copy)
    ckpt = str(train_copy / "ckpt-02.safetensors")
    out = train_copy if where == "same" else train_copy.parent
    argv = [command, ckpt, "--budget", "3steps", "--out", str(out), "--overwrite"]
    argv += ["-s", "sgd", "--seeds", "1"] if command == "compare" else []
    result = _invoke(*argv)
    assert result.exit_code == 2, result.output
    assert f"--out {out} holds the input {ckpt}" in result.output
    assert "Traceback" not in result.output
    assert _tree(train_copy) == before


def test_compare_overwrite_never_removes_its_input(train_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    base = ["compare", "-s", "sgd", "--seeds", "1", "--out", str(out)]
    first = _invoke(*base, str(train_copy / "ckpt-02.safetensors"), "--budget", "3steps")
    assert first.exit_code == 0, first.output
    inside = out / "ckpt-02" / "sgd" / "seed-0" / "final.safetensors"
    before = _tree(out)
    result = _invoke(*base, str(inside), "--budget", "4steps", "--overwrite")
    assert result.exit_code == 2 and f"holds the input {inside}" in result.output
    assert _tree(out) == before


def test_files_in_the_way_of_a_comparisons_runs_are_not_its_own(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    seed0 = out / "ckpt-02" / "sgd" / "seed-0"
    seed0.mkdir(parents=True)
    (seed0 / "metrics.json").write_text('{"my": "notes"}')
    (seed0 / "final.safetensors").write_text("my weights")
    before = _tree(out)
    base = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--seeds", "1"]
    _refused(
        _invoke(*base, "--budget", "3steps", "--out", str(out)),
        "ckpt-02/sgd/seed-0/final.safetensors",
    )
    assert _tree(out) == before
    # a run of finetune's own in the place of one of the comparison's needs --overwrite
    other = tmp_path / "cmp2"
    ft = ["finetune", str(trained_run / "ckpt-02.safetensors"), "--strategy", "sgd"]
    assert (
        _invoke(*ft, "--budget", "10steps", "--out", str(other / "ckpt-02/sgd/seed-0")).exit_code
        == 0
    )
    before = _tree(other)
    refused = _invoke(*base, "--budget", "3steps", "--out", str(other))
    assert refused.exit_code == 2 and "holds another run in ckpt-02/sgd/seed-0" in refused.output
    assert _tree(other) == before
    replaced = _invoke(*base, "--budget", "3steps", "--out", str(other), "--overwrite")
    assert replaced.exit_code == 0, replaced.output


@pytest.mark.parametrize("rerun", ["train", "finetune"])
def test_a_rerun_never_removes_another_kind_of_run_in_its_folder(
    train_copy: Path, tmp_path: Path, rerun: str
) -> None:
    study = ["study", "mlp", "--data", "digits", "--epochs", "2", "--checkpoints", "2"]
    study += ["--seeds", "1", "--budget", "2steps", "-s", "sgd", "--model-arg", "width=8"]
    ft = ["finetune", str(train_copy / "ckpt-02.safetensors"), "--strategy", "sgd"]
    ft += ["--budget", "3steps", "--out", str(tmp_path / "ft")]
    folder = train_copy if rerun == "train" else tmp_path / "ft"
    if rerun == "finetune":
        assert _invoke(*ft).exit_code == 0
    # a study refuses a folder that holds another kind of run (it has no --overwrite) ...
    before = _tree(folder)
    refused = _invoke(*study, "--out", str(folder))
    assert refused.exit_code == 2 and "holds another hfft run's files" in refused.output
    assert _tree(folder) == before
    # ... and a rerun of the same configuration replaces only a folder of its own kind
    (folder / "study.json").write_text('{"kind": "hfft-study", "files": ["report.md"]}')
    (folder / "report.md").write_text("the study's report")
    again = _invoke(*TRAIN, "--out", str(folder)) if rerun == "train" else _invoke(*ft)
    assert again.exit_code == 2 and "holds another run's files" in again.output
    assert (folder / "report.md").read_text() == "the study's report"


def test_finetune_names_another_run_it_would_replace(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    ckpt = str(trained_run / "ckpt-02.safetensors")
    base = ["finetune", ckpt, "--strategy", "sgd", "--budget", "3steps", "--out"]
    assert _invoke(*base, str(out)).exit_code == 0
    assert _invoke(*base, str(out / "inner")).exit_code == 0
    result = _invoke(*base, str(out), "--overwrite")
    assert result.exit_code == 2
    assert (
        f"{out} holds another hfft run in 'inner/', which this run would replace" in result.output
    )


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_dangling_link_as_out_is_followed(
    trained_run: Path, tmp_path: Path, command: str
) -> None:
    link, target = tmp_path / "link", tmp_path / "made" / "here"
    link.symlink_to(target, target_is_directory=True)
    argv = {
        "train": [*TRAIN, "--epochs", "1", "--checkpoints", "1"],
        "compare": ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--seeds",
                    "1", "--budget", "2steps"],
    }[command]  # fmt: skip
    result = _invoke(*argv, "--out", str(link))
    assert result.exit_code == 0, result.output
    assert (
        link.is_symlink()
        and (target / ("run.json" if command == "train" else "compare.json")).is_file()
    )


def test_a_study_never_writes_into_the_training_it_reads(train_copy: Path) -> None:
    before = _tree(train_copy)
    result = _invoke("study", "mlp", "--train-run", str(train_copy), "--out", str(train_copy))
    assert result.exit_code == 2
    assert "a run never writes into the folder of its input" in result.output
    assert _tree(train_copy) == before


def test_a_symlinked_out_is_followed_and_leaves_no_staging(
    trained_run: Path, tmp_path: Path
) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    base = ["finetune", str(trained_run / "ckpt-02.safetensors"), "--budget", "3steps"]
    assert _invoke(*base, "--strategy", "sgd", "--out", str(real)).exit_code == 0
    link.symlink_to(real, target_is_directory=True)
    result = _invoke(*base, "--strategy", "sgd-div10", "--out", str(link), "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert json.loads((real / "metrics.json").read_text())["strategy"] == "sgd-div10"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_a_comparison_never_deletes_the_users_files(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    base = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--seeds", "1"]
    assert _invoke(*base, "--budget", "3steps", "--out", str(out)).exit_code == 0
    (out / "ckpt-02" / "sgd" / "seed-0" / "notes.txt").write_text("seed 0 looked odd")
    before = _tree(out)
    # another budget with --overwrite would replace the earlier comparison's own files
    result = _invoke(*base, "--budget", "4steps", "--out", str(out), "--overwrite")
    _refused(result, "ckpt-02/sgd/seed-0/notes.txt")
    assert _tree(out) == before
    (out / "ckpt-02" / "sgd" / "seed-0" / "notes.txt").unlink()
    result = _invoke(*base, "--budget", "4steps", "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "compare.json").read_text())["config"]["budget"] == "4steps"


def test_a_file_that_appears_during_a_run_survives_the_swap(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _record(target, "mine", "final.safetensors", "best.safetensors")
    with RunFolder(target, _same, overwrite=False) as folder:
        _record(folder.staging, "mine", "final.safetensors")
        (target / "NOTES.md").write_text("written while the run worked")
        folder.commit()
    assert sorted(p.name for p in target.iterdir()) == [
        "NOTES.md",
        "final.safetensors",
        "metrics.json",
    ]
    assert (target / "NOTES.md").read_text() == "written while the run worked"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("command", ["train", "finetune", "compare", "study"])
def test_a_json_file_of_the_users_named_like_a_record_is_theirs(
    trained_run: Path, tmp_path: Path, command: str
) -> None:
    name = {"train": "run.json", "finetune": "metrics.json", "compare": "compare.json",
            "study": "study.json"}[command]  # fmt: skip
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_text('{"my": "notes"}')
    ckpt = str(trained_run / "ckpt-02.safetensors")
    argv = {
        "train": [*TRAIN, "--overwrite"],
        "finetune": ["finetune", ckpt, "--budget", "3steps", "--overwrite"],
        "compare": ["compare", ckpt, "-s", "sgd", "--seeds", "1", "--budget", "3steps",
                    "--overwrite"],
        "study": ["study", "mlp", "--data", "digits", "--epochs", "1", "-s", "sgd"],
    }[command]  # fmt: skip
    _refused(_invoke(*argv, "--out", str(folder)), name)
    assert (folder / name).read_text() == '{"my": "notes"}'


def test_an_interrupt_while_the_plots_are_drawn_leaves_a_comparison_that_resumes(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hfft.analysis.plots

    out = tmp_path / "cmp"
    ckpts = [str(trained_run / f"ckpt-0{k}.safetensors") for k in (1, 2)]
    argv = ["compare", *ckpts, "-s", "sgd", "--seeds", "1", "--budget", "2steps"]
    real = hfft.analysis.plots.plot_relative_performance

    def interrupted(*args, **kwargs):  # the curves are drawn, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(hfft.analysis.plots, "plot_relative_performance", interrupted)
    stopped = _invoke(*argv, "--out", str(out))
    assert stopped.exit_code == 130 and (out / "curves-ckpt-01.png").is_file()
    monkeypatch.setattr(hfft.analysis.plots, "plot_relative_performance", real)
    resumed = _invoke(*argv, "--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "compare.json").read_text())["status"] == "completed"


def test_compare_overwrite_refuses_a_run_nested_in_a_run_folder_before_removing_anything(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    base = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--seeds", "1"]
    assert _invoke(*base, "--budget", "3steps", "--out", str(out)).exit_code == 0
    run = out / "ckpt-02" / "sgd" / "seed-0"
    ft = ["finetune", str(run / "final.safetensors"), "--strategy", "sgd", "--budget", "2steps"]
    assert _invoke(*ft).exit_code == 0  # into its default folder: inside the run folder
    before = _tree(out)
    result = _invoke(*base, "--budget", "4steps", "--out", str(out), "--overwrite")
    assert result.exit_code == 2
    assert "holds another hfft run in 'ckpt-02/sgd/seed-0/finetune-sgd/'" in result.output
    assert _tree(out) == before


def test_a_run_nested_in_a_run_folder_stops_only_a_redo_of_that_run(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    base = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--seeds", "1"]
    base += ["--budget", "3steps", "--out", str(out)]
    assert _invoke(*base).exit_code == 0
    run = out / "ckpt-02" / "sgd" / "seed-0"
    ft = ["finetune", str(run / "final.safetensors"), "--strategy", "sgd", "--budget", "2steps"]
    assert _invoke(*ft).exit_code == 0  # into its default folder: inside the run folder
    kept = _tree(run)
    assert _invoke(*base).exit_code == 0  # every run reused: nothing replaced, nothing refused
    assert _tree(run) == kept
    log = json.loads((run / "metrics.json").read_text())
    log["evaluations"][1]["test_accuracy"] = 5.0  # now this run must be done again
    (run / "metrics.json").write_text(json.dumps(log))
    before = _tree(run)
    redo = _invoke(*base)
    assert redo.exit_code == 2
    assert "holds another hfft run in 'finetune-sgd/'" in redo.output
    assert _tree(run) == before
