"""What a run optimises and reports: the loss, its metrics, and which metric decides.

A :class:`Task` is one of

* ``classification`` — softmax cross-entropy (``ignore_index`` honoured in the
  loss, the curvature and the accuracy); outputs ``(N, C)`` with targets
  ``(N,)``, or per position ``(N, C, T…)`` / ``(N, T…, C)`` with targets
  ``(N, T…)`` (token-level language models, segmentation); metrics loss and
  accuracy (over the non-ignored positions);
* ``regression`` — mean squared error on outputs of any trailing shape;
  metrics loss, RMSE and R² (over all output elements);
* ``multilabel`` — binary cross-entropy on logits for 0/1 targets of the
  outputs' shape; metrics loss and accuracy per label (the share of labels
  predicted right, the threshold at logit 0);
* ``custom`` — the user's loss (``--loss file.py:fn``), whose output Hessian
  autograd computes; metric loss (and accuracy when ``--task classification``
  says what the outputs are).

:func:`infer_task` picks the kind from the data and the model's outputs
(integer targets: classification; float targets of the outputs' shape:
regression; ``--task multilabel`` for 0/1 floats) and says so in one line.
``metric`` decides ``best`` and what ``compare`` ranks by: accuracy for
classification and multi-label, the loss otherwise. Every place that computes
a loss or a metric — training, fine-tuning, the strategies' runners,
evaluation, ``selftest``, ``bench`` — takes it from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hfft.experiment.records import TaskEntry
from hfft.optim.output_hessians import ClassLastCrossEntropy, Loss, loss_normaliser

__all__ = [
    "KINDS",
    "METRICS",
    "Task",
    "TaskError",
    "check_labels",
    "check_targets",
    "infer_task",
    "load_loss",
]

KINDS = ("classification", "regression", "multilabel", "custom")
"""The kinds of task."""

METRICS = {
    "classification": ("loss", "accuracy"),
    "regression": ("loss", "rmse", "r2"),
    "multilabel": ("loss", "accuracy"),
    "custom": ("loss",),
}
"""The metrics each kind reports, per split."""

IGNORE_INDEX = -100
"""The target of a position that counts nowhere (PyTorch's default ``ignore_index``)."""


class TaskError(ValueError):
    """Data and model outputs that do not make a task (one sentence)."""


@dataclass(frozen=True)
class Task:
    """A run's loss and metrics.

    Attributes:
        kind: One of :data:`KINDS`.
        class_dim: Classification: the classes' dimension of the outputs
            (1, or -1 for ``(N, T…, C)``).
        metric: The metric ``best`` and rankings use (default by kind).
        custom_loss: The user's loss (kind ``custom``); code, so never from a file.
        as_classes: A custom loss on class outputs: also report accuracy.
    """

    kind: str = "classification"
    class_dim: int = 1
    metric: str | None = None
    custom_loss: Loss | None = field(default=None, compare=False)
    as_classes: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TaskError(f"task must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "custom") != (self.custom_loss is not None):
            raise TaskError("a custom task needs its loss (--loss), and only it has one")
        if self.metric is not None and self.metric not in self.metrics:
            raise TaskError(
                f"--metric must be one of {', '.join(self.metrics)} for {self.kind}, "
                f"got {self.metric!r}"
            )

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics reported for every split."""
        if self.kind == "custom" and self.as_classes:
            return ("loss", "accuracy")
        return METRICS[self.kind]

    @property
    def best_metric(self) -> str:
        """The metric that decides ``best`` (on validation) and rankings (on test)."""
        if self.metric is not None:
            return self.metric
        return "accuracy" if "accuracy" in self.metrics else "loss"

    def loss(self) -> Loss:
        """The batch loss (a new module), averaged as the metrics are."""
        if self.kind == "classification":
            cls = ClassLastCrossEntropy if self.class_dim == -1 else nn.CrossEntropyLoss
            return cls(ignore_index=IGNORE_INDEX)
        if self.kind == "regression":
            return nn.MSELoss()
        if self.kind == "multilabel":
            return nn.BCEWithLogitsLoss()
        assert self.custom_loss is not None
        return self.custom_loss

    def describe(self) -> TaskEntry:
        """JSON-ready, for metadata and logs (names only: a custom loss is not recorded)."""
        return {"kind": self.kind, "class_dim": self.class_dim, "metric": self.best_metric}

    # -- metrics over batches --------------------------------------------------------------

    def batch_sums(self, loss_fn: Loss, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """What one evaluation batch adds to the sums :meth:`finish` turns into metrics."""
        loss = float(loss_fn(outputs, targets))
        if _is_mean(loss_fn):  # the mean over the loss's own normaliser, summed exactly
            norm = loss_normaliser(loss_fn, targets)
            sums = {"loss": loss * norm, "norm": norm}
        else:  # a summed loss, reported per sample
            sums = {"loss": loss, "norm": float(len(targets))}
        if "accuracy" in self.metrics and self.kind != "multilabel":
            pred = outputs.argmax(dim=self.class_dim)
            keep = targets != IGNORE_INDEX
            sums["correct"] = float(((pred == targets) & keep).sum())
            sums["count"] = float(keep.sum())
        elif self.kind == "multilabel":
            sums["correct"] = float(((outputs > 0) == (targets > 0.5)).sum())
            sums["count"] = float(targets.numel())
        if self.kind == "regression":
            y = targets.to(torch.float64)
            sums["sse"] = float((outputs.to(torch.float64) - y).pow(2).sum())
            sums["n"], sums["sum_y"], sums["sum_y2"] = (
                float(y.numel()),
                float(y.sum()),
                float(y.pow(2).sum()),
            )
        return sums

    def finish(self, sums: dict[str, float]) -> dict[str, float]:
        """The metrics from the summed :meth:`batch_sums` (NaN where nothing was counted)."""
        out = {"loss": _ratio(sums["loss"], sums["norm"])}
        if "correct" in sums:
            out["accuracy"] = _ratio(sums["correct"], sums["count"])
        if self.kind == "regression":
            n = sums["n"]
            out["rmse"] = math.sqrt(_ratio(sums["sse"], n)) if n else math.nan
            spread = sums["sum_y2"] - sums["sum_y"] ** 2 / n if n else 0.0
            out["r2"] = 1.0 - sums["sse"] / spread if spread > 0 else math.nan
        return out


def _is_mean(loss_fn: Loss) -> bool:
    return getattr(loss_fn, "reduction", "mean") == "mean"


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def infer_task(
    outputs: Tensor,
    targets: Tensor,
    kind: str | None = None,
    custom_loss: Loss | None = None,
    metric: str | None = None,
) -> tuple[Task, str]:
    """The task that fits the model's outputs and the targets, and one line saying which.

    Args:
        outputs: The model's outputs for a few samples.
        targets: Their targets.
        kind: The kind asked for (``--task``), else inferred.
        custom_loss: The user's loss (``--loss``).
        metric: The metric asked for (``--metric``).

    The values of the targets are not checked here but by :func:`check_targets`,
    over every sample of every split (a few samples would name the wrong largest label).

    Raises:
        TaskError: If the targets do not fit the outputs (kind, dtype, shape).
    """
    if custom_loss is not None:
        as_classes = kind == "classification"
        dim = _class_dim(outputs, targets) if as_classes else 1
        task = Task("custom", dim, metric, custom_loss, as_classes)
        return task, "task: your loss (--loss)" + (", with accuracy" if as_classes else "")
    if kind is None:
        kind = "regression" if targets.is_floating_point() else "classification"
    if kind == "classification":
        if targets.is_floating_point():
            raise TaskError(
                f"classification needs integer class labels, but the targets are {targets.dtype}; "
                "use --task regression or --task multilabel"
            )
        dim = _class_dim(outputs, targets)
        where = "per position" if targets.ndim > 1 else "one label per sample"
        return Task(kind, dim, metric), f"task: classification ({where}, cross-entropy)"
    if tuple(outputs.shape) != tuple(targets.shape):
        raise TaskError(
            f"{kind} needs targets shaped like the outputs, but the outputs are "
            f"{tuple(outputs.shape)} and the targets {tuple(targets.shape)}"
        )
    loss = "mean squared error" if kind == "regression" else "binary cross-entropy"
    return Task(kind, 1, metric), f"task: {kind} ({loss})"


def _class_dim(outputs: Tensor, targets: Tensor) -> int:
    n, rest = outputs.shape[0], tuple(targets.shape[1:])
    if outputs.ndim == targets.ndim + 1 and targets.shape[0] == n:
        if tuple(outputs.shape[2:]) == rest:
            return 1
        if tuple(outputs.shape[1:-1]) == rest:
            return -1
    raise TaskError(
        f"class labels of shape {tuple(targets.shape)} do not fit outputs of shape "
        f"{tuple(outputs.shape)}; expected (N, C) with (N,), (N, C, T…) or (N, T…, C) with (N, T…)"
    )


def check_targets(task: Task, outputs: Tensor, targets: Mapping[str, Tensor]) -> None:
    """Every target of every split fits the task, checked at once (vectorised) before any work.

    Class labels (when the task reports accuracy on classes) must be indices of
    the outputs, :func:`check_labels`; multi-label targets must be 0 or 1.

    Args:
        task: The task.
        outputs: The model's outputs on a few samples (the classes' count).
        targets: Each split's targets by name (``"train"``, ``"valid"``, ``"test"``).

    Raises:
        TaskError: Naming the largest label (or the bad value) and the splits that hold it.
    """
    if task.kind == "multilabel":
        for split, y in targets.items():
            bad = y[(y != 0) & (y != 1)]
            if bad.numel():
                raise TaskError(
                    f"multi-label targets must be 0 or 1, but the {split} split holds "
                    f"{bad.numel()} other values, such as {float(bad[0])}"
                )
    elif "accuracy" in task.metrics:
        check_labels(targets, outputs.shape[task.class_dim])


def check_labels(targets: Mapping[str, Tensor], width: int) -> None:
    """Class labels must be indices of the outputs (or :data:`IGNORE_INDEX`), in every split.

    Args:
        targets: Each split's labels by name.
        width: The number of classes the model outputs.

    Raises:
        TaskError: For a negative label, or labels ``>= width``: the message
            names the largest label of all splits and how many are too large where.
    """
    kept = {split: y[y != IGNORE_INDEX] for split, y in targets.items()}
    for split, y in kept.items():
        if y.numel() and int(y.min()) < 0:
            raise TaskError(
                f"class labels must be >= 0 (or {IGNORE_INDEX} to ignore a position), but the "
                f"{split} split holds {int(y.min())}"
            )
    top = max((int(y.max()) for y in kept.values() if y.numel()), default=-1)
    if top >= width:
        counts = ", ".join(
            f"{int((y >= width).sum())} in {split}"
            for split, y in kept.items()
            if (y >= width).any()
        )
        raise TaskError(
            f"the data has class labels up to {top} but the model outputs {width} classes "
            f"(labels of {width} or more: {counts}); give the model at least {top + 1} outputs"
        )


def load_loss(spec: str) -> Loss:
    """The user's loss from ``file.py:fn`` or ``package.module:fn`` (a loss or a factory of one).

    Loading a file executes it: the user named it on the command line.

    Raises:
        TaskError: If it cannot be loaded or does not make a loss.
        UserCodeError: If calling the factory (or the loss class) fails, ``sys.exit`` included.
    """
    from hfft.experiment.data.factories import ModelSpecError, load_factory
    from hfft.experiment.data.user_code import calling

    try:
        obj: Any = load_factory(spec)
    except ModelSpecError as err:  # from err: --debug shows a failed import's traceback
        raise TaskError(f"loss {spec!r} cannot be loaded: {str(err).rstrip('.')}") from err
    advice = "Make it a loss(outputs, targets), or a function of no arguments that returns one"
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        with calling(f"Loss {spec!r} failed: hfft called the class to make the loss", advice):
            obj = obj()  # an nn.Module class, e.g. torch.nn:HuberLoss
    elif not isinstance(obj, nn.Module):  # a factory that returns the loss, or the loss itself
        with calling(f"Loss {spec!r} failed: hfft called it without arguments", advice):
            try:
                made = obj()
            except TypeError:  # it needs arguments: the loss function itself
                made = None
        obj = made if callable(made) else obj
    if not callable(obj):
        raise TaskError(f"loss {spec!r} is not callable as loss(outputs, targets)")
    return obj
