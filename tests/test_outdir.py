"""Output folders: the lock, the owner check, staging and the swap, what killed runs left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfft.experiment.run_folder import (
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
from hfft.experiment.run_folder import locked_folder
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


def _same(folder: Path) -> bool:
    return (folder / "config").read_text() == "mine"


@pytest.mark.parametrize(
    ("files", "overwrite", "expected"),
    [
        ({}, False, "empty"),
        ({".metrics.json.x1.tmp": ""}, False, "empty"),
        ({"config": "mine", "final.safetensors": "w"}, False, "same"),
        ({"config": "theirs"}, True, "overwrite"),
    ],
    ids=["empty", "only-temp-files", "same-run", "overwrite"],
)
def test_check_owner(tmp_path: Path, files: dict, overwrite: bool, expected: str) -> None:
    tmp_path.joinpath("out").mkdir()
    for name, text in files.items():
        (tmp_path / "out" / name).write_text(text)
    assert check_owner(tmp_path / "out", _same, overwrite) == expected


def test_another_runs_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config").write_text("theirs")
    with pytest.raises(FolderTaken, match=r"holds another run's files.*--overwrite"):
        check_owner(tmp_path / "out", _same, overwrite=False)


def test_commit_swaps_the_new_run_in_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    for name in ("config", "best.safetensors", "old-only.txt"):
        (target / name).write_text("old" if name != "config" else "mine")
    with RunFolder(target, _same, overwrite=False) as folder:
        assert folder.note is not None and "replacing the earlier run" in folder.note
        (folder.staging / "config").write_text("mine")
        (folder.staging / "final.safetensors").write_text("new")
        assert (target / "old-only.txt").exists()  # nothing changes until the swap
        folder.commit()
    assert sorted(p.name for p in target.iterdir()) == ["config", "final.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


def test_a_failed_run_leaves_the_old_folder_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "config").write_text("mine")
    with pytest.raises(RuntimeError), RunFolder(target, _same, overwrite=False) as folder:
        (folder.staging / "config").write_text("mine")
        (folder.staging / "best.safetensors").write_text("new")
        raise RuntimeError("diverged into a bug")
    assert [p.name for p in target.iterdir()] == ["config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_what_killed_runs_left_is_cleaned_up(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    stale = tmp_path / ".out.staging-99999"
    stale.mkdir()
    (stale / "best.safetensors").write_text("half a run")
    (target / ".metrics.json.abc123.tmp").write_text("{")
    (target / "keep.txt").write_text("x")
    with locked_folder(target):
        clean_stale(target)
    assert not stale.exists()
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_a_signal_during_the_swap_waits_for_it(tmp_path: Path) -> None:
    from hfft.experiment.interrupts import signals_held

    target = tmp_path / "out"
    with RunFolder(target, _same, overwrite=False) as folder:
        (folder.staging / "config").write_text("mine")
        real_swap = folder._swap

        def interrupted_swap() -> None:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the folder is swapped
            real_swap()

        folder._swap = interrupted_swap  # type: ignore[method-assign]
        with signals_held(deliver=False) as caught:
            folder.commit()
        assert caught == [signal.SIGINT]
    assert (target / "config").read_text() == "mine"
