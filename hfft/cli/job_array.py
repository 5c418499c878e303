"""``--submit``: the shards of ``compare`` and ``study`` as a job array (the command line's side).

The options are checked before any work; the tasks' device is settled here,
so that every task records the same one and the printed command that
assembles the ranking names it; what was submitted is printed (the job ids,
the logs folder, that command). With ``--wait`` the command waits for every
task and prints the ranking as one process would. The submission itself is
:mod:`hfft.analysis.job_array`.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hfft.cli.common import fail, print_json, resolve_device, takes_options
from hfft.optim.distributed import launched

if TYPE_CHECKING:
    from hfft.analysis.compare import CompareConfig
    from hfft.analysis.job_array import JobArray, Submitted
    from hfft.analysis.study import StudyConfig

__all__ = [
    "NO_JOBS",
    "ArrayOpt",
    "Cluster",
    "CpusPerTaskOpt",
    "GpusPerTaskOpt",
    "PartitionOpt",
    "SubmitArgs",
    "SubmitOpt",
    "TimeOpt",
    "WaitOpt",
    "assemble_command",
    "takes_jobs",
]


class Cluster(str, Enum):
    """Where ``--submit`` sends the shards."""

    slurm = "slurm"
    local = "local"


SubmitOpt = Annotated[
    Cluster | None,
    typer.Option(
        help="Submit the shards (--array N) through submitit: as one Slurm job array, or as "
        "processes on this machine (local); prints the job ids (the slurm extra).",
    ),
]
ArrayOpt = Annotated[
    int | None,
    typer.Option(metavar="<int>", min=1, help="With --submit: how many shards (tasks)."),
]
PartitionOpt = Annotated[str | None, typer.Option(help="With --submit slurm: the partition.")]
GpusPerTaskOpt = Annotated[
    int | None,
    typer.Option(
        metavar="<int>",
        min=0,
        help="With --submit: GPUs for each task (default: 1 with --device cuda; with auto, "
        "slurm's tasks run on cuda when given GPUs, local ones when this machine has CUDA).",
    ),
]
CpusPerTaskOpt = Annotated[
    int | None,
    typer.Option(metavar="<int>", min=1, help="With --submit slurm: CPU cores for each task."),
]
TimeOpt = Annotated[
    str | None,
    typer.Option(
        help="With --submit: each task's time limit, e.g. 4h (needed for slurm); a task "
        "that nears it is requeued and resumes."
    ),
]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait", help="With --submit: wait for every task, then print the ranking."),
]

_LEFT_OUT = frozenset(
    ("submit", "array", "partition", "gpus_per_task", "cpus_per_task", "time", "wait", "shard",
     "device")
)  # fmt: skip
"""What the command that assembles does not repeat (it gets ``--device`` and ``--shard none``)."""


@dataclasses.dataclass(frozen=True)
class SubmitArgs:
    """The ``--submit`` options of a command, as typed."""

    cluster: Cluster | None = None
    array: int | None = None
    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    time: str | None = None
    wait: bool = False

    @classmethod
    def typed(cls, values: dict[str, Any]) -> SubmitArgs:
        """The options as the command line gave them (``submit`` is the cluster)."""
        return cls(**{("cluster" if k == "submit" else k): v for k, v in values.items()})

    def check(self, shard: str | None, trackers: bool = False) -> None:
        """Refuse options that do not go together, and a missing submitit, before any work.

        Raises:
            ValueError: One sentence saying which.
        """
        if self.cluster is None:
            given = [
                f"--{name.replace('_', '-')}"
                for name in ("array", "partition", "gpus_per_task", "cpus_per_task", "time")
                if getattr(self, name) is not None
            ] + (["--wait"] if self.wait else [])
            if given:
                raise ValueError(f"{', '.join(given)} only go with --submit (slurm or local)")
            return
        from hfft.analysis.job_array import load_submitit

        if shard is not None:
            raise ValueError("--submit runs every shard itself (--array N); leave out --shard")
        if self.array is None:
            raise ValueError("--submit needs --array N, the number of shards (tasks) to submit")
        if launched():
            raise ValueError("--submit starts the shards as jobs of their own; not under torchrun")
        if trackers:
            raise ValueError(
                "--tensorboard and --mlflow log the runs of the process that runs them: submit "
                "without them, then log every run with the command that assembles (--shard none)"
            )
        load_submitit()

    def device(self, typed: str) -> tuple[str, bool]:
        """The tasks' device, and ``True`` (this process reports, as rank 0 would).

        Local tasks resolve ``auto`` on this machine; Slurm tasks take ``cuda``
        when they are given GPUs, ``cpu`` otherwise (the login node's own devices
        say nothing about the cluster's).
        """
        if re.fullmatch(r"cuda:\d+", typed.strip()):
            raise fail(f"--submit gives each task its own GPUs: use --device cuda, not {typed}")
        if self.cluster is Cluster.local or not re.fullmatch(r"auto|cpu|cuda", typed):
            return resolve_device(typed), True
        if typed == "auto":
            return ("cuda" if self.gpus_per_task else "cpu"), True
        return typed, True

    def job_array(self, out: str | Path, device: str, command: str) -> JobArray:
        """The tasks to submit for ``out`` on ``device`` (``command``: the job's name)."""
        from hfft.analysis.job_array import JobArray, logs_folder, minutes
        from hfft.experiment.run.budget import parse_duration

        gpus = self.gpus_per_task
        if gpus is None:
            gpus = 1 if device.startswith("cuda") else 0
        if device.startswith("cuda") and gpus == 0:
            raise ValueError("--device cuda with --gpus-per-task 0 gives the tasks no GPU")
        assert self.cluster is not None and self.array is not None  # checked by check()
        return JobArray(
            cluster=self.cluster.value,
            shards=self.array,
            logs=logs_folder(out),
            time_min=None if self.time is None else minutes(parse_duration(self.time)),
            partition=self.partition,
            gpus_per_task=gpus,
            cpus_per_task=self.cpus_per_task,
            name=f"hfft-{command}",
        )

    def submit(
        self,
        ctx: typer.Context,
        config: CompareConfig | StudyConfig,
        show: Callable[[Any], Any],
        as_json: bool = False,
    ) -> None:
        """Submit the shards of ``config`` and say so; with ``--wait``, wait and ``show``
        the result of the task that wrote the ranking."""
        from hfft.analysis.job_array import submit
        from hfft.cli.render.job_array import submission_lines

        command = ctx.info_name or "compare"
        submitted = submit(config, self.job_array(config.out, config.device, command))
        assemble = assemble_command(ctx, config.device)
        if as_json and not self.wait:
            print_json(
                {"jobs": submitted.job_ids, "logs": str(submitted.logs), "assemble": assemble}
            )
            return
        for line in submission_lines(submitted, config.out, assemble):
            typer.echo(line, err=as_json)
        if self.wait:
            show(_waited(submitted, assemble))


takes_jobs = takes_options(
    "jobs",
    {
        "submit": (SubmitOpt, None),
        "array": (ArrayOpt, None),
        "partition": (PartitionOpt, None),
        "gpus_per_task": (GpusPerTaskOpt, None),
        "cpus_per_task": (CpusPerTaskOpt, None),
        "time": (TimeOpt, None),
        "wait": (WaitOpt, False),
    },
    SubmitArgs.typed,
)
"""Give ``compare`` and ``study`` the ``--submit`` options in place of their parameter
``jobs``, one :class:`SubmitArgs`."""

NO_JOBS = SubmitArgs()
"""The default of ``jobs`` in a signature; :func:`takes_jobs` replaces it."""


def _waited(submitted: Submitted, assemble: str) -> Any:
    """Wait for every task: the result of the one that wrote the ranking.

    Raises:
        typer.Exit: Exit code 1 with one paragraph when a task failed or none wrote it.
    """
    from hfft.analysis.job_array import ShardFailed, wait
    from hfft.experiment.interrupts import Interrupted

    try:
        results = wait(submitted)
    except ShardFailed as err:
        raise fail(str(err), code=1) from None
    except KeyboardInterrupt:  # local tasks run in sessions of their own: Ctrl-C spares them
        running = (
            f"job array {submitted.array_id} runs on (scancel {submitted.array_id} stops it)"
            if submitted.array_id is not None
            else f"the tasks run on (kill {' '.join(submitted.job_ids)} stops them, each saving "
            f"its run in progress; logs in {submitted.logs})"
        )
        raise Interrupted(f"stopped waiting; {running}") from None
    done = [r for r in results if _comparison(r).assembled]
    if not done:
        raise fail(
            f"every task ended, but none wrote the ranking (some runs are missing); see the "
            f"logs in {submitted.logs}, and assemble with: {assemble}",
            code=1,
        )
    return done[-1]


def _comparison(result: Any) -> Any:
    """The comparison of a task's result (a study's, or the comparison itself)."""
    return getattr(result, "comparison", result)


def assemble_command(ctx: typer.Context, device: str) -> str:
    """The command as typed, without the ``--submit`` options, on the tasks' ``device``
    and with ``--shard none``: it assembles the ranking from the tasks' runs."""
    words, options = ["hfft", ctx.info_name or "compare"], list[str]()
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        if name in _LEFT_OUT or source is None or source.name.startswith("DEFAULT"):
            continue
        typed = _typed(param, ctx.params.get(name))
        (words if param.param_type_name == "argument" else options).extend(typed)
    return shlex.join([*words, *options, "--device", device, "--shard", "none"])


def _typed(param: Any, value: Any) -> list[str]:
    """The words that give ``param`` its ``value`` on the command line."""
    if value is None:
        return []
    values = list(value) if isinstance(value, list | tuple) else [value]
    shown = [str(getattr(v, "value", v)) for v in values]
    if param.param_type_name == "argument":
        return shown
    flag = max(param.opts, key=len)
    if getattr(param, "is_flag", False) and isinstance(value, bool):
        secondary = list(getattr(param, "secondary_opts", None) or [])
        if value:
            return [flag]
        return [max(secondary, key=len)] if secondary else []
    return [word for v in shown for word in (flag, v)]
