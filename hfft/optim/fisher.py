"""What K-FAC backpropagates: the output gradients that define each Fisher type.

The Fisher/GGN of a loss ``L(z)`` over network outputs ``z`` is ``Jᵀ F J``
with ``F`` one of (Martens 2020, *New insights and perspectives on the natural
gradient method*; Kunstner et al. 2019 for the empirical Fisher):

* ``"type-2"``: ``F = H``, the output Hessian, written as ``S Sᵀ`` and
  backpropagated column by column; for cross-entropy
  ``S e_c = √p_c (e_c − p)`` per position (``p = softmax(z)``), for MSE
  ``√(2/n) e_c`` (``n`` the loss's normaliser);
* ``"mc"``: ``F ≈ n · ∇L(ŷ) ∇L(ŷ)ᵀ`` with labels ``ŷ`` drawn from the model's
  predictive distribution (categorical for cross-entropy, ``N(z, I/2)`` for
  MSE, whose negative log-likelihood is the squared error up to constants);
  its expectation is ``H``;
* ``"empirical"``: the same with the true labels.

The factor ``n`` undoes the square of the mean's ``1/n``: a mean loss's
gradient is ``1/n Σ ∇ℓ_i``, its Fisher ``1/n Σ E[∇ℓ_i ∇ℓ_iᵀ]``. Labels are
drawn as curvlinops draws them, so the same generator gives the same labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from hfft.optim.output_hessians import ClassLastCrossEntropy, Loss, loss_normaliser

__all__ = ["FISHER_TYPES", "output_gradients"]

FISHER_TYPES = ("type-2", "mc", "empirical")
"""Output-Hessian square roots, sampled labels' gradients, true labels' gradients."""


def output_gradients(
    loss_fn: Loss,
    z: Tensor,
    targets: Tensor,
    fisher: str,
    norm: float,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], float]:
    """Tensors ``u_c`` shaped like ``z`` with ``F ≈ scale · Σ_c u_c u_cᵀ`` (per example).

    ``z`` may be one chunk of a batch whose loss normaliser is ``norm``: the
    ``u_c`` are then the chunk's part of the batch's, and the sums over chunks
    are exact.

    Args:
        loss_fn: ``nn.CrossEntropyLoss`` (class-index targets) or ``nn.MSELoss``.
        z: The outputs (detached).
        targets: The chunk's targets.
        fisher: ``"type-2"``, ``"mc"`` or ``"empirical"``.
        norm: The batch loss's normaliser (:func:`loss_normaliser`, 1 for sum reduction).
        generator: Random numbers for ``"mc"``'s labels.

    Returns:
        The tensors to backpropagate and the scale of their outer products.
    """
    if fisher == "type-2":
        return list(_hessian_sqrt_columns(loss_fn, z, targets, norm)), 1.0
    labels = _sample_labels(loss_fn, z, targets, generator) if fisher == "mc" else targets
    share = loss_normaliser(loss_fn, labels)
    if share == 0:  # every target of the chunk is ignored: it adds nothing
        return [], 1.0
    # the chunk's part of the batch's mean loss
    weight = 1.0 if getattr(loss_fn, "reduction", "mean") == "sum" else share / norm
    leaf = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(leaf, labels) * weight, leaf)
    return [grad], norm


def _class_dim(loss_fn: Loss) -> int:
    return -1 if isinstance(loss_fn, ClassLastCrossEntropy) else 1


def _hessian_sqrt_columns(loss_fn: Loss, z: Tensor, y: Tensor, norm: float) -> Iterator[Tensor]:
    """Columns ``S e_c`` (shaped like ``z``, all positions at once) with ``S Sᵀ = H``.

    ``H`` is the Hessian of the batch loss with respect to ``z``: ``(diag p −
    p pᵀ)/norm`` per position for cross-entropy (0 where ignored), ``2/norm · I``
    for MSE.
    """
    if isinstance(loss_fn, nn.MSELoss):
        scale = math.sqrt(2.0 / norm)
        if z.ndim == 1:
            yield torch.full_like(z, scale)
            return
        for c in range(z.shape[-1]):
            column = torch.zeros_like(z)
            column[..., c] = scale
            yield column
        return
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    dim = _class_dim(loss_fn)
    p = torch.softmax(z, dim=dim)
    keep = (y != loss_fn.ignore_index).to(z.dtype).unsqueeze(dim)
    weight = (keep / norm).sqrt()
    for c in range(z.shape[dim]):
        column = -p  # √p_c (e_c − p)
        column.narrow(dim, c, 1).add_(1)
        yield column * (p.narrow(dim, c, 1).sqrt() * weight)


def _sample_labels(
    loss_fn: Loss, z: Tensor, y: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Labels drawn from the model's predictive distribution (ignored positions kept)."""
    if isinstance(loss_fn, nn.MSELoss):
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z + math.sqrt(0.5) * noise
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    probs = torch.softmax(z, dim=_class_dim(loss_fn)).movedim(_class_dim(loss_fn), -1)
    flat = probs.reshape(-1, probs.shape[-1])
    labels = flat.multinomial(1, generator=generator).reshape(probs.shape[:-1])
    return torch.where(y == loss_fn.ignore_index, y, labels)
