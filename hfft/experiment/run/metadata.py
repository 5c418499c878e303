"""What a checkpoint's metadata may say, checked: the checkpoint is data, never code.

From a checkpoint's metadata hfft takes only names of its own model registry (or of
timm's, ``timm:NAME``) and data sets, with plain argument values (int, float, bool,
str), hyperparameters in their ranges (:mod:`hfft.experiment.limits`), a task by
name and per-channel statistics. A header that names a file, a module or anything
else is refused with one sentence; code runs only when the user names it.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from hfft._text import quoted
from hfft.experiment.limits import FLOAT32_MAX, check

__all__ = ["MIN_STD", "StartingPointError", "trusted_metadata"]


class StartingPointError(ValueError):
    """A checkpoint that cannot be turned into a model with data (one sentence)."""


_PLAIN_VALUES = (bool, int, float, str)
_META_HYPERPARAMETERS = ("lr", "batch_size", "momentum", "weight_decay", "data_seed")


def trusted_metadata(
    path: Path, metadata: dict[str, Any] | None, *, model_given: bool, data_given: bool
) -> dict[str, Any]:
    """What :func:`~hfft.experiment.run.starting_point.load_starting_point` takes from a
    checkpoint's metadata, checked.

    The model must be a name of hfft's registry (or ``timm:NAME`` of timm's) and the
    data set one of its built-in sets (unless the user named them); model arguments
    must be plain values; hyperparameters must pass :mod:`hfft.experiment.limits`.
    Entries the user overrides are not taken (nor checked).

    Raises:
        StartingPointError: For metadata that names code, or values of the wrong type or range.
    """
    from hfft.experiment.data.datasets import DATASETS

    meta = metadata or {}
    trusted: dict[str, Any] = {}
    if not model_given and meta.get("model") is not None:
        trusted["model"], trusted["model_args"] = _trusted_model(path, meta)
    if not data_given and meta.get("data") is not None:
        data = meta["data"]
        if not isinstance(data, str) or _builtin(path, data) is None:
            raise StartingPointError(
                f"{path} names the data {quoted(data)} in its metadata, which is not one of hfft's "
                f"data sets ({', '.join(DATASETS)}); hfft never runs code a checkpoint names: "
                f"pass {_again('--data', data)} if you trust that code"
            )
        trusted["data"] = data
    for key in (*_META_HYPERPARAMETERS, "valid_fraction"):
        try:
            trusted[key] = check(key, meta.get(key), where=f"{key} in the metadata of {path}")
        except ValueError as err:
            raise StartingPointError(str(err)) from None
    trusted["task"] = _trusted_task(path, meta.get("task"))
    trusted["normalization"] = _trusted_normalization(path, meta.get("normalization"))
    return trusted


def _trusted_model(path: Path, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The recorded model: a name of hfft's registry or ``timm:NAME`` of timm's, with plain
    arguments; one sentence otherwise (for a transformers model, its ``final/`` folder)."""
    from hfft.experiment.data.timm_models import TIMM, check_timm_model
    from hfft.experiment.data.user_code import ModelSpecError
    from hfft.models import PROBLEMS

    name = meta["model"]
    # timm:NAME of timm's registry is library code from a fixed list, like hfft's models
    timm = isinstance(name, str) and name.startswith(TIMM)
    if isinstance(name, str) and name.startswith("transformers:"):
        raise StartingPointError(
            f"{path} holds a transformers model ({quoted(name.partition(':')[2])}), which "
            "hfft builds from a model folder's config.json: fine-tune the run's final/ "
            "folder, or pass --model file.py:factory"
        )
    if not isinstance(name, str) or not (name in PROBLEMS or timm):
        raise StartingPointError(
            f"{path} names the model {quoted(name)} in its metadata, which is not one of "
            f"hfft's models ({', '.join(PROBLEMS)}) nor timm:NAME; hfft never runs code a "
            f"checkpoint names: pass {_again('--model', name)} if you trust that code"
        )
    args = meta.get("model_args") or {}
    plain = isinstance(args, dict) and all(
        isinstance(k, str) and isinstance(v, _PLAIN_VALUES) for k, v in args.items()
    )
    if not plain:
        raise StartingPointError(
            f"{path} has model arguments in its metadata that are not plain values "
            "(int, float, bool or str); pass --model and --model-arg explicitly"
        )
    if timm:  # a registered architecture without downloads or files, or one sentence
        try:
            check_timm_model(name, args)
        except ModelSpecError as err:
            raise StartingPointError(
                f"{path} names the model {quoted(name)} in its metadata, which hfft cannot "
                f"take: {str(err).rstrip('.')}"
            ) from None
    return name, dict(args)


def _builtin(path: Path, data: str) -> Any:
    from hfft.experiment.data.datasets import DataError, builtin_data

    try:
        return builtin_data(data)
    except DataError as err:
        raise StartingPointError(f"{path} records data options hfft refuses: {err}") from None


def _again(option: str, name: Any) -> str:
    """The option that names the code again: with the recorded spec when it is one."""
    if isinstance(name, str) and ":" in name and len(name) < 500 and name.isprintable():
        return f"{option} {shlex.quote(name)}"
    return f"{option} explicitly"


def _trusted_task(path: Path, task: Any) -> dict[str, Any] | None:
    """A recorded task: a kind, a class dimension and a metric, all by name."""
    from hfft.experiment.data.task import METRICS

    if task is None:
        return None
    kind = task.get("kind") if isinstance(task, dict) else None
    if kind not in METRICS:
        raise StartingPointError(f"{path} records a task in its metadata that hfft does not know")
    dim, metric = task.get("class_dim", 1), task.get("metric")
    if (
        dim not in (1, -1)
        or isinstance(dim, bool)
        or metric not in (None, *METRICS[kind], "accuracy")
    ):
        raise StartingPointError(f"{path} records a task in its metadata that hfft does not know")
    return {"kind": kind, "class_dim": dim, "metric": metric}


MIN_STD = 1e-12
"""The smallest standard deviation a recorded normalisation may divide by. Statistics that
hfft records are those of real images (a constant channel is recorded as 1); dividing by
less would blow a pixel's rounding error up past any scale a network trains at, and
``std = 1e-320`` (subnormal) made every loss NaN."""


def _trusted_normalization(path: Path, norm: Any) -> dict[str, list[float]] | None:
    """Recorded per-channel statistics, checked.

    The rule: ``mean`` and ``std`` are equally long, non-empty lists of numbers;
    every mean is finite with ``|mean| <= 3.4e38`` (float32's range, in which
    the inputs are normalised) and every std finite with
    ``1e-12 <= std <= 3.4e38`` (:data:`MIN_STD`). The normalised inputs must
    also be finite in float32, which :func:`hfft.experiment.data.splits.load_data`
    checks once they exist.
    """
    if norm is None:
        return None

    def numbers(key: str, least: float) -> bool:
        values = norm.get(key)
        return (
            isinstance(values, list)
            and bool(values)
            and all(
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and least <= abs(v) <= FLOAT32_MAX
                for v in values
            )
        )

    ok = isinstance(norm, dict) and numbers("mean", 0.0) and numbers("std", MIN_STD)
    if not ok or len(norm["mean"]) != len(norm["std"]) or min(norm["std"]) <= 0:
        raise StartingPointError(
            f"{path} records a normalisation in its metadata that is not per-channel means "
            f"within float32's range and standard deviations from {MIN_STD:g} to 3.4e38"
        )
    return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
