"""Copies of a model's state, for putting back weights that were only tried.

:func:`snapshot` copies parameters and buffers; :class:`StepHistory` keeps the
state before the current step and before the previous one in two buffers
that are reused from step to step (no allocation in the loop), so that a run
can go back to the last accepted weights when it is interrupted inside a step,
and to the last weights whose loss was finite when a strategy diverges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["StepHistory", "snapshot"]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by name, copied (``model.load_state_dict`` puts them back)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class StepHistory:
    """The model's state before the current step and before the previous step.

    Call :meth:`save` before every step. :meth:`restore_current` puts back
    the state before the step in progress; :meth:`restore_previous` the
    state before the step before it (the last weights a loss was measured
    finite at, when the current weights gave a non-finite loss).

    Args:
        model: The network; its tensors are updated in place by the
            optimizers, so their list is taken once.
        extra: Further tensors a strategy updates in place with the model
            (schedule-free's z, SWA's average), kept and put back with it.
    """

    def __init__(self, model: nn.Module, extra: Sequence[Tensor] = ()) -> None:
        self._live = [*model.state_dict().values(), *extra]
        self._current = [t.detach().clone() for t in self._live]
        self._previous: list[Tensor] | None = None
        self._saved = False

    @torch.no_grad()
    def save(self) -> None:
        """Record the state before the next step."""
        if self._saved:
            if self._previous is None:
                self._previous = [t.clone() for t in self._current]
            else:
                self._previous, self._current = self._current, self._previous
        for copy, live in zip(self._current, self._live, strict=True):
            copy.copy_(live)
        self._saved = True

    @torch.no_grad()
    def restore_current(self) -> None:
        """Put back the state of the last :meth:`save`."""
        for copy, live in zip(self._current, self._live, strict=True):
            live.copy_(copy)

    @torch.no_grad()
    def restore_previous(self) -> bool:
        """Put back the state of the :meth:`save` before the last one.

        Returns:
            False (and nothing changes) if there was only one save.
        """
        if self._previous is None:
            return False
        for copy, live in zip(self._previous, self._live, strict=True):
            live.copy_(copy)
        return True
