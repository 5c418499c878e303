"""Conjugate gradients: exact behaviour on SPD systems, grid, stopping rules."""

from __future__ import annotations

import math

import pytest
import torch

from hfft.optim.cg import conjugate_gradient, iterate_grid


def spd(n: int, cond: float = 10.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


@pytest.mark.parametrize("n", [1, 5, 20, 50], ids=lambda n: f"n={n}")
def test_solves_spd_system_in_at_most_n_iterations(n: int) -> None:
    # well-conditioned, so that float64 rounding keeps CG's exact-arithmetic finish
    a = spd(n, cond=10.0)
    b = torch.randn(n, dtype=torch.float64)
    res = conjugate_gradient(
        lambda v: a @ v, b, max_iter=10 * n, tol=1e-10, martens_criterion=False
    )
    assert res.stop_reason == "residual"
    assert res.iterations <= n
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)


def test_q_values_are_the_quadratic_and_decrease() -> None:
    a, b = spd(8), torch.randn(8, dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, martens_criterion=False)
    x = res.x
    assert res.q_values[-1] == pytest.approx(float(0.5 * x @ a @ x - b @ x), rel=1e-10)
    assert all(q1 < q0 for q0, q1 in zip(res.q_values, res.q_values[1:], strict=False))


def test_iterate_grid_values() -> None:
    assert iterate_grid(20) == [1, 2, 3, 4, 6, 8, 10, 13, 17]
    # ⌈1.3^j⌉ − 1 by the formula, for every j up to the bound
    expected = sorted({math.ceil(1.3**j) - 1 for j in range(1, 40)} - {0})
    assert iterate_grid(250) == [i for i in expected if i <= 250]


def test_kept_iterates_are_on_the_grid_plus_last() -> None:
    a, b = spd(30, cond=1e4), torch.randn(30, dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=15, tol=0.0, martens_criterion=False)
    assert res.stop_reason == "max_iter"
    assert [i for i, _ in res.iterates] == [1, 2, 3, 4, 6, 8, 10, 13, 15]
    assert torch.equal(res.iterates[-1][1], res.x)


def test_martens_criterion_stops_early_on_slow_progress() -> None:
    a, b = spd(200, cond=1e3), torch.randn(200, dtype=torch.float64)
    with_crit = conjugate_gradient(lambda v: a @ v, b, max_iter=400, tol=0.0)
    without = conjugate_gradient(lambda v: a @ v, b, max_iter=400, tol=0.0, martens_criterion=False)
    assert with_crit.stop_reason == "martens"
    assert without.stop_reason in ("max_iter", "residual")
    assert with_crit.iterations < without.iterations
    # the criterion's condition holds where it stopped, and not one iteration earlier
    i, q = with_crit.iterations, with_crit.q_values
    k = max(10, math.ceil(0.1 * i))
    assert (q[i] - q[i - k]) / q[i] < k * 5e-4
    k1 = max(10, math.ceil(0.1 * (i - 1)))
    assert not (i - 1 > k1 and (q[i - 1] - q[i - 1 - k1]) / q[i - 1] < k1 * 5e-4)


def test_warm_start_from_solution_needs_no_iteration() -> None:
    a, b = spd(10), torch.randn(10, dtype=torch.float64)
    x_star = torch.linalg.solve(a, b)
    res = conjugate_gradient(lambda v: a @ v, b, x0=x_star, tol=1e-8)
    assert res.iterations == 0
    assert res.stop_reason == "residual"


def test_warm_start_near_solution_saves_iterations() -> None:
    a, b = spd(50, cond=1e3), torch.randn(50, dtype=torch.float64)
    x_star = torch.linalg.solve(a, b)
    cold = conjugate_gradient(lambda v: a @ v, b, tol=1e-6, martens_criterion=False)
    warm = conjugate_gradient(
        lambda v: a @ v, b, x0=0.95 * x_star, tol=1e-6, martens_criterion=False
    )
    assert warm.iterations < cold.iterations


def test_exact_diagonal_preconditioner_solves_diagonal_system_in_one_iteration() -> None:
    d = torch.logspace(0, 6, 40, dtype=torch.float64)
    b = torch.randn(40, dtype=torch.float64)
    plain = conjugate_gradient(lambda v: d * v, b, tol=1e-10, martens_criterion=False)
    pre = conjugate_gradient(
        lambda v: d * v, b, tol=1e-10, martens_criterion=False, precondition=lambda r: r / d
    )
    assert pre.iterations == 1
    assert plain.iterations > 10
    torch.testing.assert_close(pre.x, b / d)


def test_negative_curvature_stops_and_keeps_last_good_iterate() -> None:
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, martens_criterion=False)
    assert res.stop_reason == "negative curvature"
    assert res.iterations == 0
    assert torch.equal(res.x, torch.zeros(2, dtype=torch.float64))


def test_non_finite_product_stops() -> None:
    calls = {"n": 0}

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return v * (float("nan") if calls["n"] > 2 else 2.0)

    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    res = conjugate_gradient(lambda v: matvec(v) + torch.tensor([0.0, 1.0, 2.0]) * v, b, tol=0.0)
    assert res.stop_reason == "non-finite"
    assert torch.isfinite(res.x).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": torch.zeros(2, 2)}, "1-D"),
        ({"b": torch.zeros(2), "x0": torch.zeros(3)}, "shape"),
        ({"b": torch.zeros(2), "max_iter": -1}, "max_iter"),
    ],
    ids=["b-2d", "x0-shape", "negative-max-iter"],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conjugate_gradient(lambda v: v, **kwargs)


def test_a_radius_larger_than_the_solution_changes_nothing() -> None:
    a, b = spd(10), torch.randn(10, dtype=torch.float64)
    free = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, martens_criterion=False)
    big = float(torch.linalg.vector_norm(free.x)) * 2
    bounded = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, martens_criterion=False, radius=big)
    assert bounded.stop_reason == free.stop_reason == "residual"
    torch.testing.assert_close(bounded.x, free.x, rtol=0, atol=0)


@pytest.mark.parametrize("share", [0.05, 0.3, 0.9], ids=lambda s: f"radius={s}·|x*|")
def test_steihaug_stops_on_the_boundary_with_the_quadratic_still_falling(share: float) -> None:
    a, b = spd(12, cond=100.0, seed=2), torch.randn(12, dtype=torch.float64)
    radius = share * float(torch.linalg.vector_norm(torch.linalg.solve(a, b)))
    res = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, martens_criterion=False, radius=radius)
    x = res.x
    assert res.stop_reason == "radius"
    assert float(torch.linalg.vector_norm(x)) == pytest.approx(radius, rel=1e-10)
    assert res.q_values[-1] == pytest.approx(float(0.5 * x @ a @ x - b @ x), rel=1e-10)
    assert all(q1 < q0 for q0, q1 in zip(res.q_values, res.q_values[1:], strict=False))
    assert res.iterates[-1][0] == res.iterations
    torch.testing.assert_close(res.iterates[-1][1], x)
    torch.testing.assert_close(b - a @ x, b - a @ x)  # residual tracked consistently
    assert res.residual_norm == pytest.approx(float(torch.linalg.vector_norm(b - a @ x)), rel=1e-8)


def test_a_start_outside_the_radius_is_refused() -> None:
    a, b = spd(4), torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="radius"):
        conjugate_gradient(lambda v: a @ v, b, torch.ones(4, dtype=torch.float64), radius=1.0)
