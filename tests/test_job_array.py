"""--submit slurm|local: a comparison's shards as a job array through submitit."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hfft.analysis.compare import CompareConfig
from hfft.analysis.job_array import JobArray, ShardTask, Submitted, logs_folder, submit, wait
from hfft.analysis.shards import Shard
from hfft.cli import app
from hfft.cli.render.job_array import submission_lines

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
    assert re.match(r"started 2 shards as processes on this machine \(1 thread each, as "
                    r"OMP_NUM_THREADS says\): shard 0/2 as job \d+, 1/2 as job \d+$",
                    shared.output.splitlines()[0])  # fmt: skip
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
    # hfft stopped it and saved it marked interrupted before submitit requeued the shard
    notes = submitted.jobs[0].stderr() or ""
    assert "requeueing shard 0/1: the finished runs are kept" in notes, notes
    # the run that was mid-way started over; its files are whole, nothing is left behind
    assert (result.ran + result.reused, result.assembled) == (2, True)
    assert not list(out.rglob(".*staging*"))
    for metrics in out.rglob("metrics.json"):
        assert json.loads(metrics.read_text())["status"] == "completed"
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
        self.submitted: list[ShardTask] = []

    def update_parameters(self, **parameters: Any) -> None:
        self.parameters.update(parameters)

    def submit(self, task: ShardTask, index: int) -> Any:
        self.tasks.append((index, dict(self.parameters)))
        self.submitted.append(task)
        return type("Job", (), {"job_id": str(index)})()


@pytest.fixture
def executors(monkeypatch: pytest.MonkeyPatch) -> list[_RecordingExecutor]:
    """submitit's LocalExecutor replaced by recording ones, listed as ``submit`` makes them."""
    import submitit

    made: list[_RecordingExecutor] = []

    def local_executor(folder: Path) -> _RecordingExecutor:
        made.append(_RecordingExecutor(folder))
        return made[-1]

    monkeypatch.setattr(submitit, "LocalExecutor", local_executor)
    return made


def test_local_tasks_get_their_own_gpus_round_robin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executors: list[_RecordingExecutor]
) -> None:
    import hfft.analysis.job_array as job_array

    (tmp_path / "a.safetensors").touch()  # it exists: enough to submit
    config = CompareConfig(
        checkpoints=(str(tmp_path / "a.safetensors"),), device="cuda", out=str(tmp_path / "cmp")
    )
    monkeypatch.setattr(job_array, "_local_gpus", lambda: 3)
    submitted = submit(config, JobArray("local", 4, tmp_path / "logs", gpus_per_task=2))
    assert submitted.job_ids == ["0", "1", "2", "3"] and submitted.array_id is None
    tasks = executors[0].tasks
    assert [p["visible_gpus"] for _, p in tasks] == [[0, 1], [2, 0], [1, 2], [0, 1]]
    assert {(p["gpus_per_node"], p["timeout_min"]) for _, p in tasks} == {(2, 60 * 24 * 365)}
    monkeypatch.setattr(job_array, "_local_gpus", lambda: 0)
    with pytest.raises(ValueError, match="needs CUDA on this machine"):
        submit(config, JobArray("local", 2, tmp_path / "logs", gpus_per_task=1))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "bogus"], "budget 'bogus'"),
        (["--out", "{ckpt}"], "holds the input"),
        (["--budget", "3steps"], "holds another comparison"),
        (["--out", "{foreign}"], "which is not a file of an hfft run there"),
    ],
    ids=["budget", "out-is-input", "other-comparison", "foreign-file"],
)
def test_what_every_task_would_refuse_is_refused_before_submitting(
    trained_run: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    done = tmp_path / "done"  # a finished comparison of budget 2steps
    (done / "ckpt-02" / "sgd" / "seed-0").mkdir(parents=True)
    (done / "compare.json").write_text(
        json.dumps({"kind": "hfft-compare", "status": "completed", "config": {
            "checkpoints": ["x"], "budget": "2steps", "eval_points": 1, "eval_batch_size": None,
            "device": "cpu", "source": {}}, "folders": ["ckpt-02/sgd/seed-0"]})
    )  # fmt: skip
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    paths = {"ckpt": str(trained_run), "foreign": str(tmp_path / "foreign")}
    args = [*_compare_args(trained_run, done), *[a.format(**paths) for a in extra]]
    result = runner.invoke(app, [*args, "--submit", "local", "--array", "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert message in _error_line(result.output)
    assert not any(tmp_path.glob("*.submitit"))  # nothing submitted


@pytest.mark.parametrize(
    ("train_run", "message"),
    [("missing", "is not a finished hfft train run: it has no run.json"),
     ("trained", "runs holds another comparison")],
    ids=["unfinished-training", "other-study"],
)  # fmt: skip
def test_a_study_that_every_task_would_refuse_is_refused_before_submitting(
    trained_run: Path, tmp_path: Path, train_run: str, message: str
) -> None:
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)  # the runs of a study with another budget
    (out / "runs" / "compare.json").write_text(
        json.dumps({"kind": "hfft-compare", "status": "running", "config": {
            "checkpoints": ["x"], "budget": "9steps", "eval_points": 1, "eval_batch_size": None,
            "device": "cpu", "source": {}}})
    )  # fmt: skip
    (out / "study.json").write_text(
        json.dumps({"kind": "hfft-study", "status": "running", "files": [], "folders": ["runs"]})
    )
    folder = trained_run if train_run == "trained" else tmp_path / "missing"
    args = ["study", "mlp", "--train-run", str(folder), "-s", "sgd", *SMALL, "--out", str(out),
            "--device", "cpu", "--submit", "local", "--array", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in _error_line(result.output)
    assert not logs_folder(out).exists()


def test_one_local_task_is_one_shard_and_says_its_threads() -> None:
    paths = type("Paths", (), {"stdout": Path("7_0_log.out"), "stderr": Path("7_0_log.err")})
    job = type("Job", (), {"job_id": "7", "paths": paths})()
    lines = submission_lines(Submitted("local", [job], Path("logs"), 2, 4), "out", "hfft …")
    assert lines[0] == (
        "started 1 shard as a process on this machine (2 threads each: the 4 cores shared): "
        "shard 0/1 as job 7"
    )
    assert "give the command below --shard I/1 instead of --shard none" in lines[2]
    slurm = type("Job", (), {"job_id": "42_0", "paths": paths})()
    lines = submission_lines(Submitted("slurm", [slurm], Path("logs")), "out", "hfft …")
    assert lines[0].startswith("submitted 1 shard as Slurm job array 42: ")
    assert "--shard I/1 (in an sbatch --array=I job: --shard slurm/1)" in lines[2]


@pytest.mark.parametrize(
    ("omp", "shards", "threads", "cores"),
    [(None, 2, 4, 8), (None, 16, 1, 8), ("3", 2, 3, None)],
    ids=["cores-shared", "more-tasks-than-cores", "omp-given"],
)
def test_local_tasks_share_the_cores(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    executors: list[_RecordingExecutor],
    omp: str | None,
    shards: int,
    threads: int,
    cores: int | None,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    (tmp_path / "a.safetensors").touch()
    config = CompareConfig(checkpoints=(str(tmp_path / "a.safetensors"),), out=str(tmp_path / "c"))
    submitted = submit(config, JobArray("local", shards, tmp_path / "logs"))
    assert (submitted.threads, submitted.cores) == (threads, cores)
    # a user's OMP_NUM_THREADS is inherited: the tasks then leave their threads alone
    tasks = {(task.local, task.threads) for task in executors[0].submitted}
    assert tasks == {(True, threads if omp is None else None)}


def test_a_local_task_sets_its_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import hfft.analysis.job_array as job_array

    seen: dict[str, Any] = {}

    def fake_compare(config: CompareConfig, **_: Any) -> str:
        seen.update(threads=torch.get_num_threads(), shard=config.shard)
        seen.update(omp=os.environ["OMP_NUM_THREADS"], mkl=os.environ["MKL_NUM_THREADS"])
        return "ranked"

    monkeypatch.setattr(job_array, "compare", fake_compare)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # put back by monkeypatch
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        config = CompareConfig(checkpoints=("a",), out=str(tmp_path / "cmp"))
        assert ShardTask(config, 4, threads=2)(3) == "ranked"
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 2, "shard": Shard(3, 4), "omp": "2", "mkl": "2"}


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM], ids=["usr2", "term"])
def test_a_requeue_signal_waits_for_the_files_then_requeues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """SIGUSR2 in the middle of writing a run's files: they are written whole, the task
    stops as on SIGTERM, and only then does submitit's handler requeue it (once), with
    the SIGTERM that Slurm sends a requeued job ignored. A plain SIGTERM is not requeued."""
    import hfft.analysis.job_array as job_array
    from hfft.experiment.interrupts import (
        Interrupted,
        as_interrupt,
        first_signal_stops,
        signals_held,
    )

    events: list[str] = []
    metrics = tmp_path / "metrics.json"

    def fake_compare(config: CompareConfig, **_: Any) -> str:
        with first_signal_stops():  # as compare does; its run's files written while held
            with signals_held(deliver=False) as late:
                os.kill(os.getpid(), signum)
                metrics.write_text(json.dumps({"status": "interrupted", "steps": [1, 2, 3]}))
                events.append("written")
            stop = as_interrupt(late)
            if stop is not None:
                raise Interrupted.after(stop, "the finished runs are kept")
        return "ranked"

    def submitit_requeue(signum: int, frame: Any) -> None:  # checkpoint, requeue, exit
        events.append("requeued")
        os.kill(os.getpid(), signal.SIGTERM)  # what Slurm sends after scontrol requeue
        raise SystemExit(-1)

    monkeypatch.setattr(job_array, "compare", fake_compare)
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        task = ShardTask(CompareConfig(checkpoints=("a",), out=str(tmp_path / "cmp")), 2)
        expected = SystemExit if signum == signal.SIGUSR2 else Interrupted
        with pytest.raises(expected):
            task(0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert json.loads(metrics.read_text())["steps"] == [1, 2, 3]
    assert events == ["written", "requeued"] if signum == signal.SIGUSR2 else ["written"]


def _log_says(folder: Path, text: str, seconds: float) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if any(text in p.read_text() for p in folder.glob("*_log.out")):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_ctrl_c_while_waiting_stops_the_waiting_and_the_local_tasks_run_on(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    args = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--seeds", "2",
            "--budget", "2s", "--eval-points", "1", "--out", str(out), "--device", "cpu", "-q",
            "--submit", "local", "--array", "1", "--wait"]  # fmt: skip
    # a session of its own, as a terminal's foreground job: Ctrl-C is SIGINT to its group
    command = subprocess.Popen(
        [sys.executable, "-m", "hfft", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert _log_says(logs_folder(out), "run 1/2 of this shard", 60)
        os.killpg(command.pid, signal.SIGINT)
        output, _ = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 130, output
    job = re.search(r"shard 0/1 as job (\d+)", output)[1]  # type: ignore[index]
    assert output.splitlines()[-1] == (
        f"hfft: interrupted; stopped waiting; the tasks run on (kill {job} stops them, each "
        f"saving its run in progress; logs in {logs_folder(out)})"
    )
    # the task was not interrupted: it runs both runs to the end and writes the ranking
    started = time.monotonic()
    while time.monotonic() - started < 60 and not (out / "compare.json").is_file():
        time.sleep(0.1)
    while time.monotonic() - started < 60:
        if json.loads((out / "compare.json").read_text())["status"] == "completed":
            break
        time.sleep(0.1)
    summary = json.loads((out / "compare.json").read_text())
    assert summary["status"] == "completed", summary
    for metrics in out.rglob("metrics.json"):
        assert json.loads(metrics.read_text())["status"] == "completed"
    errors = "".join(p.read_text() for p in logs_folder(out).glob("*_log.err"))
    assert "KeyboardInterrupt" not in errors and "Traceback" not in errors, errors
