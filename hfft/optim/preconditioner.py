"""Diagonal preconditioner for CG from the empirical Fisher.

Martens (2010, §4.7):

    M = [diag(Σ_n ∇ℓ_n ⊙ ∇ℓ_n) + λ I]^ξ,   ξ = 3/4,

where ℓ_n are the per-sample losses of the batch. Here the sum is scaled like
the batch loss (``1/N`` for a mean-reduced loss), so that the diagonal is on
the scale of the GGN, and the L2 curvature ``wd`` is added next to ``λ``.
The exponent ξ < 1 tempers the extreme ratios of the diagonal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hfft.optim.batches import Batchable, batch_size, map_tensors, take
from hfft.optim.curvature import Chunk
from hfft.optim.flat import FlatSpace, ModelState
from hfft.optim.output_hessians import Loss

__all__ = ["PRECONDITIONERS", "empirical_fisher_diagonal", "preconditioner_from_diagonal"]

PRECONDITIONERS = ("empirical-fisher", "kfac")
"""CG's preconditioners: this module's diagonal, and K-FAC (:mod:`hfft.optim.kfac`)."""


def empirical_fisher_diagonal(
    model: nn.Module,
    loss_fn: Loss,
    chunks: Sequence[Chunk],
    params: Sequence[Tensor],
    reduction: str,
    vmap_chunk: int = 64,
    total: int | None = None,
) -> Tensor:
    """``Σ_n w ∇ℓ_n ⊙ ∇ℓ_n`` over the batch as a flat vector.

    ``w = 1/N`` for a mean-reduced loss, 1 for a sum-reduced one; per-sample
    gradients come from ``torch.func.vmap`` over ``vmap_chunk`` samples at a
    time.

    Args:
        model: The network (deterministic mode).
        loss_fn: The batch loss; called on single samples.
        chunks: The batch, as from :func:`hfft.optim.curvature.split_batch`.
        params: Parameters to differentiate.
        reduction: ``"mean"`` or ``"sum"``.
        vmap_chunk: Samples per vmap call (memory bound).
        total: Samples in the whole batch when ``chunks`` are only this
            rank's shard of it (data-parallel); the local count by default.
            The caller sums the shards' results over ranks.
    """
    state = ModelState(model, params)
    space = FlatSpace(params)
    detached = tuple(p.detach() for p in params)
    n_total = total if total is not None else sum(batch_size(c.inputs) for c in chunks)

    def sample_loss(p: tuple[Tensor, ...], x: Batchable, y: Tensor) -> Tensor:
        one = map_tensors(lambda t: t.unsqueeze(0), x)
        z = torch.func.functional_call(model, state.state(p), (one,))
        return loss_fn(z, y.unsqueeze(0))

    per_sample_grad = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    acc = [torch.zeros_like(p) for p in detached]
    for c in chunks:
        for start in range(0, batch_size(c.inputs), vmap_chunk):
            part = slice(start, start + vmap_chunk)
            grads = per_sample_grad(detached, take(c.inputs, part), c.targets[part])
            for a, g in zip(acc, grads, strict=True):
                a.add_(g.pow(2).sum(dim=0))
    diag = space.flatten(acc)
    return diag / n_total if reduction == "mean" else diag


def preconditioner_from_diagonal(diag: Tensor, shift: Tensor | float, exponent: float = 0.75):
    """``r ↦ r / (diag + shift)^exponent``, the inverse of Martens' ``M``."""
    m = (diag + shift).pow(exponent)
    inv = 1.0 / m

    def apply(r: Tensor) -> Tensor:
        return r * inv

    return apply
