"""Shared fixtures: tiny float64 problems and dense reference matrices."""

from __future__ import annotations

from collections.abc import Callable

import pytest
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


def dense(matvec: Callable[[Tensor], Tensor], dim: int, dtype=torch.float64) -> Tensor:
    """The dense matrix of a linear operator, column by column."""
    eye = torch.eye(dim, dtype=dtype)
    return torch.stack([matvec(eye[i]) for i in range(dim)], dim=1)


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_of_flat(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """θ (flat) ↦ loss_fn(model_θ(x), y), for torch.func references."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [s.numel() for s in shapes]

    def f(theta: Tensor) -> Tensor:
        parts = torch.split(theta, numels)
        state = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(torch.func.functional_call(model, state, (x,)), y)

    return f


def outputs_of_flat(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [s.numel() for s in shapes]

    def f(theta: Tensor) -> Tensor:
        parts = torch.split(theta, numels)
        state = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return torch.func.functional_call(model, state, (x,))

    return f


def dense_ggn(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    """G = Jᵀ H J built densely with torch.func."""
    theta = flat_params(model)
    out_fn = outputs_of_flat(model, x)
    z = out_fn(theta)
    jac = torch.func.jacrev(out_fn)(theta).reshape(z.numel(), -1)
    h = torch.func.hessian(lambda zz: loss_fn(zz.view_as(z), y))(z.reshape(-1))
    return jac.T @ h @ jac


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A short hfft training run on digits: run.json and two checkpoints."""
    from hfft.experiment.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    train(
        TrainConfig(
            model="mlp",
            data="digits",
            out=str(out),
            epochs=4,
            lr=0.05,
            batch_size=64,
            momentum=0.9,
            weight_decay=1e-4,
            checkpoints=2,
            seed=1,
            model_args={"width": 32},
        )
    )
    return out


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # tiny tensors: one thread is faster and immune to oversubscribed cores
    torch.set_num_threads(1)
