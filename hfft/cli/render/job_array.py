"""What ``--submit`` prints: the job ids, where the logs go, the command that assembles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hfft.analysis.job_array import Submitted

__all__ = ["submission_lines"]


def submission_lines(submitted: Submitted, out: str | Path, assemble: str) -> list[str]:
    """Three lines: the jobs (task I runs shard I/N), the logs, the ranking's command."""
    n, first = len(submitted.jobs), submitted.jobs[0]
    array = submitted.array_id
    if array is not None:
        jobs = (
            f"submitted {n} shards as Slurm job array {array}: task {array}_I runs shard I/{n} "
            f"(squeue -j {array} shows them, scancel {array} stops them)"
        )
    else:
        each = ", ".join(f"{i}/{n} as job {j}" for i, j in enumerate(submitted.job_ids))
        jobs = f"started {n} shards as processes on this machine: shard {each}"
    return [
        jobs,
        f"logs: {submitted.logs} (shard 0/{n}: {first.paths.stdout.name}, "
        f"{first.paths.stderr.name})",
        f"the last shard to end writes the ranking into {out}; assemble it again (e.g. after "
        f"rerunning a failed shard) with: {assemble}",
    ]
