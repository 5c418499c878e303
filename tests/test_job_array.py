"""--submit slurm|local: a comparison's shards as a job array through submitit."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hfft.analysis.compare import CompareConfig
from hfft.analysis.job_array import JobArray, ShardTask, logs_folder, submit, wait
from hfft.analysis.shards import Shard
from hfft.cli import app

runner = CliRunner()
SMALL = ("--seeds", "2", "--budget", "2steps", "--eval-points", "1")


def _compare_args(trained_run: Path, out: Path) -> list[str]:
    return ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "-s",
            "sgd-div10", *SMALL, "--out", str(out)]  # fmt: skip


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hfft: error: "), output
    return lines[0]


def test_submit_without_submitit_names_the_extra_before_any_work(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` fails
    out = tmp_path / "cmp"
    result = runner.invoke(app, [*_compare_args(trained_run, out), "--submit", "local",
                                 "--array", "2"])  # fmt: skip
    assert result.exit_code == 2
    assert "pip install 'hfft[slurm]'" in _error_line(result.output)
    assert not out.exists() and not logs_folder(out).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--array", "2"], "--array only go with --submit"),
        (["--wait", "--time", "1h"], "--time, --wait only go with --submit"),
        (["--submit", "local"], "needs --array N"),
        (["--submit", "local", "--array", "2", "--shard", "0/2"], "leave out --shard"),
        (["--submit", "slurm", "--array", "2"], "needs --time"),
        (["--submit", "local", "--array", "2", "--partition", "gpu"], "are Slurm's"),
        (["--submit", "local", "--array", "2", "--overwrite"], "--overwrite cannot be"),
        (["--submit", "local", "--array", "2", "--time", "soon"], "duration 'soon'"),
        (["--submit", "slurm", "--array", "2", "--time", "1h", "--device", "cuda:1"],
         "use --device cuda"),
        (["--submit", "slurm", "--array", "2", "--time", "1h", "--device", "cuda",
          "--gpus-per-task", "0"], "gives the tasks no GPU"),
        (["--submit", "slurm", "--array", "2", "--time", "1h"], "needs Slurm's sbatch and srun"),
        (["--submit", "local", "--array", "2", "--tensorboard", "tb"], "--tensorboard and"),
    ],
    ids=["array-alone", "wait-alone", "no-array", "with-shard", "slurm-no-time",
         "local-partition", "overwrite", "bad-time", "cuda-n", "cuda-no-gpus", "no-slurm",
         "trackers"],
)  # fmt: skip
def test_submit_options_that_do_not_go_together_are_one_sentence(
    trained_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    out = tmp_path / "cmp"
    result = runner.invoke(app, [*_compare_args(trained_run, out), *extra])
    assert result.exit_code == 2, result.output
    assert message in _error_line(result.output)
    assert not out.exists() and not logs_folder(out).exists()


def _fake_slurm(folder: Path) -> Path:
    """``srun`` and an ``sbatch`` that keeps the script it is given and answers job 4242."""
    folder.mkdir()
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$(dirname "$0")/script.sh"\necho "Submitted batch job 4242"\n'
    )
    for tool in ("srun", "sbatch"):
        (folder / tool).chmod(0o755)
    return folder / "script.sh"


@pytest.mark.parametrize("command", ["compare", "study"])
def test_submit_slurm_writes_one_job_array_and_says_how_to_assemble(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    script = _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    if command == "compare":
        args = _compare_args(trained_run, out)
        typed = [str(trained_run / "ckpt-02.safetensors"), "--strategy", "sgd", "--strategy",
                 "sgd-div10", "--seeds", "2", "--budget", "2steps", "--out", str(out),
                 "--eval-points", "1"]  # fmt: skip
    else:
        args = ["study", "mlp", "--train-run", str(trained_run), "-s", "sgd", *SMALL,
                "--out", str(out)]  # fmt: skip
        typed = ["mlp", "--out", str(out), "--train-run", str(trained_run), "--strategy", "sgd",
                 "--seeds", "2", "--budget", "2steps", "--eval-points", "1"]  # fmt: skip
    slurm = ["--submit", "slurm", "--array", "3", "--partition", "gpu", "--gpus-per-task", "1",
             "--cpus-per-task", "4", "--time", "1h30m"]  # fmt: skip
    result = runner.invoke(app, [*args, *slurm, "-q"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("submitted 3 shards as Slurm job array 4242: task 4242_I runs")
    logs = logs_folder(out)
    assert lines[1] == f"logs: {logs} (shard 0/3: 4242_0_0_log.out, 4242_0_0_log.err)"
    assemble = lines[2].partition(" with: ")[2]
    # as typed (each option by its long name, in --help's order), less the --submit
    # options; on the tasks' device (auto with GPUs: cuda)
    expected = ["hfft", command, *typed, "--quiet", "--device", "cuda", "--shard", "none"]
    assert assemble == shlex.join(expected)
    sbatch = script.read_text().splitlines()
    for line in ["--array=0-2%3", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4",
                 "--time=90", "--signal=USR2@90", f"--job-name=hfft-{command}",
                 "--ntasks-per-node=1", "--nodes=1"]:  # fmt: skip
        assert f"#SBATCH {line}" in sbatch
    assert not out.exists()  # nothing runs here
    from submitit.helpers import DelayedSubmission

    for index in range(3):
        task = DelayedSubmission.load(logs / f"4242_{index}_submitted.pkl")
        assert isinstance(task.function, ShardTask) and task.args == (index,)
        assert (task.function.count, task.function.config.device) == (3, "cuda")
        assert task.function.config.shard is None
        requeued = task.function.checkpoint(index)  # what a preempted task resubmits
        assert (requeued.function, requeued.args) == (task.function, (index,))


def _rankings(compare_json: Path) -> Any:
    """compare.json's rankings and runs (less what depends on the clock)."""
    summary = json.loads(compare_json.read_text())
    assert summary["status"] == "completed"
    return [entry["rankings"] for entry in summary["checkpoints"]], summary["runs"]


@pytest.mark.slow
def test_submit_local_ranks_as_one_process_does(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two tasks side by side
    args = [*_compare_args(trained_run, tmp_path / "shared"), "--device", "cpu", "-q"]
    shared = runner.invoke(app, [*args, "--submit", "local", "--array", "2", "--wait"])
    assert shared.exit_code == 0, shared.output
    assert re.match(r"started 2 shards as processes on this machine: shard 0/2 as job \d+, "
                    r"1/2 as job \d+$", shared.output.splitlines()[0])  # fmt: skip
    one = runner.invoke(app, [*_compare_args(trained_run, tmp_path / "one"), "-q"])
    assert one.exit_code == 0, one.output
    ranked = _rankings(tmp_path / "shared" / "compare.json")
    assert ranked == _rankings(tmp_path / "one" / "compare.json")
    assert len(ranked[1]) == 4
    logs = logs_folder(tmp_path / "shared")
    assert sorted(p.name.partition("_")[2] for p in logs.glob("*_log.err")) == ["0_log.err"] * 2
    # the printed command assembles the ranking from the tasks' runs, running nothing
    assemble = shared.output.splitlines()[2].partition(" with: ")[2]
    again = runner.invoke(app, shlex.split(assemble)[1:])
    assert again.exit_code == 0, again.output
    assert _rankings(tmp_path / "shared" / "compare.json") == ranked


@pytest.mark.slow
def test_a_failing_shard_is_one_paragraph_naming_it_and_its_log(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "hf:m=100000", *SMALL,
            "--out", str(tmp_path / "cmp"), "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, [*args, "--submit", "local", "--array", "2", "--wait"])
    assert result.exit_code == 1, result.output
    error = result.output.splitlines()[-1]
    assert re.match(r"hfft: error: shard 0/2 \(job \d+\) failed: ValueError: HF's batch B", error)
    assert "1 more of the 2 shards did too" in error and "--shard 0/2." in error
    log = Path(re.search(r"Its log: (\S+)\.", error)[1])  # type: ignore[index]
    assert log.parent == logs_folder(tmp_path / "cmp") and "ValueError" in log.read_text()


@pytest.mark.slow
def test_a_signalled_task_is_requeued_and_its_runs_resume(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "cmp"
    config = CompareConfig(checkpoints=(str(trained_run / "ckpt-02.safetensors"),),
                           strategies=("sgd",), seeds=2, budget="2s", out=str(out),
                           eval_points=1)  # fmt: skip
    submitted = submit(config, JobArray("local", 1, logs_folder(out)))
    # a run writes into .seed-K.staging-PID: signal that task mid-run, as Slurm does
    # before the time limit (or at preemption)
    started, staging = time.monotonic(), None
    while staging is None and time.monotonic() - started < 60:
        staging = next(out.rglob(".seed-*.staging-*"), None) if out.is_dir() else None
        time.sleep(0.02)
    assert staging is not None, submitted.jobs[0].stderr()
    os.kill(int(staging.name.rpartition("-")[2]), signal.SIGUSR2)
    (result,) = wait(submitted)
    log = submitted.jobs[0].stdout() or ""
    assert "Requeued job" in log, log
    seed = staging.name.split(".")[1].replace("-", " ")  # the run that was signalled
    assert log.count(f"of this shard: ckpt-02 sgd {seed}\n") == 2, log  # it ran twice
    # the run that was mid-way started over; nothing of it is left behind
    assert (result.ran + result.reused, result.assembled) == (2, True)
    assert not list(out.rglob(".*staging*"))
    assert json.loads((out / "compare.json").read_text())["status"] == "completed"


def test_a_task_is_the_shard_of_its_index_and_refuses_a_gpu_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    config = CompareConfig(checkpoints=("a",), device="cuda", out=str(tmp_path / "cmp"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="this task sees no GPU"):
        ShardTask(config, 2)(1)
    with pytest.raises(ValueError, match="leave out --shard"):
        submit(CompareConfig(checkpoints=("a",), shard=Shard(0, 2)),
               JobArray("local", 2, tmp_path / "logs"))  # fmt: skip


class _RecordingExecutor:
    """submitit's LocalExecutor as far as :func:`submit` uses it, keeping each task's
    parameters instead of starting it."""

    def __init__(self, folder: Path) -> None:
        self.parameters: dict[str, Any] = {}
        self.tasks: list[tuple[int, dict[str, Any]]] = []

    def update_parameters(self, **parameters: Any) -> None:
        self.parameters.update(parameters)

    def submit(self, task: ShardTask, index: int) -> Any:
        self.tasks.append((index, dict(self.parameters)))
        return type("Job", (), {"job_id": str(index)})()


def test_local_tasks_get_their_own_gpus_round_robin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit

    import hfft.analysis.job_array as job_array

    executors: list[_RecordingExecutor] = []

    def local_executor(folder: Path) -> _RecordingExecutor:
        executors.append(_RecordingExecutor(folder))
        return executors[-1]

    monkeypatch.setattr(submitit, "LocalExecutor", local_executor)
    config = CompareConfig(checkpoints=("a",), device="cuda", out=str(tmp_path / "cmp"))
    monkeypatch.setattr(job_array, "_local_gpus", lambda: 3)
    submitted = submit(config, JobArray("local", 4, tmp_path / "logs", gpus_per_task=2))
    assert submitted.job_ids == ["0", "1", "2", "3"] and submitted.array_id is None
    tasks = executors[0].tasks
    assert [p["visible_gpus"] for _, p in tasks] == [[0, 1], [2, 0], [1, 2], [0, 1]]
    assert {(p["gpus_per_node"], p["timeout_min"]) for _, p in tasks} == {(2, 60 * 24 * 365)}
    monkeypatch.setattr(job_array, "_local_gpus", lambda: 0)
    with pytest.raises(ValueError, match="needs CUDA on this machine"):
        submit(config, JobArray("local", 2, tmp_path / "logs", gpus_per_task=1))
