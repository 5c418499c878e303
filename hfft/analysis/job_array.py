"""Job arrays: the shards of a comparison or study submitted through submitit.

``hfft compare|study --submit slurm|local --array N`` submits N tasks, task I
running shard I/N (:class:`hfft.analysis.shards.Shard`) into the shared
output folder, as a Slurm job array or as processes on this machine
(submitit's local executor, which the tests use). The shards coordinate as
any shards do; the last task to end writes the ranking.

A task is a :class:`ShardTask`, which submitit pickles into the logs folder
and calls in the task with its index. It is checkpointable in submitit's
sense: when Slurm signals a task (SIGUSR2, 90 s before its time limit, or at
preemption where the cluster sends it), hfft stops the run in progress as on
SIGTERM — never inside the writing of its files, which the signal waits for —
and saves it marked interrupted; then submitit requeues the same shard and the
task ends, ignoring the SIGTERM that Slurm sends a requeued job. The requeued
task reuses every finished run and runs the stopped one again. A task that
keeps reaching its time limit is requeued at most three times.

Local tasks (``--submit local``) run in sessions of their own, so that a
Ctrl-C in the terminal that submitted them (``--wait``) stops the waiting, not
them; they share this machine's cores (torch threads: the cores ÷ N, unless
``OMP_NUM_THREADS`` says otherwise).

submitit (the ``slurm`` extra) is imported only when shards are submitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hfft.analysis.compare import CompareConfig, CompareResult, compare
from hfft.analysis.compare import preflight as compare_preflight
from hfft.analysis.shards import Shard
from hfft.analysis.study import StudyConfig, StudyResult, study
from hfft.analysis.study import preflight as study_preflight
from hfft.experiment.interrupts import first_signal_stops

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

_REQUEUE = signal.SIGUSR2
"""The signal on which submitit requeues a task (Slurm's ``--signal=USR2@90``)."""

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
    docstring). A ``local`` task leaves the terminal's session; ``threads``
    (local tasks) is its number of torch, OpenMP and MKL threads.
    """

    config: Config
    count: int
    local: bool = False
    threads: int | None = None

    def __call__(self, index: int) -> Result:
        config = dataclasses.replace(self.config, shard=Shard(index, self.count))
        if self.local:
            with contextlib.suppress(OSError):  # already a session's leader
                os.setsid()  # out of reach of a Ctrl-C in the terminal that submitted it
        if self.threads is not None:
            _use_threads(self.threads)
        _check_device(config.device)
        _note(f"shard {index}/{self.count} of {config.out}")
        requeue = signal.getsignal(_REQUEUE)  # submitit's: checkpoint, requeue, exit
        with first_signal_stops(also=(_REQUEUE,)) as arrived:
            try:
                return self._run(config)
            except KeyboardInterrupt as err:  # saved, and said so (Interrupted)
                if _REQUEUE not in arrived or not callable(requeue):
                    raise
                stopped = err
        _note(f"requeueing shard {index}/{self.count}: {stopped}")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Slurm ends a requeued job with it
        requeue(_REQUEUE, None)  # exits (SystemExit); returns only in a task of rank > 0
        raise stopped

    @staticmethod
    def _run(config: Config) -> Result:
        if isinstance(config, StudyConfig):
            return study(config, on_run=_on_run, on_note=_note)
        return compare(config, on_run=_on_run, on_note=_note)

    def checkpoint(self, index: int) -> Any:
        """What submitit requeues: the same shard (its finished runs are reused)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, index)


@dataclass(frozen=True)
class Submitted:
    """The submitted tasks (submitit jobs, task I running shard I) and their logs folder;
    for local tasks, each one's ``threads`` and the ``cores`` they share (``None``: the
    user's ``OMP_NUM_THREADS`` chose)."""

    cluster: str
    jobs: list[Any]
    logs: Path
    threads: int | None = None
    cores: int | None = None

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
            (``overwrite``) or every task would refuse it (a budget, a missing
            checkpoint, an output folder that holds something else: the
            ``preflight`` of :mod:`~hfft.analysis.compare` or
            :mod:`~hfft.analysis.study`), Slurm is not reachable from here,
            ``sbatch`` refused the job, or local tasks ask for GPUs that this
            machine lacks.
    """
    submitit = load_submitit()
    if config.shard is not None:
        raise ValueError("--submit runs every shard itself; leave out --shard")
    sharded = dataclasses.replace(config, shard=Shard(0, array.shards))  # refusals first
    if isinstance(sharded, StudyConfig):
        study_preflight(sharded)
    else:
        compare_preflight(sharded)
    if array.cluster == "slurm":
        task = ShardTask(config, array.shards)
        return Submitted(array.cluster, _submit_slurm(submitit, task, array), array.logs)
    threads, cores = _local_threads(array.shards)
    task = ShardTask(config, array.shards, local=True, threads=None if cores is None else threads)
    jobs = _submit_local(submitit, task, array)
    return Submitted(array.cluster, jobs, array.logs, threads, cores)


def _local_threads(shards: int) -> tuple[int, int | None]:
    """Each local task's threads, and the cores they share (``None``: the user's
    ``OMP_NUM_THREADS``, which the tasks inherit, says how many)."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given), None
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return max(1, cores // shards), cores


def _use_threads(threads: int) -> None:
    """``threads`` torch threads, and as many for OpenMP and MKL in what this task starts."""
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while local tasks start: their controllers, which share this
    terminal's process group, inherit that, so a Ctrl-C here does not make them kill their
    tasks (which leave the group themselves: :class:`ShardTask`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


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
    with _sigint_ignored():
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
