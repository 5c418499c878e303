"""The values hfft accepts for hyperparameters and run settings, checked in one place.

The same rules hold wherever a value comes from: a command-line option, a
library config, the metadata of a checkpoint or a run manifest. A value that
breaks one is refused with one sentence naming where it came from, before any
work is done. Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hfft._text import quoted

__all__ = [
    "ANY",
    "AT_LEAST_ONE",
    "FLOAT32_MAX",
    "FRACTION",
    "HALF_OPEN_UNIT",
    "LIMITS",
    "MAX_CHECKPOINTS",
    "MAX_EVAL_POINTS",
    "MAX_SEED",
    "MAX_SEEDS",
    "MAX_TRAIN_SECONDS",
    "NONNEGATIVE",
    "OPEN_UNIT",
    "POSITIVE",
    "UNIT",
    "Limit",
    "Range",
    "accepts",
    "check",
]

FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: a learning rate above it is infinite in the model's arithmetic."""

MAX_SEED = 2**32 - 1
"""Seeds are 0 … 2³² − 1, the range NumPy and torch generators both accept."""

MAX_TRAIN_SECONDS = 365 * 24 * 3600.0
"""A training time longer than a year is a broken record, not a training: a budget of
10 % of it would never end."""

MAX_EVAL_POINTS = 1000
"""More evaluations than this would cost more than any budget they measure."""

MAX_SEEDS = 1000
"""Seeds per strategy: a comparison runs every strategy × seed × checkpoint, one after
another, and its paired test separates strategies from 5 seeds on; 1,000 already means
13,000 runs per checkpoint for the extended suite, and more only exhausts memory planning
them (``compare --seeds 4294967295`` died of a MemoryError)."""

MAX_CHECKPOINTS = 1000
"""Checkpoints of a training: each is a file of the whole model, and the paper keeps 10;
``--checkpoints 1000000000`` spent minutes only planning which epochs to save."""


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in: its test and, for messages, its words (``> 0``)."""

    test: Callable[[Any], bool]
    words: str


POSITIVE = Range(lambda v: v > 0, "> 0")
NONNEGATIVE = Range(lambda v: v >= 0, ">= 0")
UNIT = Range(lambda v: 0 <= v <= 1, "in [0, 1]")
OPEN_UNIT = Range(lambda v: 0 < v < 1, "in (0, 1)")
HALF_OPEN_UNIT = Range(lambda v: 0 <= v < 1, "in [0, 1)")
FRACTION = Range(lambda v: 0 < v <= 1, "in (0, 1]")
AT_LEAST_ONE = Range(lambda v: v >= 1, ">= 1")
ANY = Range(lambda v: True, "")


def accepts(kind: type, bounds: Range, value: Any) -> bool:
    """Whether ``value`` is a finite number of type ``kind`` in ``bounds``.

    An ``int`` is accepted for a ``float``; ``bool`` never is. The one test
    behind :class:`Limit` (run settings) and a strategy's numeric options
    (:class:`hfft.experiment.strategies.options.Option`).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind is int and not isinstance(value, int):
        return False
    return math.isfinite(value) and bool(bounds.test(value))


@dataclass(frozen=True)
class Limit:
    """What one setting accepts.

    Attributes:
        type: ``int`` or ``float`` (an ``int`` is accepted for a ``float``;
            ``bool`` never is).
        range: The interval a typed, finite value must lie in.
        words: The accepted values, as the error message says them.
    """

    type: type
    range: Range
    words: str

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has the right type, is finite and lies in the range."""
        return accepts(self.type, self.range, value)


def _between(low: float, high: float) -> Range:
    return Range(lambda v: low <= v <= high, f"from {low} to {high}")


LIMITS: dict[str, Limit] = {
    "lr": Limit(
        float,
        Range(lambda v: 0 < v <= FLOAT32_MAX, "in (0, 3.4e38]"),
        "a positive number no larger than 3.4e38",
    ),
    "batch_size": Limit(int, AT_LEAST_ONE, "a positive integer"),
    "momentum": Limit(float, HALF_OPEN_UNIT, "a number in [0, 1)"),
    "weight_decay": Limit(float, NONNEGATIVE, "a finite number >= 0"),
    "seed": Limit(int, _between(0, MAX_SEED), f"an integer from 0 to {MAX_SEED}"),
    "data_seed": Limit(int, _between(0, MAX_SEED), f"an integer from 0 to {MAX_SEED}"),
    "seeds": Limit(int, _between(1, MAX_SEEDS), f"an integer from 1 to {MAX_SEEDS}"),
    "eval_points": Limit(
        int, _between(1, MAX_EVAL_POINTS), f"an integer from 1 to {MAX_EVAL_POINTS}"
    ),
    "eval_batch_size": Limit(int, AT_LEAST_ONE, "a positive integer"),
    "epochs": Limit(int, AT_LEAST_ONE, "a positive integer"),
    "checkpoints": Limit(
        int, _between(1, MAX_CHECKPOINTS), f"an integer from 1 to {MAX_CHECKPOINTS}"
    ),
    "train_time": Limit(
        float,
        Range(lambda v: 0 < v <= MAX_TRAIN_SECONDS, "in (0, 3.2e7]"),
        "a positive number of seconds, at most a year (3.2e7)",
    ),
    "valid_fraction": Limit(float, HALF_OPEN_UNIT, "a number in [0, 1)"),
}
"""Every checked setting by name."""


def check(name: str, value: Any, where: str | None = None) -> Any:
    """``value`` if :data:`LIMITS` accepts it for ``name``, else a one-sentence ``ValueError``.

    Args:
        name: A key of :data:`LIMITS`.
        value: The value to check; ``None`` passes (the setting is not given).
        where: Who gave the value, for the message (default: the option,
            ``--batch-size`` for ``batch_size``).

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: If the value has the wrong type, is not finite or is out of range.
    """
    if value is None:
        return None
    limit = LIMITS[name]
    if not limit.accepts(value):
        label = where or "--" + name.replace("_", "-")
        raise ValueError(f"{label} must be {limit.words}, got {quoted(value)}")
    return value
