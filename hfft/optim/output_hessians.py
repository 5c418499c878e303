"""Loss functions as the curvature code sees them: reduction and output Hessian.

The generalised Gauss-Newton matrix ``G = Jᵀ H J`` needs products with the
Hessian ``H`` of the loss with respect to the network outputs. For the two
losses used in practice it has a closed form:

* softmax cross-entropy, per sample: ``H = diag(p) − p pᵀ`` with
  ``p = softmax(z)`` (unchanged by label smoothing, whose target distribution
  sums to one);
* mean squared error ``‖z − y‖²``: ``H = 2 I``.

Both are scaled by ``1/N`` (samples) or ``1/(N·C)`` (elements) for mean
reduction. Any other loss callable gets ``H u`` from autograd
(forward-over-reverse on the outputs), which is exact but costs more.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["hessian_kind", "loss_reduction", "output_hessian"]

Loss = Callable[[Tensor, Tensor], Tensor]


def loss_reduction(loss_fn: Loss) -> str:
    """How ``loss_fn`` reduces over the batch: ``"mean"`` or ``"sum"``.

    Read from the loss module's ``reduction`` attribute; plain callables are
    assumed to average over the batch (``hfft selftest`` checks that
    assumption on real data).

    Raises:
        ValueError: If the loss does not reduce to a scalar (``reduction="none"``).
    """
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"the loss must reduce to a scalar by 'mean' or 'sum', got reduction={reduction!r}"
        )
    return str(reduction)


def hessian_kind(loss_fn: Loss, outputs: Tensor, targets: Tensor) -> str:
    """Which output-Hessian formula applies: ``"ce"``, ``"mse"`` or ``"autograd"``.

    Closed forms cover ``nn.CrossEntropyLoss`` without class weights on 2-D
    outputs (and without targets equal to ``ignore_index``) and ``nn.MSELoss``.
    The ``ignore_index`` check reads the targets (a host-device sync on GPUs),
    so callers that evaluate the same batch repeatedly should compute the kind
    once and pass it to :func:`output_hessian`.
    """
    if isinstance(loss_fn, nn.MSELoss):
        return "mse"
    if not isinstance(loss_fn, nn.CrossEntropyLoss) or loss_fn.weight is not None:
        return "autograd"
    if outputs.ndim != 2:
        return "autograd"
    if not targets.is_floating_point() and bool(torch.any(targets == loss_fn.ignore_index)):
        return "autograd"
    return "ce"


def output_hessian(
    loss_fn: Loss, outputs: Tensor, targets: Tensor, kind: str | None = None
) -> Callable[[Tensor], Tensor]:
    """Return ``u ↦ H u`` with ``H = ∂²loss_fn(z, targets)/∂z²`` at ``z = outputs``.

    Args:
        loss_fn: The loss, ``loss_fn(outputs, targets)`` a scalar.
        outputs: Network outputs ``z`` (detached values are fine).
        targets: Targets of the batch.
        kind: The result of :func:`hessian_kind` if already known.

    Returns:
        A function mapping a tensor shaped like ``outputs`` to ``H u``.
    """
    z = outputs.detach()
    kind = kind if kind is not None else hessian_kind(loss_fn, z, targets)
    if kind == "ce":
        scale = 1.0 / z.shape[0] if loss_reduction(loss_fn) == "mean" else 1.0
        p = torch.softmax(z, dim=1)

        def ce_hvp(u: Tensor) -> Tensor:
            # u → (diag(p) − p pᵀ) u, row by row
            pu = p * u
            return scale * (pu - p * pu.sum(dim=1, keepdim=True))

        return ce_hvp
    if kind == "mse":
        scale = 2.0 / z.numel() if loss_reduction(loss_fn) == "mean" else 2.0

        def mse_hvp(u: Tensor) -> Tensor:
            return scale * u

        return mse_hvp

    def loss_of_outputs(out: Tensor) -> Tensor:
        return loss_fn(out, targets)

    grad_fn = torch.func.grad(loss_of_outputs)

    def autograd_hvp(u: Tensor) -> Tensor:
        # forward-over-reverse: d/dε ∇_z loss(z + ε u) at ε = 0
        return torch.func.jvp(grad_fn, (z,), (u,))[1]

    return autograd_hvp
