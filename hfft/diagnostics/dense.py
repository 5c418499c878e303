"""Dense reference matrices built by ``torch.func``, independently of :mod:`hfft.optim`.

The curvature products of hfft are checked against these — by ``hfft
selftest`` on its built-in problems and by the test suite — on tiny float64
models, where a dense ``Jᵀ H J`` or ``∇²L`` is cheap: the Jacobian by
``jacrev``, the loss's Hessian by ``hessian``, nothing shared with the
traced linearisation or BackPACK.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hfft.optim.flat import flatten
from hfft.optim.output_hessians import Loss
from hfft.optim.step_context import forward_ad_kernels

__all__ = ["dense", "dense_ggn", "dense_hessian", "flat_function", "loss_of_flat"]


def flat_function(
    model: nn.Module, fn: Callable[[dict[str, Tensor]], Tensor]
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """θ (flat, the model's parameter order) and ``θ ↦ fn(state of θ)``."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = flatten(model.parameters())

    def of_flat(flat: Tensor) -> Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        state = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return fn(state)

    return theta, of_flat


def loss_of_flat(
    model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor
) -> Callable[[Tensor], Tensor]:
    """``θ ↦ loss_fn(model_θ(x), y)`` on flat parameter vectors."""
    return flat_function(model, lambda s: loss_fn(torch.func.functional_call(model, s, (x,)), y))[1]


def dense_ggn(model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor) -> Tensor:
    """``G = Jᵀ H J`` as a dense matrix (``jacrev`` of the outputs, ``hessian`` of the loss)."""
    theta, outputs = flat_function(model, lambda s: torch.func.functional_call(model, s, (x,)))
    with forward_ad_kernels(model):  # kernels torch.func can batch (math attention)
        z = outputs(theta)
        jac = torch.func.jacrev(outputs)(theta).reshape(z.numel(), -1)
    hess = torch.func.hessian(lambda flat: loss_fn(flat.view_as(z), y))(z.detach().reshape(-1))
    return jac.T @ hess @ jac


def dense_hessian(model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor) -> Tensor:
    """``∇²L`` as a dense matrix (``torch.func.hessian``)."""
    theta = flatten(model.parameters())
    with forward_ad_kernels(model):
        return torch.func.hessian(loss_of_flat(model, loss_fn, x, y))(theta)


def dense(matvec: Callable[[Tensor], Tensor], like: Tensor) -> Tensor:
    """The matrix of a linear operator on vectors shaped like ``like``, column by column."""
    eye = torch.eye(like.numel(), dtype=like.dtype, device=like.device)
    return torch.stack([matvec(eye[i]) for i in range(like.numel())], dim=1)
