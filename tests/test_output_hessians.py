"""Output Hessians in closed form against torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfft.optim.output_hessians import loss_reduction, output_hessian

N, C = 5, 4


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


def test_ignore_index_targets_fall_back_to_autograd() -> None:
    loss_fn = nn.CrossEntropyLoss(ignore_index=1)
    z = torch.randn(N, C, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1, 3])
    h = torch.func.hessian(lambda zz: loss_fn(zz.view(N, C), t))(z.reshape(-1))
    u = torch.randn(N, C, dtype=torch.float64)
    torch.testing.assert_close(output_hessian(loss_fn, z, t)(u).reshape(-1), h @ u.reshape(-1))


def test_loss_reduction() -> None:
    assert loss_reduction(nn.CrossEntropyLoss()) == "mean"
    assert loss_reduction(nn.MSELoss(reduction="sum")) == "sum"
    assert loss_reduction(lambda z, t: z.sum()) == "mean"
    with pytest.raises(ValueError, match="reduce"):
        loss_reduction(nn.CrossEntropyLoss(reduction="none"))
