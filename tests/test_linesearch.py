"""CG backtracking and the Armijo line search on constructed cases."""

from __future__ import annotations

import math

import pytest
import torch

from hfft.optim.linesearch import armijo, backtrack


def candidates(values: list[float]) -> tuple[list[tuple[int, torch.Tensor]], dict[float, float]]:
    """Iterates p_i = [i]; the loss of p is looked up from ``values``."""
    cands = [(i + 1, torch.tensor([float(i + 1)])) for i in range(len(values))]
    table = {float(i + 1): v for i, v in enumerate(values)}
    return cands, table


@pytest.mark.parametrize(
    ("losses", "chosen", "evals"),
    [
        ([5.0, 4.0, 3.0, 2.0], 4, 2),  # last is best: one look back, stop
        ([5.0, 1.0, 2.0, 3.0], 2, 4),  # walk back to the minimum, then stop
        ([1.0, 2.0, 3.0, 4.0], 1, 4),  # walk all the way back
        ([1.0, 9.0, 3.0, 4.0], 3, 3),  # stops at the first increase, not the global minimum
        ([1.0, 2.0, 0.5, math.nan], 3, 3),  # a non-finite last iterate is left
    ],
    ids=["last-best", "walk-back", "to-first", "first-increase-stops", "nan-last"],
)
def test_backtracking(losses: list[float], chosen: int, evals: int) -> None:
    cands, table = candidates(losses)
    i, p, loss, n = backtrack(cands, lambda q: table[float(q)])
    assert (i, float(p), loss, n) == (chosen, float(chosen), losses[chosen - 1], evals)


def test_backtracking_reuses_known_last_loss() -> None:
    cands, table = candidates([3.0, 2.0])
    _, _, _, n = backtrack(cands, lambda q: table[float(q)], last_loss=2.0)
    assert n == 1


def test_armijo_accepts_full_step_on_quadratic() -> None:
    # f(α) = (1 − α)², f0 = 1, slope = −2: α = 1 gives 0 ≤ 1 − 0.02
    res = armijo(lambda a: (1 - a) ** 2, 1.0, -2.0)
    assert (res.alpha, res.loss, res.tries) == (1.0, 0.0, 1)


def test_armijo_shrinks_until_sufficient_decrease() -> None:
    # f(α) = (1 − 3α)²: α = 1 → 4, 0.8 → 1.96, 0.64 → 0.8464 ≤ 1 − 0.01·0.64·6 = 0.9616
    res = armijo(lambda a: (1 - 3 * a) ** 2, 1.0, -6.0)
    assert res.alpha == pytest.approx(0.64)
    assert res.tries == 3


def test_armijo_rejects_when_nothing_passes() -> None:
    res = armijo(lambda a: 2.0, 1.0, -1.0, max_tries=20)
    assert res.alpha is None
    assert res.tries == 20


def test_armijo_needs_plain_decrease_for_ascent_direction() -> None:
    assert armijo(lambda a: 1.0 - 1e-9, 1.0, slope=+5.0).alpha == 1.0
    assert armijo(lambda a: 1.0 + 1e-9, 1.0, slope=+5.0).alpha is None


def test_armijo_uses_known_values() -> None:
    calls = []
    res = armijo(lambda a: calls.append(a) or 0.0, 1.0, -1.0, known={1.0: 0.5})
    assert res.alpha == 1.0 and calls == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"beta": 1.0}, "beta"), ({"c": 0.0}, "c must"), ({"max_tries": 0}, "max_tries")],
    ids=["beta", "c", "max-tries"],
)
def test_armijo_invalid_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        armijo(lambda a: 0.0, 1.0, -1.0, **kwargs)
