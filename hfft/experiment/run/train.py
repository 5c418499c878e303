"""SGD training from scratch with evenly spaced checkpoints (paper §3.1, step 1).

The training clock runs only while the optimizer works (batch gathering,
augmentation, forward, backward, update); the per-epoch evaluation of
train-eval, validation and test metrics is paused out of it. The run manifest
``run.json`` records the total training seconds, each epoch's and each
checkpoint's elapsed seconds, and the robust training time (the median epoch ×
the epochs, :func:`hfft.experiment.run.budget.robust_training_seconds`) that a
budget of "10 % of the training time" takes later: a slow spell of the machine
during a few epochs does not multiply the budgets (``budget_time`` names it).
It is rewritten atomically after every epoch, so an interrupted run leaves a
valid manifest (status ``"interrupted"``) and valid checkpoints; with it,
``evaluations.csv``, its epochs' evaluations as a long table
(:mod:`hfft.experiment.run.evaluations_csv`). Its
``status`` is ``"completed"`` only for a training that ran every epoch; a
training that stopped otherwise says so (``"interrupted"``, ``"diverged"``,
``"failed"``, or ``"running"`` after ``kill -9``), and a budget of "10 %" of
it is refused. Training stops at the first epoch whose loss or weights are
not finite, keeping only the checkpoints before it. ``run.json`` lists every
file the run writes (``files``) before writing it, so a rerun removes exactly
those and nothing else (:mod:`hfft.experiment.run.ownership`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from hfft._io import atomic_write_json, number
from hfft._text import quoted, short_list
from hfft._version import __version__
from hfft.experiment.data.datasets import builtin_data
from hfft.experiment.data.factories import absolute_spec, build_model
from hfft.experiment.data.sampling import BatchSampler, BatchStream
from hfft.experiment.data.splits import load_data
from hfft.experiment.interrupts import Interrupted, as_interrupt, first_signal_stops, signals_held
from hfft.experiment.limits import check
from hfft.experiment.records import (
    SCHEMA_VERSION,
    TRAIN_KIND,
    EpochEntry,
    RunManifest,
    TrainConfigEntry,
)
from hfft.experiment.run.budget import robust_training_seconds
from hfft.experiment.run.checkpoint import save_checkpoint
from hfft.experiment.run.evaluation import evaluate_splits
from hfft.experiment.run.evaluations_csv import CSV_NAME, train_rows, write_evaluations
from hfft.experiment.run.ownership import read_record, remove_owned
from hfft.experiment.run.run_folder import claim, clean_stale, locked_folder
from hfft.experiment.run.starting_point import data_notes, fit_task, inferred
from hfft.experiment.strategies.runners import sgd_update
from hfft.models import PROBLEMS, param_groups
from hfft.optim.step_context import synced_time

if TYPE_CHECKING:
    from hfft.optim.output_hessians import Loss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "checkpoint_epochs",
    "same_train_run",
    "sgd_epoch",
    "train",
    "versions",
]

MANIFEST = "run.json"

BUDGET_TIME = "robust_train_seconds"
"""The ``run.json`` field whose seconds ``--budget N%`` takes (its ``budget_time``)."""

USER_VALID_FRACTION = 0.1
"""The part of a user's ``(train, test)`` training set held out for validation before training."""


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run."""

    model: str
    data: str
    out: str
    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    model_args: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    download: bool = False
    checkpoints: int = 10
    seed: int = 0
    device: str = "cpu"
    augment: bool = True
    overwrite: bool = False
    task: str | None = None
    loss: str | None = None
    metric: str | None = None
    valid_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoints", "lr", "momentum", "weight_decay"):
            check(name, getattr(self, name))
        check("seed", self.seed)
        check("valid_fraction", self.valid_fraction)

    @classmethod
    def for_model(cls, model: str, **given: Any) -> TrainConfig:
        """A run of ``model`` with the registered problem's defaults where ``given`` is ``None``.

        Args:
            model: A registered name, or a factory spec of the user's (which
                has no defaults: data, epochs, lr and batch size must be given).
            given: Any field of :class:`TrainConfig`; ``None`` means the default.

        Raises:
            ValueError: For an unknown name, or a user's model without the
                settings it needs.
        """

        problem = PROBLEMS.get(model)
        if problem is None and ":" not in model:
            raise ValueError(
                f"unknown model {model!r}; choose from {', '.join(PROBLEMS)} "
                "or give path/to/file.py:function"
            )
        given = {k: v for k, v in given.items() if v is not None}
        if problem is None:
            missing = [k for k in ("data", "epochs", "lr", "batch_size") if k not in given]
            if missing:
                raise ValueError(
                    "a model of your own needs --data, --epochs, --lr and --batch-size"
                )
            given.setdefault("momentum", 0.0)
            given.setdefault("weight_decay", 0.0)
            return cls(model=model, **given)
        d = problem.defaults
        defaults = {
            "data": d.dataset,
            "epochs": d.epochs,
            "lr": d.lr,
            "batch_size": d.batch_size,
            "momentum": d.momentum,
            "weight_decay": d.weight_decay,
        }
        return cls(model=model, **{**defaults, **given})


@dataclass(frozen=True)
class TrainResult:
    """Where the run's files are and how it ended (``"completed"`` or ``"diverged"``).

    Attributes:
        train_seconds: The training clock's seconds (evaluation excluded).
        robust_train_seconds: The median epoch × the epochs: what ``--budget
            N%`` takes (``None`` from a ``run.json`` written before it was kept).
        diverged_at: The epoch whose loss or weights were not finite (a
            diverged run), else ``None``.
    """

    manifest: Path
    checkpoints: list[Path]
    train_seconds: float
    final_metrics: dict[str, float]
    status: str
    diverged_at: int | None = None
    robust_train_seconds: float | None = None


class TrainingDiverged(ValueError):
    """The model given to train already has non-finite weights."""


def checkpoint_epochs(epochs: int, count: int) -> list[int]:
    """``count`` evenly spaced epochs in ``1..epochs``, the last one at the end.

    Epoch ``round(k · epochs / count)`` for ``k = 1..count`` (deduplicated when
    ``count > epochs``).
    """
    return sorted({max(1, round(k * epochs / count)) for k in range(1, count + 1)})


def versions() -> dict[str, str]:
    """Versions of the libraries that determine the numbers."""
    import numpy

    return {
        "hfft": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def sgd_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Loss,
    batches: BatchStream,
    steps: int,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """One epoch of SGD, ``steps`` batches of ``batches``; returns the sum of batch losses.

    Batches are index gathers on the device (no per-sample Python), augmented
    when the splits allow it, or streamed. The loss sum stays on the device: no
    host synchronisation inside the epoch.
    """

    model.train()
    loss_sum = torch.zeros((), device=batches.y.device)
    for step in range(steps):
        x, y = batches.next()
        loss_sum += sgd_update(model, opt, loss_fn, x, y)
        if on_step is not None:
            on_step(step + 1)
    return loss_sum


def _step_hook(
    on_step: Callable[[int, int, int], None] | None, epoch: int, steps: int
) -> Callable[[int], None] | None:
    if on_step is None:
        return None

    def hook(step: int) -> None:
        on_step(epoch, step, steps)

    return hook


def same_train_run(folder: Path, config: TrainConfig) -> bool:
    """Whether ``folder`` holds a training run of ``config`` (its ``run.json``)."""
    manifest = read_record(folder / MANIFEST)
    if manifest is None or manifest.get("kind") != TRAIN_KIND:
        return False
    stored = manifest.get("config")
    return isinstance(stored, dict) and _key(stored) == _key(asdict(config))


def _key(config: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(config))
    for name in ("out", "overwrite"):
        data.pop(name, None)
    return data


class _Training:
    """A training run's model, data, optimizer and manifest, written as it goes."""

    def __init__(self, config: TrainConfig) -> None:

        self.config, self.out = config, Path(config.out)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.splits = load_data(
            config.data,
            root=config.data_root,
            download=config.download,
            device=self.device,
            seed=config.seed,
            augment=config.augment,
            valid_fraction=_first(config.valid_fraction, USER_VALID_FRACTION),
        )
        self.model = build_model(config.model, config.model_args, self.splits.data_args())
        self.model = self.model.to(self.device)
        _check_finite_start(self.model, config.model)
        asked = {"kind": config.task, "loss": config.loss, "metric": config.metric}
        fitted = fit_task(self.model, self.splits, asked)
        self.task, self.splits = fitted.task, fitted.splits
        self.notes = (*fitted.notes(inferred(asked, config.data)), *data_notes(self.splits))
        self.loss_fn = self.task.loss()
        self.opt = torch.optim.SGD(
            param_groups(self.model, config.weight_decay), lr=config.lr, momentum=config.momentum
        )
        self.sampler = BatchSampler(self.splits.num_train, seed=config.seed, device=self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        # full batches only, like drop_last
        self.steps_per_epoch = max(1, self.splits.num_train // config.batch_size)
        self.batches = BatchStream(
            self.splits.train_x,
            self.splits.train_y,
            functools.partial(self.sampler.next_batch, config.batch_size),
            self.splits.augment,
            self.gen,
        )
        self.elapsed = 0.0
        self.epoch_seconds: list[float] = []
        self.written: list[Path] = []
        self.metrics: dict[str, float] = {}
        self.manifest = self._manifest()

    def _manifest(self) -> RunManifest:
        splits = self.splits
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": TRAIN_KIND,
            "status": "running",
            "config": cast(TrainConfigEntry, asdict(self.config)),
            "data": {
                "name": splits.name,
                "num_classes": splits.num_classes,
                "in_channels": splits.in_channels,
                "input_size": splits.input_size,
                "train_size": splits.num_train,
                "valid_source": splits.valid_source,
            },
            "task": self.task.describe(),
            "device": str(self.device),
            "versions": versions(),
            "train_seconds": 0.0,
            "robust_train_seconds": None,
            "budget_time": BUDGET_TIME,
            "checkpoints": [],
            "epochs": [],
            # every file this run may write, listed before it is written (ownership)
            "files": [MANIFEST, CSV_NAME, *self.checkpoint_names()],
        }

    def checkpoint_names(self) -> list[str]:
        """The names of the checkpoints this run writes, in order."""
        count = len(checkpoint_epochs(self.config.epochs, self.config.checkpoints))
        return [f"ckpt-{k:02d}.safetensors" for k in range(1, count + 1)]

    def metadata(self) -> dict[str, Any]:
        c, splits = self.config, self.splits
        return {
            "model": absolute_spec(c.model),
            "model_args": c.model_args,
            "data": absolute_spec(c.data),
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "input_size": splits.input_size,
            "task": self.task.describe(),
            # what a later load must apply and hold out so that every load agrees
            "normalization": splits.normalization,
            "valid_fraction": self.valid_fraction(),
            "lr": c.lr,
            "batch_size": c.batch_size,
            "momentum": c.momentum,
            "weight_decay": c.weight_decay,
            "epochs_total": c.epochs,
            "seed": c.seed,
            # the data split follows this seed: runs from this checkpoint must reuse it
            "data_seed": c.seed,
            "augment": c.augment,
            "hfft_version": __version__,
        }

    def valid_fraction(self) -> float | None:
        """The part of a user's train held out (``None``: hfft's own rule or the factory's)."""
        if self.splits.valid_source != "held out" or builtin_data(self.config.data) is not None:
            return None
        return _first(self.config.valid_fraction, USER_VALID_FRACTION)

    def write_manifest(self, status: str | None = None) -> list[int]:
        """Write ``run.json`` and the table of its epochs; the signals that arrived meanwhile
        waited for them."""
        with signals_held(deliver=False) as caught:
            if status is not None:
                self.manifest["status"] = status
            self.manifest["train_seconds"] = self.elapsed
            self.manifest["robust_train_seconds"] = self.robust_seconds()
            atomic_write_json(self.out / MANIFEST, self.manifest)
            write_evaluations(self.out / CSV_NAME, train_rows(self.manifest))
        return caught

    def robust_seconds(self) -> float | None:
        """The median epoch × the epochs so far (``None`` before the first epoch)."""
        return robust_training_seconds(self.epoch_seconds) if self.epoch_seconds else None

    def epoch(self, epoch: int, on_step: Callable[[int], None] | None) -> EpochEntry:
        """One timed epoch of SGD, then its evaluation outside the clock."""
        cuda = self.device.type == "cuda"
        start = synced_time(cuda)
        loss_sum = sgd_epoch(
            self.model,
            self.opt,
            self.loss_fn,
            self.batches,
            self.steps_per_epoch,
            on_step,
        )
        seconds = synced_time(cuda) - start
        self.elapsed += seconds
        self.epoch_seconds.append(seconds)
        self.metrics = evaluate_splits(self.model, self.splits, self.task, self.loss_fn)
        record = {
            "epoch": epoch,
            "elapsed_seconds": self.elapsed,
            "epoch_seconds": seconds,
            "train_batch_loss": float(loss_sum) / self.steps_per_epoch,
            **self.metrics,
        }
        self.manifest["epochs"].append(cast(EpochEntry, record))
        return cast(EpochEntry, record)

    def checkpoint(self, epoch: int) -> None:
        path = self.out / self.checkpoint_names()[len(self.written)]
        meta = {**self.metadata(), "epoch": epoch, "elapsed_seconds": self.elapsed}
        save_checkpoint(path, self.model.state_dict(), {**meta, "metrics": self.metrics})
        self.written.append(path)
        self.manifest["checkpoints"].append(
            {"path": path.name, "epoch": epoch, "elapsed_seconds": self.elapsed}
        )


def _check_finite_start(model: nn.Module, name: str) -> None:
    """Refuse a model whose parameters are not finite before the first step."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDiverged(
            f"the model {quoted(name)} has NaN or infinite values in {short_list(bad, 3)} before "
            "training starts; check how it is built and initialised"
        )


def _finite_epoch(record: Mapping[str, Any], model: nn.Module) -> bool:
    """Whether an epoch left finite losses (training batches and every split) and weights."""
    losses = [v for k, v in record.items() if k == "train_batch_loss" or k.endswith("_loss")]
    if any(number(v) is None for v in losses):
        return False
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def finished_run(folder: Path, config: TrainConfig) -> TrainResult | None:
    """The completed run of ``config`` in ``folder`` with every checkpoint there, else
    ``None``."""
    manifest = read_record(folder / MANIFEST)
    if manifest is None or not same_train_run(folder, config):
        return None
    entries, epochs = manifest.get("checkpoints"), manifest.get("epochs")
    seconds, robust = manifest.get("train_seconds"), manifest.get("robust_train_seconds")
    expected = len(checkpoint_epochs(config.epochs, config.checkpoints))
    if (
        manifest.get("status") != "completed"
        or not isinstance(entries, list)
        or len(entries) != expected
        or not isinstance(epochs, list)
        or not epochs
        or not isinstance(epochs[-1], dict)
        or not isinstance(seconds, int | float)
        or not (robust is None or isinstance(robust, int | float))
    ):
        return None
    paths = [folder / str(entry.get("path")) for entry in entries if isinstance(entry, dict)]
    if len(paths) != len(entries) or not all(p.is_file() for p in paths):
        return None
    skip = ("epoch", "elapsed_seconds", "epoch_seconds", "train_batch_loss")
    metrics = {k: v for k, v in epochs[-1].items() if k not in skip}
    kept = None if robust is None else float(robust)
    return TrainResult(folder / MANIFEST, paths, float(seconds), metrics, "completed", None, kept)


def train(
    config: TrainConfig,
    on_step: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[Mapping[str, Any]], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    keep_finished: bool = False,
) -> TrainResult:
    """Train a model with SGD and write checkpoints and the run manifest.

    The data, the model and the output folder are checked before anything is
    written; the folder is locked for the run (one run at a time). A folder
    holding anything that no hfft record there lists is refused; one that
    holds another run's files is refused unless ``config.overwrite``. The
    earlier run's own files (what its ``run.json`` lists) are removed first,
    and nothing else: other hfft runs inside the folder (``finetune-*``) stay.

    Training stops at the first epoch whose loss or weights are not finite:
    the run is ``"diverged"``, with the checkpoints written before it.

    Args:
        config: The run's configuration.
        on_step: Called as ``on_step(epoch, step, steps_per_epoch)`` after
            every optimizer step (for progress bars).
        on_epoch: Called with each epoch's record after its evaluation.
        on_note: Called with one line each on the task, the validation split
            and an earlier run being replaced.
        keep_finished: Return the completed run of this configuration found in
            the folder (checked under its lock, with every checkpoint there)
            instead of training again.

    Returns:
        The :class:`TrainResult` (``status`` ``"completed"`` or ``"diverged"``).

    Raises:
        TrainingDiverged: If the model's weights are not finite before training.
        FolderTaken: For a folder holding files hfft did not write, or another
            run's without ``config.overwrite``.
        Interrupted: On Ctrl-C or SIGTERM, after the manifest was marked
            ``"interrupted"`` (the checkpoints written so far stay valid).
        OSError: When a file cannot be written (a full disk), after the
            manifest was marked ``"failed"`` where it still could be.
    """

    run = _Training(config)
    for line in run.notes:
        _say(on_note, line)
    with first_signal_stops(), locked_folder(run.out):
        if keep_finished and (kept := finished_run(run.out, config)) is not None:
            return kept
        owner = claim(run.out, lambda d: same_train_run(d, config), config.overwrite, MANIFEST)
        if owner != "empty":
            _say(on_note, f"replacing the files of the earlier training in {run.out}")
        clean_stale(run.out)
        remove_owned(run.out)
        run.write_manifest()
        status, diverged_at = _epochs(run, on_step, on_epoch)
        stop = as_interrupt(run.write_manifest(status))
    if stop is not None:
        raise Interrupted.after(stop, f"training had {status}: its files are in {run.out}")
    return TrainResult(
        run.out / MANIFEST,
        run.written,
        run.elapsed,
        run.metrics,
        status,
        diverged_at,
        run.robust_seconds(),
    )


def _say(on_note: Callable[[str], None] | None, line: str) -> None:
    if on_note is not None:
        on_note(line)


def _epochs(
    run: _Training,
    on_step: Callable[[int, int, int], None] | None,
    on_epoch: Callable[[Mapping[str, Any]], None] | None,
) -> tuple[str, int | None]:
    """Every epoch, checkpointing as planned: ``("completed", None)``, or
    ``("diverged", epoch)`` at the first epoch that left a non-finite loss or weight.

    The manifest is marked ``"interrupted"`` on a signal (then
    :class:`Interrupted` is raised) and ``"failed"`` on any other error.
    """
    config = run.config
    save_at = set(checkpoint_epochs(config.epochs, config.checkpoints))
    try:
        for epoch in range(1, config.epochs + 1):
            record = run.epoch(epoch, _step_hook(on_step, epoch, run.steps_per_epoch))
            if not _finite_epoch(record, run.model):
                return "diverged", epoch
            if epoch in save_at:
                run.checkpoint(epoch)
            stop = as_interrupt(run.write_manifest())
            if stop is not None:
                raise stop
            if on_epoch is not None:
                on_epoch(record)
    except KeyboardInterrupt as err:
        run.write_manifest("interrupted")
        raise Interrupted.after(
            err,
            f"{len(run.written)} checkpoint{'' if len(run.written) == 1 else 's'} and "
            f"run.json are saved in {run.out}, marked interrupted",
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk may refuse this write too
            run.write_manifest("failed")
        raise
    return "completed", None
