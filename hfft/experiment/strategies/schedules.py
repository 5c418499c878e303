"""Learning-rate schedules of the SGD baselines.

A schedule maps the fraction ``f ∈ [0, 1]`` of the budget spent to a learning
rate, so the same schedule serves a wall-clock budget and a step budget:

* ``constant`` (``sgd``): ``α`` (:func:`constant`);
* ``div10`` (``sgd-div10``): ``α / 10`` (:func:`div10`);
* ``cosine`` (``sgd-cosine``, and ``adam:schedule=cosine``): ``α · ½(1 + cos(π f))``
  (:func:`cosine`; Loshchilov & Hutter, *SGDR*, 2017, without restarts);
* ``plateau`` (``sgd-plateau``): ``α`` multiplied by ``0.1`` when the train loss
  stops improving (:class:`Plateau`, after PyTorch's ``ReduceLROnPlateau``).

``α`` is the learning rate the checkpoint was trained with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hfft.experiment.records import PlateauState

__all__ = ["SCHEDULES", "Plateau", "Schedule", "constant", "cosine", "div10", "make_schedule"]

SCHEDULES = ("constant", "div10", "cosine", "plateau")
"""The schedules :func:`make_schedule` builds (an SGD strategy's entry names one)."""

Schedule = Callable[[float], float]
"""A learning rate as a function of the budget fraction."""


def _check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be positive and finite, got {lr}")


def constant(lr: float) -> Schedule:
    """``η(f) = α``: the training learning rate throughout.

    Raises:
        ValueError: If ``lr`` is not positive and finite.
    """
    _check_lr(lr)

    def schedule(fraction: float) -> float:
        return lr

    return schedule


def div10(lr: float) -> Schedule:
    """``η(f) = α / 10`` from the start.

    Raises:
        ValueError: If ``lr`` is not positive and finite.
    """
    _check_lr(lr)

    def schedule(fraction: float) -> float:
        return lr / 10.0

    return schedule


def cosine(lr: float) -> Schedule:
    """``η(f) = α · ½(1 + cos(π · min(f, 1)))``: from ``α`` at the start to 0 at the end.

    Fractions past the end of the budget (a step may overrun it) give 0;
    negative fractions give ``α``.

    References:
        Loshchilov & Hutter, SGDR: Stochastic gradient descent with warm
        restarts, ICLR 2017.

    Raises:
        ValueError: If ``lr`` is not positive and finite.
    """
    _check_lr(lr)

    def schedule(fraction: float) -> float:
        f = min(max(fraction, 0.0), 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * f))

    return schedule


class Plateau:
    """Divide the learning rate when the train loss stops improving.

    Observed at the evaluation points, the train loss improves when it is
    below ``best · (1 − threshold)`` (PyTorch's ``ReduceLROnPlateau`` in
    ``mode="min"``, ``threshold_mode="rel"``, no cooldown). After more than
    ``patience`` consecutive observations without improvement the rate is
    multiplied by ``factor``, at most ``max_drops`` times.

    The patience is the largest that lets ``max_drops`` drops happen within
    ``evaluations`` observations. The first observation always improves (the
    best loss starts at +∞); if none improves after it, drop ``k`` happens at
    observation ``1 + k · (patience + 1)``, so ``max_drops`` drops fit when
    ``1 + max_drops · (patience + 1) ≤ evaluations``::

        patience = max(0, (evaluations − 1) // max_drops − 1)

    With 20 evaluations and 3 drops the patience is 5 and the drops can happen
    at the 7th, 13th and 19th observations.

    Args:
        lr: Initial learning rate ``α``.
        evaluations: Number of observations whose new rate is used: with
            ``evaluation_fractions(points)``, the ``points`` observations at
            ``f = 0, 1/points, …, (points − 1)/points`` (one more at ``f = 1``
            does no harm).
        factor: Multiplier of the rate at a drop, in ``(0, 1)``.
        max_drops: Most drops allowed, at least 1.
        threshold: Relative improvement that counts, in ``[0, 1)``.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        lr: float,
        evaluations: int,
        factor: float = 0.1,
        max_drops: int = 3,
        threshold: float = 1e-4,
    ) -> None:
        _check_lr(lr)
        if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
            raise ValueError(f"evaluations must be a positive integer, got {evaluations!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if isinstance(max_drops, bool) or not isinstance(max_drops, int) or max_drops < 1:
            raise ValueError(f"max_drops must be a positive integer, got {max_drops!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.initial_lr = lr
        self.evaluations = evaluations
        self.factor = factor
        self.max_drops = max_drops
        self.threshold = threshold
        self.patience = max(0, (evaluations - 1) // max_drops - 1)
        self._lr = lr
        self._best = math.inf
        self._bad = 0
        self._drops = 0

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return self._lr

    def __call__(self, fraction: float) -> float:
        """The current learning rate, whatever the budget fraction (a :data:`Schedule`)."""
        return self._lr

    def observe(self, train_loss: float) -> float:
        """Record the train loss at an evaluation point.

        A non-finite loss counts as no improvement.

        Args:
            train_loss: The train loss at this evaluation point.

        Returns:
            The learning rate to use until the next evaluation point.
        """
        if train_loss < self._best * (1.0 - self.threshold):
            self._best = train_loss
            self._bad = 0
        else:
            self._bad += 1
        if self._bad > self.patience and self._drops < self.max_drops:
            self._lr *= self.factor
            self._drops += 1
            self._bad = 0
        return self._lr

    def to_dict(self) -> PlateauState:
        """A JSON-ready record of the settings and the state (``best`` is ``None`` before any)."""
        return {
            "lr": self._lr,
            "initial_lr": self.initial_lr,
            "factor": self.factor,
            "patience": self.patience,
            "max_drops": self.max_drops,
            "threshold": self.threshold,
            "evaluations": self.evaluations,
            "best": self._best if math.isfinite(self._best) else None,
            "bad_evaluations": self._bad,
            "drops": self._drops,
        }


def make_schedule(name: str, lr: float, evaluations: int) -> Schedule | Plateau:
    """A learning-rate schedule by name (an SGD strategy's entry names its own).

    Args:
        name: One of :data:`SCHEDULES`.
        lr: The training learning rate ``α``.
        evaluations: Number of evaluation points, for ``sgd-plateau`` (see
            :class:`Plateau`).

    Returns:
        A function of the budget fraction, or a :class:`Plateau` (also callable
        with the fraction) whose :meth:`Plateau.observe` must be given the train
        loss at every evaluation point.

    Raises:
        ValueError: If the name is not a schedule or an argument is out of range.
    """
    if name == "plateau":
        return Plateau(lr, evaluations)
    makers = {"constant": constant, "div10": div10, "cosine": cosine}
    if name not in makers:
        raise ValueError(f"no schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    return makers[name](lr)
