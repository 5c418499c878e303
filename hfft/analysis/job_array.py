"""Job arrays: the shards of a comparison or study submitted through submitit.

``hfft compare|study --submit slurm|local --array N`` submits N tasks, task I
running shard I/N (:class:`hfft.analysis.shards.Shard`) into the shared
output folder, as a Slurm job array or as processes on this machine
(submitit's local executor, which the tests use). The shards coordinate as
any shards do; the last task to end writes the ranking.

A task is a :class:`ShardTask`, which submitit pickles into the logs folder
and calls in the task with its index. It is checkpointable in submitit's
sense: when Slurm signals a task (SIGUSR2, 90 s before its time limit, or at
preemption where the cluster sends it), submitit requeues the same shard and
ends the task. The requeued task reuses every finished run; the run that was
in progress leaves its folder as it was before (the staging folder it wrote
into is cleared) and starts over. A task that keeps reaching its time limit
is requeued at most three times.

submitit (the ``slurm`` extra) is imported only when shards are submitted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hfft.analysis.compare import CompareConfig, CompareResult, compare
from hfft.analysis.shards import Shard
from hfft.analysis.study import StudyConfig, StudyResult, study

__all__ = [
    "CLUSTERS",
    "JobArray",
    "ShardFailed",
    "ShardTask",
    "Submitted",
    "load_submitit",
    "logs_folder",
    "submit",
    "wait",
]

CLUSTERS = ("slurm", "local")
"""Where ``--submit`` sends the shards: a Slurm cluster, or processes on this machine."""

EXTRA = "--submit needs submitit, the slurm extra: pip install 'hfft[slurm]'"

_NO_LIMIT_MIN = 60 * 24 * 365
"""A local task's time limit when none is given (submitit's own default is 2 minutes)."""

Config = CompareConfig | StudyConfig
Result = CompareResult | StudyResult


def load_submitit() -> ModuleType:
    """The submitit module.

    Raises:
        ValueError: If it is not installed (one sentence naming the extra).
    """
    try:
        import submitit
    except ImportError:
        raise ValueError(EXTRA) from None
    return submitit


def logs_folder(out: str | Path) -> Path:
    """Where the tasks' logs and submitit's files go: ``OUT.submitit`` beside ``OUT``.

    Beside, not inside: a comparison or study refuses a folder that holds files it
    did not write, and the shards may be resubmitted into the same ``OUT``.
    """
    folder = Path(out).resolve()
    return folder.with_name(f"{folder.name}.submitit")


def minutes(seconds: float) -> int:
    """A task's time limit in whole minutes, as Slurm takes it (rounded up)."""
    return max(1, math.ceil(seconds / 60))


@dataclass(frozen=True)
class JobArray:
    """How the shards are submitted.

    Attributes:
        cluster: ``slurm`` (a job array) or ``local`` (one process per shard here).
        shards: N, the number of tasks.
        logs: The folder for submitit's files and the tasks' logs.
        time_min: Each task's time limit in minutes (needed for Slurm; local: none).
        partition: The Slurm partition (default: the cluster's).
        gpus_per_task: GPUs for each task; local tasks get their own among this
            machine's GPUs (round robin when there are fewer than needed).
        cpus_per_task: CPU cores for each Slurm task.
        name: The job's name (``squeue`` shows it).
    """

    cluster: str
    shards: int
    logs: Path
    time_min: int | None = None
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    name: str = "hfft"

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"--submit takes {' or '.join(CLUSTERS)}, not {self.cluster!r}")
        if self.shards < 1:
            raise ValueError(f"--array needs at least 1 shard, not {self.shards}")
        if self.cluster == "slurm" and self.time_min is None:
            raise ValueError(
                "--submit slurm needs --time, each task's time limit (e.g. 4h); a task that "
                "nears it is requeued and resumes"
            )
        if self.cluster == "local" and (self.partition or self.cpus_per_task):
            raise ValueError(
                "--partition and --cpus-per-task are Slurm's; --submit local runs the shards "
                "as processes on this machine"
            )


@dataclass(frozen=True)
class ShardTask:
    """One task of the array: shard ``index`` of ``count`` of ``config``.

    A module-level class holding its configuration as data, so that submitit
    can pickle it; :meth:`checkpoint` makes it requeueable (see the module's
    docstring).
    """

    config: Config
    count: int

    def __call__(self, index: int) -> Result:
        config = dataclasses.replace(self.config, shard=Shard(index, self.count))
        _check_device(config.device)
        _note(f"shard {index}/{self.count} of {config.out}")
        if isinstance(config, StudyConfig):
            return study(config, on_run=_on_run, on_note=_note)
        return compare(config, on_run=_on_run, on_note=_note)

    def checkpoint(self, index: int) -> Any:
        """What submitit requeues: the same shard (its finished runs are reused)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, index)


@dataclass(frozen=True)
class Submitted:
    """The submitted tasks (submitit jobs, task I running shard I) and their logs folder."""

    cluster: str
    jobs: list[Any]
    logs: Path

    @property
    def job_ids(self) -> list[str]:
        """Each task's job id (Slurm: ``ARRAY_I``; local: the process id of its controller)."""
        return [str(job.job_id) for job in self.jobs]

    @property
    def array_id(self) -> str | None:
        """The Slurm job array's id (``None`` for local tasks)."""
        return self.job_ids[0].partition("_")[0] if self.cluster == "slurm" else None


class ShardFailed(RuntimeError):
    """A task of the array failed or ended without a result (the message: one paragraph)."""


def submit(config: Config, array: JobArray) -> Submitted:
    """Submit ``array.shards`` tasks, task I running shard I of ``config``.

    Args:
        config: The comparison or study, as one process would run it (no shard).
        array: Where and how.

    Returns:
        The tasks, submitted (they run on after this returns).

    Raises:
        ValueError: If submitit is missing, the configuration cannot be sharded
            (``overwrite``), Slurm is not reachable from here, ``sbatch`` refused
            the job, or local tasks ask for GPUs that this machine lacks.
    """
    submitit = load_submitit()
    if config.shard is not None:
        raise ValueError("--submit runs every shard itself; leave out --shard")
    dataclasses.replace(config, shard=Shard(0, array.shards))  # refusals before submitting
    task = ShardTask(config, array.shards)
    if array.cluster == "local":
        jobs = _submit_local(submitit, task, array)
    else:
        jobs = _submit_slurm(submitit, task, array)
    return Submitted(array.cluster, jobs, array.logs)


def _submit_local(submitit: ModuleType, task: ShardTask, array: JobArray) -> list[Any]:
    """One local process per shard, each seeing its own GPUs (``CUDA_VISIBLE_DEVICES``)."""
    executor = submitit.LocalExecutor(folder=array.logs)
    executor.update_parameters(
        timeout_min=array.time_min or _NO_LIMIT_MIN, gpus_per_node=array.gpus_per_task
    )
    here = _local_gpus() if array.gpus_per_task else 0
    if array.gpus_per_task and here == 0:
        raise ValueError(
            "--submit local with GPUs for each task needs CUDA on this machine; use --device cpu"
        )
    jobs = []
    for index in range(array.shards):
        if array.gpus_per_task:
            first = index * array.gpus_per_task
            visible = [(first + k) % here for k in range(array.gpus_per_task)]
            executor.update_parameters(visible_gpus=visible)
        jobs.append(executor.submit(task, index))
    return jobs


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _submit_slurm(submitit: ModuleType, task: ShardTask, array: JobArray) -> list[Any]:
    """One Slurm job array, one node and one task per element."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        executor = submitit.SlurmExecutor(folder=array.logs)
    except RuntimeError:  # submitit finds no srun
        raise ValueError(
            "--submit slurm needs Slurm's sbatch and srun on PATH: submit from a node of the "
            "cluster (its login node), or use --submit local"
        ) from None
    parameters = {
        "job_name": array.name,
        "time": array.time_min,
        "partition": array.partition,
        "nodes": 1,
        "ntasks_per_node": 1,
        "gpus_per_node": array.gpus_per_task or None,
        "cpus_per_task": array.cpus_per_task,
        "array_parallelism": array.shards,
    }
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    try:
        return list(executor.map_array(task, range(array.shards)))
    except (FailedJobError, FailedSubmissionError) as err:  # sbatch said no (or no job id)
        why = [line for line in str(err).splitlines() if line.strip()]
        raise ValueError(f"sbatch refused the job array: {why[-1] if why else err}") from None


def wait(submitted: Submitted) -> list[Result]:
    """Wait for every task to end; their results, task by task.

    Raises:
        ShardFailed: If a task failed or ended without a result: the first such
            task's error and log, in one paragraph.
    """
    failed = [(i, job, job.exception()) for i, job in enumerate(submitted.jobs)]
    failed = [(i, job, error) for i, job, error in failed if error is not None]
    if failed:
        raise ShardFailed(_failure(submitted, failed))
    return [job.result() for job in submitted.jobs]


def _failure(submitted: Submitted, failed: list[tuple[int, Any, BaseException]]) -> str:
    """One paragraph on the first failed task: its shard, job, error and log."""
    from submitit.core.utils import FailedJobError

    index, job, error = failed[0]
    n = len(submitted.jobs)
    if isinstance(error, FailedJobError):
        parts = str(error).split("-" * 22)
        trace = parts[1] if len(parts) > 2 else str(error)
        lines = [line for line in trace.splitlines() if line.strip()]
        what = f"failed: {lines[-1].strip() if lines else error}"
    else:
        what = "ended without a result (cancelled, killed, or stopped by a signal)"
    more = f"; {len(failed) - 1} more of the {n} shards did too" if len(failed) > 1 else ""
    return (
        f"shard {index}/{n} (job {job.job_id}) {what}{more}. Its log: {job.paths.stderr}. The "
        f"runs that finished are kept: submit again, or run that shard with --shard {index}/{n}."
    )


def _check_device(device: str) -> None:
    """Refuse a CUDA device in a task that sees no GPU (before any work)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(
            f"the shards run on {device}, but this task sees no GPU (CUDA_VISIBLE_DEVICES="
            f"{visible!r}); ask for GPUs with --gpus-per-task"
        )


def _note(message: str) -> None:
    print(f"hfft: note: {message}", file=sys.stderr, flush=True)


def _on_run(index: int, total: int, what: str) -> None:
    print(f"run {index}/{total} of this shard: {what}", flush=True)
