"""The tiny problems every operator test runs on: one case table, float64, seeded.

Like curvlinops' ``test/cases.py``: a test parametrises over :data:`CASES`
(model × loss) and builds its problem with :func:`make_problem`, so every
operator is checked on the same networks and losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def tiny_mlp(in_dim: int = 4, hidden: int = 3, out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))


def tiny_cnn(out: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, out),
    )


MODELS = ("mlp", "cnn")
"""The tiny networks: an MLP on 4 features and a CNN on 1×4×4 images, 3 outputs each."""

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "ce-mean": lambda: nn.CrossEntropyLoss(),
    "ce-sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
    "mse-mean": lambda: nn.MSELoss(),
    "mse-sum": lambda: nn.MSELoss(reduction="sum"),
}
"""The losses with closed-form output Hessians, by name."""

CASES = [(model, loss) for model in MODELS for loss in LOSSES]
"""Every model with every loss, as ``(model, loss)`` names."""


def make_problem(kind: str, n: int = 6, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny float64 model with inputs and integer class targets."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model, x = tiny_mlp(), torch.randn(n, 4)
    elif kind == "cnn":
        model, x = tiny_cnn(), torch.randn(n, 1, 4, 4)
    else:
        raise ValueError(kind)
    y = torch.randint(0, 3, (n,))
    return model.double(), x.double(), y


def targets_for(loss_name: str, y: Tensor) -> Tensor:
    """Class targets as the loss wants them (one-hot for MSE)."""
    if loss_name.startswith("mse"):
        return nn.functional.one_hot(y, 3).double()
    return y
