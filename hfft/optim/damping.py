"""Levenberg-Marquardt adaptation of the Tikhonov damping λ.

Martens (2010, §4.1): compare the actual change of the objective with the
change the quadratic model predicted,

    ρ = (f(θ + p) − f(θ)) / (q(p) − q(0)),

and make the model more conservative when it over-promises:
``λ ← 3/2 · λ`` if ``ρ < 1/4``, ``λ ← 2/3 · λ`` if ``ρ > 3/4``.

The rule has no upper end: where the step computed on B keeps raising the loss
on B̄ (ρ < 0 step after step), λ grows by 3/2 per step without limit — to
1e104 in a user's run, where ``(C + λI)p`` overflows float32. λ is therefore
capped (``max_damping``, by default :data:`MAX_DAMPING_FACTOR` × the initial λ).
Neither Martens (2010) nor the paper bounds λ; safeguarding the LM parameter
between bounds is Moré's (1978), the value is ours. Once ``λ ≫ ‖C‖`` the step
is ``−g/λ``, a gradient step of length ``‖g‖/λ``, and the line search already
tries that direction at lengths down to ``β¹⁹ ≈ 1/70`` of it, so a larger λ
only offers shorter steps along the same direction.
"""

from __future__ import annotations

import math

__all__ = [
    "DECREASE",
    "INCREASE",
    "MAX_DAMPING_FACTOR",
    "adapt_damping",
    "adapt_radius",
    "raise_damping",
    "reduction_ratio",
]

INCREASE = 3.0 / 2.0
DECREASE = 2.0 / 3.0
MAX_DAMPING_FACTOR = 1e4
"""The default cap of λ, as a multiple of the initial λ."""


def reduction_ratio(f_new: float, f_old: float, q_new: float) -> float:
    """ρ = (f_new − f_old) / (q_new − q(0)) with ``q(0) = 0``.

    Returns ``-inf`` when the ratio is meaningless for damping purposes: a
    non-finite loss, or a quadratic model that predicts no decrease
    (``q_new ≥ 0``).
    """
    if not (math.isfinite(f_new) and math.isfinite(f_old) and math.isfinite(q_new)):
        return -math.inf
    if q_new >= 0.0:
        return -math.inf
    return (f_new - f_old) / q_new


def adapt_damping(
    damping: float,
    rho: float,
    low: float = 0.25,
    high: float = 0.75,
    upper: float = math.inf,
) -> float:
    """The Levenberg-Marquardt rule: next λ from the current λ and ρ.

    Args:
        damping: Current λ > 0.
        rho: Reduction ratio (see :func:`reduction_ratio`).
        low: Below this ρ the damping grows by 3/2 (to ``upper`` at most).
        high: Above this ρ the damping shrinks by 2/3.
        upper: The largest λ (see the module's docstring).

    Raises:
        ValueError: If ``damping`` is not positive.
    """
    if not damping > 0:
        raise ValueError(f"damping must be positive, got {damping}")
    if rho < low:
        return raise_damping(damping, upper)
    if rho > high:
        return damping * DECREASE
    return damping


def raise_damping(damping: float, upper: float = math.inf) -> float:
    """λ × 3/2, but not above ``upper``."""
    return min(damping * INCREASE, upper)


def adapt_radius(radius: float, rho: float, at_boundary: bool) -> float:
    """The trust-region rule (Nocedal & Wright 2006, Algorithm 4.1): the next radius.

    A quadratic model that over-promised (``ρ < 1/4``) is trusted a quarter as far;
    one that predicted well (``ρ > 3/4``) on a step that reached the boundary is
    trusted twice as far; otherwise the radius stays.

    Raises:
        ValueError: If ``radius`` is not positive.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if rho < 0.25:
        return radius / 4
    if rho > 0.75 and at_boundary:
        return radius * 2
    return radius
