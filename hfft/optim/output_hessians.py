"""Loss functions as the curvature code sees them: normaliser and output Hessian.

The generalised Gauss-Newton matrix ``G = Jᵀ H J`` needs products with the
Hessian ``H`` of the loss with respect to the network outputs ``z``. For the
common losses it has a closed form, applied position by position:

* softmax cross-entropy (``nn.CrossEntropyLoss``, classes along dimension 1,
  or along the last dimension with :class:`ClassLastCrossEntropy`; class
  weights, ``ignore_index``, label smoothing and soft targets):
  ``H = s · (diag(p) − p pᵀ)`` with ``p = softmax(z)`` over the classes and
  ``s`` the target's weight (0 for an ignored position; ``Σ_c w_c q_c`` for
  soft targets ``q``; label smoothing ``ε`` gives ``(1 − ε) w_y + ε/C Σ_c w_c``);
* binary cross-entropy on logits (``nn.BCEWithLogitsLoss``, with ``weight``
  and ``pos_weight``): ``H = diag(w σ(z)(1 − σ(z))(p_w y + 1 − y))``;
* mean squared error (``nn.MSELoss``): ``H = 2 I``.

Each is divided by the loss's own *normaliser* under mean reduction
(:func:`loss_normaliser`: the weight sum of the non-ignored targets for
cross-entropy with hard targets, the number of positions for soft targets,
the number of elements for BCE and MSE; 1 for sum reduction). The same
normaliser makes chunked accumulation exact: a chunk's loss enters the batch
loss with weight ``normaliser(chunk) / normaliser(batch)``. Any other loss
callable gets ``H u`` from autograd (forward-over-reverse on the outputs),
exact but dearer, and is assumed to average over the samples of dimension 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "ClassLastCrossEntropy",
    "Loss",
    "hessian_kind",
    "loss_normaliser",
    "loss_reduction",
    "output_hessian",
]

Loss = Callable[[Tensor, Tensor], Tensor]


class ClassLastCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy of outputs whose classes are along the *last* dimension.

    Language models and per-token classifiers return ``(N, T, C)``; PyTorch's
    cross-entropy wants the classes along dimension 1. This moves them there
    and is otherwise ``nn.CrossEntropyLoss`` (same arguments, same value).
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return super().forward(input.movedim(-1, 1), target)


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


def _class_dim(loss_fn: Loss) -> int:
    return -1 if isinstance(loss_fn, ClassLastCrossEntropy) else 1


def _target_weights(loss_fn: nn.CrossEntropyLoss, targets: Tensor) -> Tensor:
    """Per position: the weight a hard target carries in the loss (0 where ignored)."""
    keep = targets != loss_fn.ignore_index
    if loss_fn.weight is None:
        return keep.to(torch.float64)
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    return torch.where(keep, loss_fn.weight.to(torch.float64)[safe], 0.0)


def loss_normaliser(loss_fn: Loss, targets: Tensor) -> float:
    """What ``loss_fn`` divides its sum by under mean reduction (1 for sum reduction).

    Cross-entropy with class indices: the summed weight of the targets that
    are not ``ignore_index`` (their number without class weights); with soft
    targets: the number of positions. BCE, MSE and other element-wise
    ``nn`` losses: the number of target elements. A plain callable: the
    number of samples (dimension 0).
    """
    if loss_reduction(loss_fn) == "sum":
        return 1.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if targets.is_floating_point():  # probabilities: one per class
            return float(targets.numel() // targets.shape[_class_dim(loss_fn)])
        return float(_target_weights(loss_fn, targets).sum())
    if isinstance(loss_fn, nn.modules.loss._Loss):
        return float(targets.numel())
    return float(targets.shape[0])


def hessian_kind(loss_fn: Loss, outputs: Tensor, targets: Tensor) -> str:
    """Which output-Hessian formula applies: ``"ce"``, ``"bce"``, ``"mse"`` or ``"autograd"``."""
    if isinstance(loss_fn, nn.MSELoss):
        return "mse"
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        return "bce"
    if isinstance(loss_fn, nn.CrossEntropyLoss) and outputs.ndim >= 2:
        return "ce"
    return "autograd"


def _ce_scale(loss_fn: nn.CrossEntropyLoss, z: Tensor, targets: Tensor) -> Tensor:
    """Per position (the targets' shape), the factor of ``diag(p) − p pᵀ``."""
    dim = _class_dim(loss_fn)
    weight = loss_fn.weight.to(torch.float64) if loss_fn.weight is not None else None
    if targets.is_floating_point():  # soft targets q: Σ_c w_c q_c
        q = targets.to(torch.float64)
        if weight is not None:
            q = q * weight.view([-1 if d == dim % z.ndim else 1 for d in range(z.ndim)])
        return q.sum(dim=dim)
    scale = _target_weights(loss_fn, targets)
    eps = loss_fn.label_smoothing
    if eps > 0:
        mean_w = float(weight.mean()) if weight is not None else 1.0
        keep = (targets != loss_fn.ignore_index).to(torch.float64)
        scale = (1 - eps) * scale + eps * mean_w * keep
    return scale


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
    if kind in ("ce", "bce", "mse"):
        norm = loss_normaliser(loss_fn, targets)
        return {"ce": _ce_hvp, "bce": _bce_hvp, "mse": _mse_hvp}[kind](loss_fn, z, targets, norm)

    def loss_of_outputs(out: Tensor) -> Tensor:
        return loss_fn(out, targets)

    grad_fn = torch.func.grad(loss_of_outputs)

    def autograd_hvp(u: Tensor) -> Tensor:
        # forward-over-reverse: d/dε ∇_z loss(z + ε u) at ε = 0
        return torch.func.jvp(grad_fn, (z,), (u,))[1]

    return autograd_hvp


def _ce_hvp(loss_fn: Loss, z: Tensor, targets: Tensor, norm: float) -> Callable[[Tensor], Tensor]:
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    dim = _class_dim(loss_fn)
    p = torch.softmax(z, dim=dim)
    scale = (_ce_scale(loss_fn, z, targets) / norm).to(z.dtype).unsqueeze(dim)

    def ce_hvp(u: Tensor) -> Tensor:
        # u → s (diag(p) − p pᵀ) u, position by position along the class dimension
        pu = p * u
        return scale * (pu - p * pu.sum(dim=dim, keepdim=True))

    return ce_hvp


def _bce_hvp(loss_fn: Loss, z: Tensor, targets: Tensor, norm: float) -> Callable[[Tensor], Tensor]:
    assert isinstance(loss_fn, nn.BCEWithLogitsLoss)
    s = torch.sigmoid(z)
    diag = s * (1 - s)
    if loss_fn.pos_weight is not None:  # the positive term is scaled by pos_weight
        diag = diag * (loss_fn.pos_weight * targets + 1 - targets)
    if loss_fn.weight is not None:
        diag = diag * loss_fn.weight
    diag = diag / norm

    def bce_hvp(u: Tensor) -> Tensor:
        return diag * u

    return bce_hvp


def _mse_hvp(loss_fn: Loss, z: Tensor, targets: Tensor, norm: float) -> Callable[[Tensor], Tensor]:
    scale = 2.0 / norm

    def mse_hvp(u: Tensor) -> Tensor:
        return scale * u

    return mse_hvp
