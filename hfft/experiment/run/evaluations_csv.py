"""Every evaluation of a run as rows of one long table: ``evaluations.csv``.

One row per measured value (long format), with the columns of
:class:`EvaluationRow`: which run, where on its budget, which split and metric,
and the value. A fine-tuning run writes the rows of its ``metrics.json``
``evaluations``, a training those of its ``run.json`` ``epochs``; ``compare``
and ``study`` write the rows of all their runs in one file, so that
``pandas.read_csv`` gives every curve in one frame (docs/records.md).

A record key ``{split}_{metric}`` (``train_eval_loss``, ``test_accuracy``, a
training's ``train_batch_loss``) is split into its two columns, so ``split``
and ``metric`` name the record's key again when joined by ``_``. Numbers are
written as Python writes a float (``repr``: read back, the same float); a
``null`` or non-finite value is an empty cell, as ``null`` is in the JSON.
Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from hfft._io import atomic_write_text, number, sha256_file

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "SPLITS",
    "TRAINING_STRATEGY",
    "EvaluationRow",
    "evaluation_rows",
    "finetune_rows",
    "restore_finetune_table",
    "split_metric",
    "train_rows",
    "write_evaluations",
]

CSV_NAME = "evaluations.csv"
"""The table's file name, beside the record it is made from."""

SPLITS = ("train_eval", "train_batch", "valid", "test")
"""The splits of a record's metric keys: the evaluated splits
(:data:`hfft.experiment.run.evaluation.SPLITS`) and a training epoch's batches."""

TRAINING_STRATEGY = "sgd (training)"
"""The ``strategy`` of a training's rows: the SGD of ``hfft train``, told apart from a
fine-tuning strategy called ``sgd``."""


class EvaluationRow(NamedTuple):
    """One value of one evaluation (a row of ``evaluations.csv``).

    Attributes:
        run: The run's folder, relative to the folder of the record that lists it.
        strategy: The strategy label (:data:`TRAINING_STRATEGY` for a training).
        seed: The run's seed.
        checkpoint: The checkpoint it started from (empty for a training).
        budget_fraction: Budget fraction spent (a training: epochs done over its epochs).
        seconds: Seconds on the run's clock (evaluation not on it).
        step: Optimizer steps taken.
        split: ``train_eval``, ``valid``, ``test`` (a training also ``train_batch``).
        metric: ``loss``, ``accuracy``, ``rmse``, ``r2``.
        value: The value; ``None`` where the record has ``null``.
    """

    run: str
    strategy: str
    seed: int | None
    checkpoint: str | None
    budget_fraction: float | None
    seconds: float | None
    step: int | None
    split: str
    metric: str
    value: float | None


COLUMNS = EvaluationRow._fields
"""The table's columns, in order."""


def split_metric(key: str) -> tuple[str, str] | None:
    """A record key's split and metric: ``("test", "accuracy")`` for ``test_accuracy``,
    ``("train_batch", "loss")`` for ``train_batch_loss``; ``None`` for a key that is no
    metric. The one reading of a key: ``evaluations.csv``'s columns and the trackers'
    names (:mod:`hfft.analysis.trackers`) both come from it."""
    for split in SPLITS:
        if key.startswith(split + "_") and len(key) > len(split) + 1:
            return split, key[len(split) + 1 :]
    return None


def evaluation_rows(
    evaluations: Iterable[Any],
    run: str,
    strategy: str,
    seed: int | None,
    checkpoint: str | None,
    position: tuple[str, str, str] = ("fraction", "seconds", "step"),
) -> list[EvaluationRow]:
    """The rows of a list of evaluation entries, each metric in the order of its entry.

    Args:
        evaluations: Entries (``metrics.json``'s ``evaluations``, ``run.json``'s ``epochs``);
            anything not an object is skipped.
        run, strategy, seed, checkpoint: The columns that name the run.
        position: The entry keys of ``budget_fraction``, ``seconds`` and ``step``.
    """
    rows = []
    for entry in evaluations:
        if not isinstance(entry, Mapping):
            continue
        fraction, seconds, step = (entry.get(key) for key in position)
        where = (number(fraction), number(seconds), _count(step))
        for key, value in entry.items():
            named = split_metric(key)
            if named is not None:
                rows.append(
                    EvaluationRow(run, strategy, seed, checkpoint, *where, *named, number(value))
                )
    return rows


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def finetune_rows(
    log: Mapping[str, Any], run: str | None = None, checkpoint: str | None = None
) -> list[EvaluationRow]:
    """The rows of a fine-tuning run's ``metrics.json``.

    Args:
        log: The record (``FinetuneLog``).
        run: The run's name in the table (default: its output folder's name).
        checkpoint: The checkpoint's name in the table (default: as the run was given it).
    """
    config = log.get("config")
    config = config if isinstance(config, Mapping) else {}
    if run is None:
        run = PurePath(str(config.get("out", ""))).name
    if checkpoint is None:
        checkpoint = config.get("checkpoint")
    evaluations = log.get("evaluations")
    return evaluation_rows(
        evaluations if isinstance(evaluations, list) else [],
        run,
        str(log.get("strategy", "")),
        _count(log.get("seed")),
        None if checkpoint is None else str(checkpoint),
    )


def train_rows(manifest: Mapping[str, Any], run: str | None = None) -> list[EvaluationRow]:
    """The rows of a training's ``run.json`` (default ``run``: its folder's name), one
    evaluation per epoch.

    An epoch's budget fraction is the epoch over the training's epochs, its seconds the
    training clock's (``elapsed_seconds``) and its step the SGD steps until then
    (``epoch`` × ⌊train_size / batch_size⌋, at least 1 per epoch, as the training takes them).
    """
    config, data = manifest.get("config"), manifest.get("data")
    config = config if isinstance(config, Mapping) else {}
    data = data if isinstance(data, Mapping) else {}
    if run is None:
        run = PurePath(str(config.get("out", ""))).name
    epochs = _count(config.get("epochs")) or 0
    size, batch = _count(data.get("train_size")), _count(config.get("batch_size"))
    per_epoch = max(1, size // batch) if size is not None and batch else 0
    positioned = []
    for entry in manifest.get("epochs") or []:
        epoch = _count(entry.get("epoch")) if isinstance(entry, Mapping) else None
        if epoch is None:
            continue
        at = {
            "budget_fraction": epoch / epochs if epochs else None,
            "seconds": entry.get("elapsed_seconds"),
            "step": epoch * per_epoch if per_epoch else None,
        }
        positioned.append({**at, **entry})
    return evaluation_rows(
        positioned,
        run,
        TRAINING_STRATEGY,
        _count(config.get("seed")),
        None,
        position=("budget_fraction", "seconds", "step"),
    )


def _cell(value: Any) -> str | int:
    """A cell as written: an empty one for ``None`` or a non-finite float, a float as its
    ``repr`` (read back, the same float)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if number(value) is not None else ""
    return value if isinstance(value, int) else str(value)


def write_evaluations(path: Path, rows: Iterable[EvaluationRow]) -> None:
    """Write ``rows`` as CSV with a header line (:data:`COLUMNS`), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([_cell(v) for v in row] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def restore_finetune_table(folder: Path, log: Mapping[str, Any]) -> bool:
    """Write a fine-tuning run's table again from its ``metrics.json`` (``log``) when the
    record lists it and the file is missing or does not match its recorded SHA-256.

    The table is made from the record alone, so a damaged one costs no run (``compare``
    reuses the run and calls this). Returns whether it was written.
    """
    files = log.get("files")
    if not isinstance(files, Mapping) or CSV_NAME not in files:
        return False  # a run written before hfft wrote tables: left as it is
    path = folder / CSV_NAME
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return False  # not a file hfft writes: left as it is
    if path.is_file() and sha256_file(path) == files[CSV_NAME]:
        return False
    write_evaluations(path, finetune_rows(log))
    return True
