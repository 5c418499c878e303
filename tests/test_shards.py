"""--shard slurm and auto: a shard from the Slurm job array task this process is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfft.analysis.shards import Shard
from hfft.cli import app

runner = CliRunner()


def _array(task: int, low: int, high: int, count: int | None = None, step: int | None = None):
    """The variables Slurm sets in a job array task (``count``/``step``: only if given)."""
    env = {
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
    }
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (_array(0, 0, 15, 16, 1), Shard(0, 16)),  # --array=0-15
        (_array(15, 0, 15, 16, 1), Shard(15, 16)),
        (_array(1, 1, 16, 16, 1), Shard(0, 16)),  # --array=1-16: ids start at 1
        (_array(16, 1, 16, 16), Shard(15, 16)),
        (_array(2, 1, 4), Shard(1, 4)),  # no COUNT (older Slurm): N = MAX - MIN + 1
        (_array(3, 0, 3, 4, 1), Shard(3, 4)),  # --array=0-3%2: the limit changes nothing
    ],
    ids=["min0-first", "min0-last", "min1-first", "min1-last", "no-count", "limit"],
)
def test_slurm_array_tasks_number_the_shards_from_the_lowest_id(
    env: dict[str, str], expected: Shard
) -> None:
    assert Shard.from_slurm(env) == expected
    assert Shard.parse("slurm", env) == expected
    assert Shard.parse(" Auto", env) == expected


@pytest.mark.parametrize(
    "env",
    [_array(2, 0, 14, 8, 2), _array(2, 0, 14, 8), _array(3, 1, 5, 3), _array(9, 0, 3, 4)],
    ids=["step", "count-disagrees", "list-with-gaps", "id-outside"],
)
def test_slurm_arrays_whose_ids_skip_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="must be consecutive"):
        Shard.parse("slurm", env)


@pytest.mark.parametrize(
    "env",
    [_array(3, 3, 3, 1), _array(7, 5, 8, 4), _array(0, 0, 0, 1), _array(1, 1, 1)],
    ids=["one-task", "part-5-8", "only-0", "only-1"],
)
def test_part_of_an_array_is_refused_without_the_shard_count(env: dict[str, str]) -> None:
    # sbatch --array=3 to rerun shard 3 would otherwise be shard 0/1: every run
    with pytest.raises(ValueError, match=r"look like part of one: .* --shard slurm/N"):
        Shard.parse("slurm", env)
    with pytest.raises(ValueError, match="look like part of one"):
        Shard.parse("auto", env)


@pytest.mark.parametrize(
    ("env", "text", "expected"),
    [
        (_array(3, 3, 3, 1), "slurm/16", Shard(3, 16)),  # --array=3: shard 3 of 16
        (_array(7, 3, 7, 2), "slurm/16", Shard(7, 16)),  # --array=3,7
        (_array(5, 5, 8, 4), "Slurm/16", Shard(5, 16)),  # --array=5-8
        (_array(0, 0, 15, 16, 1), "slurm/16", Shard(0, 16)),  # the whole array
        (_array(2, 0, 14, 8, 2), "slurm/16", Shard(2, 16)),  # a step: ids taken as they are
    ],
    ids=["one", "list", "range", "whole", "step"],
)
def test_slurm_n_runs_the_shard_its_task_id_names(
    env: dict[str, str], text: str, expected: Shard
) -> None:
    assert Shard.parse(text, env) == expected


@pytest.mark.parametrize(
    ("env", "text"),
    [(_array(1, 1, 16, 16), "slurm/16"), (_array(16, 16, 16, 1), "slurm/16")],
    ids=["numbered-from-1", "id-n"],
)
def test_slurm_n_refuses_ids_beyond_the_shards_in_every_task(
    env: dict[str, str], text: str
) -> None:
    # --array=1-16 with slurm/16: task 1 is refused too, not only task 16
    with pytest.raises(ValueError, match="ids must lie in 0-15"):
        Shard.parse(text, env)


@pytest.mark.parametrize("text", ["slurm/0", "slurm/x", "slurm/"])
def test_slurm_n_needs_a_shard_count(text: str) -> None:
    with pytest.raises(ValueError, match="takes N >= 1 shards"):
        Shard.parse(text, _array(0, 0, 0, 1))


def test_slurm_variables_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="whole numbers"):
        Shard.parse("slurm", {**_array(0, 0, 3), "SLURM_ARRAY_TASK_MIN": "x"})


def test_outside_a_job_array_slurm_is_one_sentence_and_auto_is_no_shard() -> None:
    outside = {"SLURM_JOB_ID": "77"}  # a plain Slurm job, not an array
    assert Shard.from_slurm(outside) is None
    assert Shard.parse("auto", outside) is None
    with pytest.raises(ValueError, match="not one; start it with sbatch --array") as err:
        Shard.parse("slurm", outside)
    assert str(err.value).count(". ") == 0
    with pytest.raises(ValueError, match="--shard slurm/4 takes its shard from a Slurm job"):
        Shard.parse("slurm/4", outside)


def test_compare_takes_its_shard_from_a_faked_slurm_array(
    trained_run: Path, tmp_path: Path
) -> None:
    args = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "-s", "sgd-div10",
            "--seeds", "2", "--budget", "2steps", "--eval-points", "1",
            "--out", str(tmp_path / "cmp"), "--device", "cpu", "-q"]  # fmt: skip
    outside = runner.invoke(app, [*args, "--shard", "slurm"], env={"SLURM_ARRAY_TASK_ID": None})
    assert outside.exit_code == 2, outside.output
    assert "is not one" in outside.output and not (tmp_path / "cmp").exists()
    # --array=1-2: task 2 is shard 1/2, which runs positions 1 and 3 of the run order
    task = runner.invoke(app, [*args, "--shard", "slurm"], env=_array(2, 1, 2, 2, 1))
    assert task.exit_code == 0, task.output
    assert "--shard slurm: shard 1/2 (Slurm array task 2)" in task.output
    assert "shard 1/2 ran 2 runs and found 0" in task.output
    header = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert header["status"] == "running" and "shard" not in header["config"]
    other = runner.invoke(app, [*args, "--shard", "auto"], env=_array(1, 1, 2, 2, 1))
    assert other.exit_code == 0, other.output
    assert "--shard auto: shard 0/2 (Slurm array task 1)" in other.output
    done = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert done["status"] == "completed" and len(done["runs"]) == 4
    # sbatch --array=1 to rerun shard 1 of 2: refused as slurm, shard 1/2 as slurm/2
    part = runner.invoke(app, [*args, "--shard", "slurm"], env=_array(1, 1, 1, 1, 1))
    assert part.exit_code == 2 and "--shard slurm/N" in part.output, part.output
    again = runner.invoke(app, [*args, "--shard", "slurm/2"], env=_array(1, 1, 1, 1, 1))
    assert again.exit_code == 0, again.output
    assert "--shard slurm/2: shard 1/2 (Slurm array task 1)" in again.output
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"] == done["runs"]
