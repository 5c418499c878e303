"""Output Hessians in closed form against torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfft.optim.output_hessians import (
    ClassLastCrossEntropy,
    hessian_kind,
    loss_normaliser,
    loss_reduction,
    output_hessian,
)

N, C, T = 5, 4, 3


def ce_targets() -> torch.Tensor:
    return torch.randint(0, C, (N,))


CASES = {
    "ce-mean": (nn.CrossEntropyLoss(), ce_targets),
    "ce-sum": (nn.CrossEntropyLoss(reduction="sum"), ce_targets),
    "ce-label-smoothing": (nn.CrossEntropyLoss(label_smoothing=0.1), ce_targets),
    "ce-soft-targets": (
        nn.CrossEntropyLoss(),
        lambda: torch.softmax(torch.randn(N, C, dtype=torch.float64), 1),
    ),
    "ce-class-weights": (nn.CrossEntropyLoss(weight=torch.rand(C).double()), ce_targets),
    "mse-mean": (nn.MSELoss(), lambda: torch.randn(N, C).double()),
    "mse-sum": (nn.MSELoss(reduction="sum"), lambda: torch.randn(N, C).double()),
    "callable": (
        lambda z, t: (z - t).pow(4).mean(),
        lambda: torch.randn(N, C).double(),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_hessian_matches_autograd(name: str) -> None:
    loss_fn, make_targets = CASES[name]
    z = torch.randn(N, C, dtype=torch.float64)
    t = make_targets()
    hvp = output_hessian(loss_fn, z, t)
    h = torch.func.hessian(lambda zz: loss_fn(zz.view(N, C), t))(z.reshape(-1))
    for _ in range(3):
        u = torch.randn(N, C, dtype=torch.float64)
        torch.testing.assert_close(hvp(u).reshape(-1), h @ u.reshape(-1), rtol=1e-10, atol=1e-12)


def _tokens(ignored: bool = True) -> torch.Tensor:
    t = torch.randint(0, C, (N, T))
    if ignored:
        t[0, 1] = t[3, 0] = t[3, 2] = -100  # padding positions
    return t


W = torch.rand(C).double() + 0.5
# (loss, outputs' shape, targets): every closed form, also with weights, ignore_index,
# label smoothing, soft targets and classes along dimension 1 or last
SHAPED = {
    "ce-ignore-index": (
        nn.CrossEntropyLoss(ignore_index=1),
        (N, C),
        lambda: torch.tensor([0, 1, 2, 1, 3]),
    ),
    "ce-weights-ignore": (nn.CrossEntropyLoss(weight=W, ignore_index=2), (N, C), ce_targets),
    "ce-weights-smoothing": (
        nn.CrossEntropyLoss(weight=W, label_smoothing=0.2, ignore_index=0),
        (N, C),
        ce_targets,
    ),
    "ce-positions-class-dim-1": (nn.CrossEntropyLoss(), (N, C, T), _tokens),
    "ce-positions-class-last": (ClassLastCrossEntropy(), (N, T, C), _tokens),
    "ce-positions-weights-sum": (
        ClassLastCrossEntropy(weight=W, reduction="sum"),
        (N, T, C),
        _tokens,
    ),
    "ce-soft-weights": (
        nn.CrossEntropyLoss(weight=W),
        (N, C),
        lambda: torch.softmax(torch.randn(N, C, dtype=torch.float64), 1),
    ),
    "bce": (nn.BCEWithLogitsLoss(), (N, C), lambda: torch.randint(0, 2, (N, C)).double()),
    "bce-weights": (
        nn.BCEWithLogitsLoss(weight=W, pos_weight=torch.rand(C).double() * 3),
        (N, C),
        lambda: torch.randint(0, 2, (N, C)).double(),
    ),
    "bce-sum": (
        nn.BCEWithLogitsLoss(reduction="sum"),
        (N, T, C),
        lambda: torch.randint(0, 2, (N, T, C)).double(),
    ),
    "mse-any-shape": (nn.MSELoss(), (N, T, 2), lambda: torch.randn(N, T, 2).double()),
}


@pytest.mark.parametrize("name", list(SHAPED))
def test_closed_forms_match_autograd_for_every_shape_and_option(name: str) -> None:
    loss_fn, shape, make_targets = SHAPED[name]
    z = torch.randn(*shape, dtype=torch.float64)
    t = make_targets()
    assert hessian_kind(loss_fn, z, t) != "autograd"
    hvp = output_hessian(loss_fn, z, t)
    h = torch.func.hessian(lambda zz: loss_fn(zz.view(shape), t))(z.reshape(-1))
    for _ in range(3):
        u = torch.randn(*shape, dtype=torch.float64)
        torch.testing.assert_close(hvp(u).reshape(-1), h @ u.reshape(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SHAPED))
def test_the_normaliser_is_what_the_mean_divides_by(name: str) -> None:
    loss_fn, shape, make_targets = SHAPED[name]
    if loss_reduction(loss_fn) == "sum":
        return
    z, t = torch.randn(*shape, dtype=torch.float64), make_targets()
    summed = type(loss_fn)(**{**_args(loss_fn), "reduction": "sum"})
    assert float(loss_fn(z, t)) == pytest.approx(float(summed(z, t)) / loss_normaliser(loss_fn, t))


def _args(loss_fn: nn.Module) -> dict:
    keys = ("weight", "ignore_index", "label_smoothing", "pos_weight")
    return {k: getattr(loss_fn, k) for k in keys if hasattr(loss_fn, k)}


def test_class_last_cross_entropy_is_cross_entropy_with_classes_moved() -> None:
    z, t = torch.randn(N, T, C, dtype=torch.float64), _tokens()
    expected = nn.CrossEntropyLoss()(z.movedim(-1, 1), t)
    assert float(ClassLastCrossEntropy()(z, t)) == float(expected)


def test_loss_reduction() -> None:
    assert loss_reduction(nn.CrossEntropyLoss()) == "mean"
    assert loss_reduction(nn.MSELoss(reduction="sum")) == "sum"
    assert loss_reduction(lambda z, t: z.sum()) == "mean"
    with pytest.raises(ValueError, match="reduce"):
        loss_reduction(nn.CrossEntropyLoss(reduction="none"))
