"""What every strategy's runner is: the :class:`Runner` interface, and what the checkpoint
gives the runners (:class:`SGDSettings`).

A runner owns its optimizer and draws its own batches from the shared data
pipeline; ``step(fraction)`` takes one step at the given budget fraction and
returns its step entry (:mod:`hfft.experiment.records`). Plain Python;
importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from hfft.experiment.records import RunnerReport, StepEntry
    from hfft.optim.output_hessians import Loss

__all__ = ["Runner", "SGDSettings"]


class Runner:
    """Interface: ``step(fraction) -> step entry``; ``diverged``; ``settings`` and ``report``
    for logs."""

    model: nn.Module
    step_samples: int = 0
    diverged: bool = False
    setup_seconds: float = 0.0

    def step(self, fraction: float) -> StepEntry:
        """One step at budget fraction ``fraction``; its entry (without ``seconds``)."""
        raise NotImplementedError

    def settings(self) -> dict[str, float]:
        """The current learning rate (SGD) or damping (HF)."""
        raise NotImplementedError

    def observe(self, metrics: Mapping[str, Any]) -> None:
        """Called with each evaluation's metrics (the plateau schedule listens)."""

    def report(self) -> RunnerReport:
        """Extra top-level entries for ``metrics.json`` (``auto`` logs its switch)."""
        return {}

    def prepare_evaluation(self) -> None:
        """Work an evaluation point needs first, charged to the budget like a step
        (``swa`` and ``sgd-schedulefree`` recompute BatchNorm statistics here)."""

    def step_state(self) -> list[Tensor]:
        """Tensors the strategy updates in place besides the model's, which an interrupt
        or a divergence must put back with the model's (the run's step history)."""
        return []

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[nn.Module]:
        """The model whose weights are evaluated and saved now (the one trained, unless
        a strategy's result is another point: ``swa``'s average, schedule-free's x)."""
        yield self.model

    def settle(self) -> None:
        """Undo what is still on trial across steps, when a run ends early.

        A runner's :meth:`step` leaves the model at accepted weights when it
        raises; a strategy whose trials span several steps (``auto``) puts
        its last accepted weights back here.
        """


@dataclasses.dataclass(frozen=True)
class SGDSettings:
    """What the checkpoint's training gives the runners: the loss, SGD's rate and batch size
    (``None`` where the checkpoint does not record them), its momentum, the L2 factor and
    the run's seed. A strategy's own options take precedence over them."""

    loss_fn: Loss
    lr: float | None
    batch_size: int | None
    momentum: float
    weight_decay: float
    seed: int
