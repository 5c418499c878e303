"""A run's evaluations as TensorBoard event files (``--tensorboard DIR``).

Each run gets its own folder ``DIR/<run name>`` (a comparison's
``<checkpoint>/<strategy label>/seed-<k>``), so that TensorBoard, which
shows every folder holding event files as one run, overlays the strategies
and seeds of a checkpoint. The scalars are ``<split>/<metric>``
(``test/accuracy``, ``valid/loss``, ``train_eval/loss``; a training's
``train/batch_loss`` too) at every evaluation, their step the budget
fraction in per mille (a training's: the epoch) and their wall time the
seconds on the clock, so that TensorBoard's *Relative* axis reads the
clock; HF steps add ``hf/damping``, ``hf/rho``, ``hf/cg_iterations`` and
``hf/alpha`` by step number.

A record is written once: the event file's name ends in ``.hfft-`` and the
start of the record's SHA-256. A rerun that finds it writes nothing; a run
redone since (another record under the same name) has the event files hfft
wrote there replaced, never any other file.
"""

from __future__ import annotations

import re
from pathlib import Path

from hfft.analysis.trackers.run_record import RunRecord, split_metric

__all__ = ["MISSING", "log_run", "require", "run_folder", "tag"]

MISSING = "--tensorboard needs the tensorboard extra: pip install 'hfft[tensorboard]'"
_EVENTS = "events.out.tfevents."
_MARK = ".hfft-"


def require() -> None:
    """Check that TensorBoard's package is there.

    Raises:
        ValueError: Naming the extra that installs it.
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError(MISSING) from None


def run_folder(logdir: Path, name: str) -> Path:
    """Where a run's event files go: its name's parts as folders, each with the characters
    of a strategy label (letters, digits, ``.=,:+_-``) and ``_`` for any other."""
    parts = [re.sub(r"[^A-Za-z0-9.=,:+_-]+", "_", part) for part in name.split("/")]
    return logdir.joinpath(*(p if p.strip(".") else "_" for p in parts))


def tag(key: str) -> str:
    """A record's metric as a scalar's tag: ``test_accuracy`` → ``test/accuracy``."""
    split = split_metric(key)
    return key if split is None else "/".join(split)


def log_run(run: RunRecord, logdir: Path) -> bool:
    """Write ``run``'s scalars into ``logdir``: ``False`` when its record is there already.

    Raises:
        OSError: When the event files cannot be written.
    """
    from torch.utils.tensorboard import SummaryWriter

    folder = run_folder(logdir, run.name)
    mine = _MARK + run.digest[:16]
    earlier = [p for p in folder.glob(_EVENTS + "*") if _MARK in p.name] if folder.is_dir() else []
    if any(p.name.endswith(mine) for p in earlier):
        return False
    for path in earlier:  # an earlier record of this name: replaced, not shown beside it
        path.unlink()
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
    return True
