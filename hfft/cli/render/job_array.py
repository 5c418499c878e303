"""What ``--submit`` prints: the job ids, where the logs go, the command that assembles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hfft.analysis.job_array import Submitted

__all__ = ["submission_lines"]


def submission_lines(submitted: Submitted, out: str | Path, assemble: str) -> list[str]:
    """Three lines: the jobs (task I runs shard I/N), the logs, the ranking's command
    (and how to rerun one shard with it)."""
    n, first = len(submitted.jobs), submitted.jobs[0]
    shards = f"{n} shard{'s' if n != 1 else ''}"
    array = submitted.array_id
    if array is not None:
        jobs = (
            f"submitted {shards} as Slurm job array {array}: task {array}_I runs shard I/{n} "
            f"(squeue -j {array} shows them, scancel {array} stops them)"
        )
        rerun = f"--shard I/{n} (in an sbatch --array=I job: --shard slurm/{n})"
    else:
        each = ", ".join(f"{i}/{n} as job {j}" for i, j in enumerate(submitted.job_ids))
        jobs = f"started {shards} as {'processes' if n != 1 else 'a process'} on this machine"
        jobs += f"{_threads(submitted)}: shard {each}"
        rerun = f"--shard I/{n}"
    return [
        jobs,
        f"logs: {submitted.logs} (shard 0/{n}: {first.paths.stdout.name}, "
        f"{first.paths.stderr.name})",
        f"the last shard to end writes the ranking into {out}; to rerun shard I alone, give "
        f"the command below {rerun} instead of --shard none; assemble the ranking again with: "
        f"{assemble}",
    ]


def _threads(submitted: Submitted) -> str:
    """How many threads each local task uses, and why."""
    threads = submitted.threads
    if threads is None:
        return ""
    each = f"{threads} thread{'s' if threads != 1 else ''} each"
    if submitted.cores is None:
        return f" ({each}, as OMP_NUM_THREADS says)"
    return f" ({each}: the {submitted.cores} cores shared)"
