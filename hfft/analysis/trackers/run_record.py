"""A finished run as the trackers read it: its record, and the points they log.

Both trackers log the same points, read from the record the run wrote
(``metrics.json`` of a fine-tuning run, ``run.json`` of a training): every
evaluation's metrics at one x value and one clock reading. For a fine-tuning
run x is the budget fraction in per mille (0 … 1000) and the clock its
``seconds`` (evaluations are off it); for a training, the epoch and its
``elapsed_seconds``. HF steps (also ``auto``'s) add their damping λ, ρ, CG
iterations and step size α by step number.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfft.experiment.records import FINETUNE_KIND, TRAIN_KIND
from hfft.experiment.run.evaluations_csv import split_metric

__all__ = ["HF_STEP_FIELDS", "Point", "RunRecord", "read_run"]

RECORD_FILES = {FINETUNE_KIND: "metrics.json", TRAIN_KIND: "run.json"}
"""The record each kind of run writes."""

HF_STEP_FIELDS = ("damping", "rho", "cg_iterations", "alpha")
"""What an HF step entry gives the trackers (``hfft.optim.step_record.StepRecord``'s names)."""


@dataclass(frozen=True)
class Point:
    """One evaluation: its x value (per mille of the budget, or the epoch), the seconds on
    the clock, and its finite metrics by their record names (``test_accuracy``, …)."""

    x: int
    seconds: float
    values: dict[str, float]


@dataclass(frozen=True)
class RunRecord:
    """A finished run's record as it is on disk.

    Attributes:
        name: The run's name in the trackers (``ckpt-10/hf:m=2048/seed-3``, ``finetune-hf``).
        folder: The run's folder.
        record: Its ``metrics.json`` or ``run.json``.
        digest: The SHA-256 of that file: a record is logged once.
    """

    name: str
    folder: Path
    record: Mapping[str, Any]
    digest: str

    @property
    def kind(self) -> str:
        """``hfft-finetune`` or ``hfft-train``."""
        return str(self.record["kind"])

    @property
    def is_training(self) -> bool:
        return self.kind == TRAIN_KIND

    @property
    def record_file(self) -> Path:
        return self.folder / RECORD_FILES[self.kind]

    @property
    def weights(self) -> Path | None:
        """The final weights: ``final.safetensors``, or a training's last checkpoint."""
        if self.is_training:
            written = self.record.get("checkpoints") or []
            path = self.folder / str(written[-1].get("path")) if written else None
        else:
            path = self.folder / "final.safetensors"
        return path if path is not None and path.is_file() else None

    def points(self) -> list[Point]:
        """Every evaluation, in the order the run made them."""
        if self.is_training:
            return [
                Point(int(e["epoch"]), float(e["elapsed_seconds"]), _metrics(e))
                for e in self.record.get("epochs", [])
            ]
        return [
            Point(round(1000 * float(e["fraction"])), float(e["seconds"]), _metrics(e))
            for e in self.record.get("evaluations", [])
        ]

    def hf_steps(self) -> Iterator[tuple[int, float | None, dict[str, float]]]:
        """The HF steps as (step number in the run, seconds on the clock after it, the
        finite values of :data:`HF_STEP_FIELDS`)."""
        for number, entry in enumerate(self.record.get("steps", []), start=1):
            if isinstance(entry, dict) and "cg_iterations" in entry:
                values = {k: float(entry[k]) for k in HF_STEP_FIELDS if _finite(entry.get(k))}
                yield number, _seconds(entry.get("seconds")), values

    @property
    def seconds(self) -> float:
        """The clock's last reading (0 before any evaluation)."""
        return max((p.seconds for p in self.points()), default=0.0)


def read_run(name: str, folder: Path) -> RunRecord | None:
    """The finished run in ``folder`` (``None`` when it holds no record of a run).

    Raises:
        OSError: When the record cannot be read.
        ValueError: When it is not JSON.
    """
    for path in (folder / "metrics.json", folder / "run.json"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        try:
            record = json.loads(data)
        except ValueError as err:
            raise ValueError(f"{path} is not JSON ({err})") from None
        if isinstance(record, dict) and RECORD_FILES.get(str(record.get("kind"))) == path.name:
            return RunRecord(name, folder, record, hashlib.sha256(data).hexdigest())
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The finite split metrics of an evaluation (an unmeasured one is ``null``: left out),
    the keys read as ``evaluations.csv`` reads them."""
    return {k: float(v) for k, v in entry.items() if split_metric(k) and _finite(v)}
