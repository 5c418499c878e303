"""Preconditioned conjugate gradients for the Hessian-free inner loop.

Solves ``A x = b`` for a symmetric positive (semi-)definite operator given only
as a callable, following Martens & Sutskever (2012, Algorithm 2). Because the
operator is any callable on 1-D tensors, the solver is testable on a plain
matrix.

Along the way CG minimises the quadratic ``q(x) = ½ xᵀA x − bᵀx``; its value is
tracked without extra products as ``q(x) = −½ xᵀ(r + b)`` with the residual
``r = b − A x``.

Stopping rules, checked after every iteration in this order:

* ``"non-finite"`` – a product or scalar became NaN/Inf; the last finite
  iterate is returned.
* ``"negative curvature"`` – ``pᵀA p ≤ 0``: A is not positive definite along
  ``p``; the iterate before that direction is returned.
* ``"residual"`` – ``‖r‖ ≤ tol · ‖b‖``.
* ``"martens"`` – Martens' (2010, §4.4) relative progress criterion: with
  ``k = max(10, ⌈0.1 i⌉)``, stop at iteration ``i > k`` once ``q(x_i) < 0`` and
  ``(q(x_i) − q(x_{i−k})) / q(x_i) < k · ε`` with ``ε = 5e-4``. Martens writes
  ``k = max(10, 0.1 i)``; we round ``0.1 i`` up so that ``k`` is an integer
  index offset (identical for i ≤ 100, one more iteration of look-back above).
* ``"max_iter"`` – the iteration budget is spent.
* ``"radius"`` – with a trust region (``radius``), the next iterate would leave
  the ball ``‖x‖ ≤ radius``: the iterate is moved along the search direction to
  the boundary instead and CG stops (Steihaug 1983). Checked with the
  curvature, before the other rules.

Iterates ``x_i`` (after ``i`` iterations, ``x_0`` the warm start) are kept for
``i ∈ {⌈1.3^j⌉ − 1 : j ≥ 1} = {1, 2, 3, 4, 6, 8, 10, 13, 17, …}`` and for the
last iteration, the candidate grid of Martens (2010, §4.6) used by CG
backtracking.

On a GPU the loop synchronises with the host exactly once per iteration (one
``tolist()`` of the stacked scalars it needs to decide whether to stop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

MARTENS_EPS = 5e-4
GRID_BASE = 1.3

__all__ = ["CGResult", "conjugate_gradient", "iterate_grid"]


@dataclass(frozen=True)
class CGResult:
    """Outcome of one CG solve.

    Attributes:
        x: The final iterate.
        iterations: Number of CG iterations performed (operator products
            inside the loop; the initial residual costs one more when ``x0`` is
            non-zero).
        stop_reason: One of ``"residual"``, ``"martens"``, ``"max_iter"``,
            ``"negative curvature"``, ``"non-finite"``, ``"radius"``.
        iterates: ``(i, x_i)`` pairs on the ``⌈1.3^j⌉ − 1`` grid plus the last
            iterate, ordered by ``i``.
        q_values: ``q(x_i)`` for every iteration ``i = 0 … iterations``.
        residual_norm: ``‖b − A x‖`` of the final iterate.
    """

    x: Tensor
    iterations: int
    stop_reason: str
    iterates: list[tuple[int, Tensor]] = field(repr=False)
    q_values: list[float] = field(repr=False)
    residual_norm: float


def iterate_grid(max_iter: int, base: float = GRID_BASE) -> list[int]:
    """Iteration indices ``⌈base^j⌉ − 1`` (``j ≥ 1``) up to ``max_iter``, sorted, unique.

    Martens (2010, §4.6) stores CG iterates on a geometric grid so that
    backtracking can choose among them without keeping every iterate.
    """
    if base <= 1.0:
        raise ValueError(f"grid base must be > 1, got {base}")
    grid: set[int] = set()
    j = 1
    while True:
        i = math.ceil(base**j) - 1
        if i > max_iter:
            break
        if i >= 1:
            grid.add(i)
        j += 1
    return sorted(grid)


def _martens_stop(q_values: list[float], i: int, eps: float) -> bool:
    k = max(10, math.ceil(0.1 * i))
    if i <= k:
        return False
    q_i, q_old = q_values[i], q_values[i - k]
    return q_i < 0 and (q_i - q_old) / q_i < k * eps


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    max_iter: int = 250,
    tol: float = 1e-10,
    martens_criterion: bool = True,
    martens_eps: float = MARTENS_EPS,
    precondition: Callable[[Tensor], Tensor] | None = None,
    grid_base: float = GRID_BASE,
    radius: float | None = None,
) -> CGResult:
    """Minimise ``½ xᵀA x − bᵀx`` (solve ``A x = b``) with preconditioned CG.

    Martens & Sutskever (2012), Algorithm 2; stopping rules as in the module
    docstring.

    Args:
        matvec: ``v ↦ A v`` on 1-D tensors shaped like ``b``; A symmetric.
        b: Right-hand side.
        x0: Initial guess (warm start); zeros when ``None``.
        max_iter: Most CG iterations.
        tol: Relative residual tolerance ``‖r‖ ≤ tol·‖b‖``.
        martens_criterion: Whether to use Martens' progress criterion.
        martens_eps: ``ε`` of that criterion.
        precondition: ``r ↦ M⁻¹ r`` for a symmetric positive definite
            preconditioner ``M``; identity when ``None``.
        grid_base: Base ``γ`` of the kept-iterate grid ``⌈γ^j⌉ − 1``.
        radius: Trust-region radius on ``‖x‖`` (Euclidean; Steihaug's CG):
            CG stops on the boundary rather than leave the ball. ``x0`` must
            lie inside it. ``None``: no trust region.

    Returns:
        The :class:`CGResult`.

    Raises:
        ValueError: If ``b`` is not 1-D, ``x0`` does not match it or lies outside
            ``radius``, or ``max_iter < 0``.
    """
    _check_inputs(b, x0, max_iter)
    if radius is not None and not (
        radius > 0 and (x0 is None or float(torch.linalg.vector_norm(x0)) <= radius)
    ):
        raise ValueError(f"the trust region needs radius > 0 with x0 inside, got {radius}")
    apply_m_inv = precondition if precondition is not None else (lambda r: r)
    if x0 is None or not bool(torch.any(x0 != 0)):
        x, r = torch.zeros_like(b), b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
    b_norm, q0, r_norm0 = torch.stack(
        [torch.linalg.vector_norm(b), -0.5 * torch.dot(x, r + b), torch.linalg.vector_norm(r)]
    ).tolist()
    if not math.isfinite(q0) or not math.isfinite(r_norm0):
        return CGResult(x, 0, "non-finite", [(0, x)], [q0], r_norm0)
    if r_norm0 <= tol * b_norm or max_iter == 0:
        reason = "residual" if r_norm0 <= tol * b_norm else "max_iter"
        return CGResult(x, 0, reason, [(0, x)], [q0], r_norm0)
    run = _Run(matvec, apply_m_inv, b, x, r, q0, r_norm0, radius)
    stop = run.iterate(max_iter, tol * b_norm, martens_criterion, martens_eps, grid_base)
    if not run.iterates or run.iterates[-1][0] != run.i:
        run.iterates.append((run.i, run.x))
    return CGResult(run.x, run.i, stop, run.iterates, run.q_values, run.residual_norm)


def _check_inputs(b: Tensor, x0: Tensor | None, max_iter: int) -> None:
    if b.ndim != 1:
        raise ValueError(f"b must be a 1-D tensor, got shape {tuple(b.shape)}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, b has {tuple(b.shape)}")


class _Run:
    """The iterates of one CG solve (Martens & Sutskever 2012, Algorithm 2)."""

    def __init__(
        self,
        matvec: Callable[[Tensor], Tensor],
        apply_m_inv: Callable[[Tensor], Tensor],
        b: Tensor,
        x: Tensor,
        r: Tensor,
        q0: float,
        r_norm0: float,
        radius: float | None = None,
    ) -> None:
        self.matvec, self.apply_m_inv, self.b = matvec, apply_m_inv, b
        self.radius = radius
        self.x, self.r = x, r
        self.y = apply_m_inv(r)
        self.p = self.y.clone()
        self.ry = torch.dot(r, self.y)
        self.q_values = [q0]
        self.iterates: list[tuple[int, Tensor]] = []
        self.residual_norm = r_norm0
        self.i = 0

    def iterate(
        self, max_iter: int, threshold: float, martens: bool, eps: float, grid_base: float
    ) -> str:
        """Iterate until a stopping rule fires; returns its name."""
        grid = set(iterate_grid(max_iter, grid_base))
        while self.i < max_iter:
            stop = self._advance()
            if stop is not None:
                return stop
            if self.i in grid:
                self.iterates.append((self.i, self.x))
            if self.residual_norm <= threshold:
                return "residual"
            if martens and _martens_stop(self.q_values, self.i, eps):
                return "martens"
        return "max_iter"

    def _advance(self) -> str | None:
        """One CG iteration; the reason to stop before taking it, if there is one.

        One host–device synchronisation: the step length's denominator, the
        new value of the quadratic and the residual norm are read together.
        """
        ap = self.matvec(self.p)
        p_ap = torch.dot(self.p, ap)
        alpha = self.ry / p_ap
        x_new = self.x + alpha * self.p
        r_new = self.r - alpha * ap
        y_new = self.apply_m_inv(r_new)
        ry_new = torch.dot(r_new, y_new)
        q_new = -0.5 * torch.dot(x_new, r_new + self.b)
        x_norm = torch.linalg.vector_norm(x_new)
        stats = torch.stack([p_ap, q_new, torch.linalg.vector_norm(r_new), ry_new, x_norm]).tolist()
        p_ap_val, q_val, r_norm, _, x_norm_val = stats
        if math.isfinite(p_ap_val) and p_ap_val <= 0.0:
            return "negative curvature"
        if not all(math.isfinite(v) for v in stats):
            return "non-finite"
        if self.radius is not None and x_norm_val > self.radius:
            self._to_boundary(ap)
            return "radius"
        self.i += 1
        self.p = y_new + (ry_new / self.ry) * self.p
        self.x, self.r, self.y, self.ry = x_new, r_new, y_new, ry_new
        self.q_values.append(q_val)
        self.residual_norm = r_norm
        return None

    def _to_boundary(self, ap: Tensor) -> None:
        """Step from ``x`` along ``p`` to ``‖x + t p‖ = radius`` (the positive root ``t``),
        as one more iteration (Steihaug 1983)."""
        assert self.radius is not None
        xp, pp, xx = (float(torch.dot(u, v)) for u, v in ((self.x, self.p), (self.p, self.p),
                                                          (self.x, self.x)))  # fmt: skip
        t = (-xp + math.sqrt(max(xp * xp + pp * (self.radius**2 - xx), 0.0))) / pp
        self.x = self.x + t * self.p
        self.r = self.r - t * ap
        self.i += 1
        self.q_values.append(float(-0.5 * torch.dot(self.x, self.r + self.b)))
        self.residual_norm = float(torch.linalg.vector_norm(self.r))
