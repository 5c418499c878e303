"""The record of one HF step: what it decided and where its time went."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TypedDict, cast

__all__ = ["StepFields", "StepRecord"]


@dataclass(frozen=True)
class StepRecord:
    """Everything one HF step decided, for logs.

    Losses include the L2 term of the objective. ``loss_before``/``loss_after``
    are on the evaluation batch B̄; ``batch_loss`` is on B.

    Times are wall-clock seconds: ``time_gradient`` (forward, gradient and
    linearisation on B), ``time_preconditioner``, ``time_cg`` (all of CG, of
    which ``time_products`` in curvature products), ``time_eval`` (every
    evaluation on B̄, of which ``time_backtracking`` and ``time_linesearch``;
    the rest is the losses at θ and at the last CG iterate, which ρ needs, on B
    too with ``rho_batch="curvature"``)
    and ``time_total``. ``radius`` is the trust region CG stayed inside
    (``damping_rule="trust-region"``; ``None`` otherwise or on the first step).
    """

    step: int
    accepted: bool
    reject_reason: str | None
    loss_before: float
    loss_after: float
    batch_loss: float
    grad_norm: float
    damping: float
    next_damping: float
    rho: float
    cg_iterations: int
    cg_stop_reason: str
    cg_chosen_iterate: int
    cg_q: float
    alpha: float
    linesearch_tries: int
    products: int
    eval_batch_evaluations: int
    time_gradient: float
    time_preconditioner: float
    time_cg: float
    time_products: float
    time_eval: float
    time_backtracking: float
    time_linesearch: float
    time_total: float
    radius: float | None = None

    def to_dict(self) -> StepFields:
        """A JSON-serialisable dict (non-finite floats become ``None``)."""
        return cast(
            StepFields,
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()
            },
        )


class StepFields(TypedDict):
    """:class:`StepRecord` as :meth:`StepRecord.to_dict` gives it: the same fields (a test
    holds the two to each other), a float that can be non-finite as ``None``."""

    step: int
    accepted: bool
    reject_reason: str | None
    loss_before: float | None
    loss_after: float | None
    batch_loss: float | None
    grad_norm: float | None
    damping: float
    next_damping: float
    rho: float | None
    cg_iterations: int
    cg_stop_reason: str
    cg_chosen_iterate: int
    cg_q: float | None
    alpha: float
    linesearch_tries: int
    products: int
    eval_batch_evaluations: int
    time_gradient: float
    time_preconditioner: float
    time_cg: float
    time_products: float
    time_eval: float
    time_backtracking: float
    time_linesearch: float
    time_total: float
    radius: float | None
