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
    "FLOAT32_MAX",
    "LIMITS",
    "MAX_CHECKPOINTS",
    "MAX_EVAL_POINTS",
    "MAX_SEED",
    "MAX_SEEDS",
    "MAX_TRAIN_SECONDS",
    "Limit",
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
class Limit:
    """What one setting accepts.

    Attributes:
        type: ``int`` or ``float`` (an ``int`` is accepted for a ``float``;
            ``bool`` never is).
        test: Whether a typed, finite value is accepted.
        words: The accepted values, as the error message says them.
    """

    type: type
    test: Callable[[Any], bool]
    words: str

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has the right type, is finite and passes the test."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is int and not isinstance(value, int):
            return False
        return math.isfinite(value) and bool(self.test(value))


LIMITS: dict[str, Limit] = {
    "lr": Limit(float, lambda v: 0 < v <= FLOAT32_MAX, "a positive number no larger than 3.4e38"),
    "batch_size": Limit(int, lambda v: v >= 1, "a positive integer"),
    "momentum": Limit(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": Limit(float, lambda v: v >= 0, "a finite number >= 0"),
    "seed": Limit(int, lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}"),
    "data_seed": Limit(int, lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}"),
    "seeds": Limit(int, lambda v: 1 <= v <= MAX_SEEDS, f"an integer from 1 to {MAX_SEEDS}"),
    "eval_points": Limit(
        int, lambda v: 1 <= v <= MAX_EVAL_POINTS, f"an integer from 1 to {MAX_EVAL_POINTS}"
    ),
    "eval_batch_size": Limit(int, lambda v: v >= 1, "a positive integer"),
    "epochs": Limit(int, lambda v: v >= 1, "a positive integer"),
    "checkpoints": Limit(
        int, lambda v: 1 <= v <= MAX_CHECKPOINTS, f"an integer from 1 to {MAX_CHECKPOINTS}"
    ),
    "train_time": Limit(
        float,
        lambda v: 0 < v <= MAX_TRAIN_SECONDS,
        "a positive number of seconds, at most a year (3.2e7)",
    ),
    "valid_fraction": Limit(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
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
