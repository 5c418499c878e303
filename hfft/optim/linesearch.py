"""Choosing the step from the CG iterates: backtracking and an Armijo line search.

Both work on a loss evaluated on the held-out batch B̄ and never touch
parameters themselves: they take ``loss_at(p)``, the objective at ``θ + p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["LineSearchResult", "armijo", "backtrack"]


def backtrack(
    candidates: Sequence[tuple[int, Tensor]],
    loss_at: Callable[[Tensor], float],
    last_loss: float | None = None,
) -> tuple[int, Tensor, float, int]:
    """Walk back through CG iterates while the objective keeps decreasing.

    Martens & Sutskever (2012, §8.7, p. 36): start at the last iterate and move
    to the previous kept one as long as that lowers the objective; stop at the
    first one that does not.

    Args:
        candidates: ``(i, p_i)`` pairs ordered by CG iteration ``i``.
        loss_at: Objective at ``θ + p``.
        last_loss: The objective at the last candidate, if already known.

    Returns:
        ``(i, p_i, loss, evaluations)``: the chosen iterate, its objective and
        how many objective evaluations were made here.
    """
    if not candidates:
        raise ValueError("no CG iterates to choose from")
    evals = 0
    best_i, best_p = candidates[-1]
    if last_loss is None:
        last_loss = loss_at(best_p)
        evals += 1
    best_loss = last_loss
    for i, p in reversed(candidates[:-1]):
        loss = loss_at(p)
        evals += 1
        if math.isfinite(loss) and (loss < best_loss or not math.isfinite(best_loss)):
            best_i, best_p, best_loss = i, p, loss
        else:
            break
    return best_i, best_p, best_loss, evals


@dataclass(frozen=True)
class LineSearchResult:
    """Outcome of :func:`armijo`: ``alpha`` is ``None`` when nothing was accepted."""

    alpha: float | None
    loss: float
    tries: int


def armijo(
    loss_at_alpha: Callable[[float], float],
    f0: float,
    slope: float,
    *,
    alpha0: float = 1.0,
    beta: float = 0.8,
    c: float = 0.01,
    max_tries: int = 20,
    known: dict[float, float] | None = None,
) -> LineSearchResult:
    """Backtracking line search with the Armijo sufficient-decrease condition.

    Accepts the first ``α = alpha0 · βᵏ`` (k = 0, 1, …, ``max_tries − 1``) with
    ``f(α) ≤ f0 + c · α · min(slope, 0)`` (Martens & Sutskever 2012, §8.8). The
    ``min`` makes an ascent direction (possible with a warm-started CG) need a
    plain decrease.

    Args:
        loss_at_alpha: Objective at ``θ + α p``.
        f0: Objective at ``θ``.
        slope: Directional derivative ``gᵀp``.
        alpha0: First step size.
        beta: Shrink factor, in (0, 1).
        c: Armijo constant, in (0, 1).
        max_tries: Most step sizes tried.
        known: Objective values already computed, keyed by α.

    Returns:
        The :class:`LineSearchResult`; ``alpha=None`` if no step size passed.

    Raises:
        ValueError: For parameters outside their ranges.
    """
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if not 0 < c < 1:
        raise ValueError(f"c must be in (0, 1), got {c}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    known = known or {}
    alpha = alpha0
    loss = math.inf
    for k in range(max_tries):
        loss = known[alpha] if alpha in known else loss_at_alpha(alpha)
        if math.isfinite(loss) and loss <= f0 + c * alpha * min(slope, 0.0):
            return LineSearchResult(alpha, loss, k + 1)
        alpha *= beta
    return LineSearchResult(None, loss, max_tries)
