"""A run's evaluations as TensorBoard event files (``--tensorboard DIR``).

Each run gets its own folder ``DIR/<run name>`` (a comparison's
``<checkpoint>/<strategy label>/seed-<k>``), so that TensorBoard, which
shows every folder holding event files as one run, overlays the strategies
and seeds of a checkpoint. The scalars are ``<split>/<metric>``
(``test/accuracy``, ``valid/loss``, ``train_eval/loss``; a training's
``train_batch/loss`` too: the split and metric of ``evaluations.csv``) at
every evaluation, their step the budget fraction in per mille (a training's:
the epoch) and their wall time the seconds on the clock, so that
TensorBoard's *Relative* axis reads the clock; HF steps add ``hf/damping``,
``hf/rho``, ``hf/cg_iterations`` and ``hf/alpha`` by step number.

A record is written once: the event file's name ends in
``.hfft-<folder>-<record>``, the starts of the SHA-256 of the run's resolved
folder and of its record. A rerun that finds it writes nothing; a run redone
since in the same folder (another record) has the event files hfft wrote
for that folder replaced, never any other file. Events of another folder's
run under the same name (two lone runs ``a/seed-0`` and ``b/seed-0``, two
comparisons with the same checkpoint names) are kept: the run is written
beside them, and a note says so. Checking and writing happen under a lock
on ``DIR``, so that shards sharing it write each run once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from hfft.analysis.trackers.run_record import RunRecord
from hfft.experiment.run.evaluations_csv import split_metric

__all__ = ["MISSING", "log_run", "run_folder", "tag"]

MISSING = "--tensorboard needs the tensorboard extra: pip install 'hfft[tensorboard]'"
_EVENTS = "events.out.tfevents."
_MARK = re.compile(r"\.hfft-([0-9a-f]{8})-([0-9a-f]{16})$")
"""An event file's mark: whose folder (8 hex digits) and which record (16)."""


def run_folder(logdir: Path, name: str) -> Path:
    """Where a run's event files go: its name's parts as folders, each with the characters
    of a strategy label (letters, digits, ``.=,:+_-``) and ``_`` for any other."""
    parts = [re.sub(r"[^A-Za-z0-9.=,:+_-]+", "_", part) for part in name.split("/")]
    return logdir.joinpath(*(p if p.strip(".") else "_" for p in parts))


def tag(key: str) -> str:
    """A record's metric as a scalar's tag, split as ``evaluations.csv`` splits it:
    ``test_accuracy`` → ``test/accuracy``, ``train_batch_loss`` → ``train_batch/loss``."""
    split = split_metric(key)
    return key if split is None else "/".join(split)


def log_run(run: RunRecord, logdir: Path, on_note: Callable[[str], None] | None = None) -> bool:
    """Write ``run``'s scalars into ``logdir``: ``False`` when its record is there already.

    Args:
        run: The finished run.
        logdir: ``--tensorboard``'s folder.
        on_note: Called with one sentence when another folder's run has events under
            the same name (the run is written beside them).

    Raises:
        OSError: When the event files cannot be written.
    """
    from hfft.experiment.run.run_folder import locked_folder

    folder = run_folder(logdir, run.name)
    origin = hashlib.sha256(str(run.folder.resolve()).encode()).hexdigest()[:8]
    mine = f".hfft-{origin}-{run.digest[:16]}"
    with locked_folder(logdir, wait=True):  # shards sharing DIR: one checks and writes at a time
        marks = _marks(folder)
        if (origin, run.digest[:16]) in marks.values():
            return False
        _write(run, folder, mine)
        for path, (written_for, _) in marks.items():
            if written_for == origin:  # this folder's earlier record: replaced, not shown beside
                path.unlink()
        others = {written_for for written_for, _ in marks.values()} - {origin}
    if others and on_note is not None:
        on_note(
            f"TensorBoard shows run {run.name} ({run.folder}) in {folder} together with "
            "another folder's run of that name; give each its own --tensorboard DIR to see "
            "them apart"
        )
    return True


def _marks(folder: Path) -> dict[Path, tuple[str, str]]:
    """The event files hfft wrote in ``folder``, with their marks (folder, record)."""
    found = {}
    for path in folder.glob(_EVENTS + "*") if folder.is_dir() else []:
        mark = _MARK.search(path.name)
        if mark is not None:
            found[path] = (mark[1], mark[2])
    return found


def _write(run: RunRecord, folder: Path, mine: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    try:
        with SummaryWriter(str(folder), filename_suffix=mine) as writer:
            for point in run.points():
                for key, value in point.values.items():
                    writer.add_scalar(tag(key), value, point.x, walltime=point.seconds)
            for number, seconds, values in run.hf_steps():
                for field, value in values.items():
                    writer.add_scalar(f"hf/{field}", value, number, walltime=seconds)
    except BaseException:  # Ctrl-C, a full disk: a file cut short is not taken for logged
        for path in folder.glob(_EVENTS + "*" + mine):
            path.unlink(missing_ok=True)
        raise
