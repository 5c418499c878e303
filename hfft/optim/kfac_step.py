"""One K-FAC step with Martens & Grosse's step length and reduction ratio.

At θ, with the objective ``f = L + Σ (wd/2) θ²`` (the loss plus its L2 term),
K-FAC factors ``K`` of the curvature on a batch B (:class:`hfft.optim.kfac.KFAC`)
and a damping λ, :func:`kfac_step` takes the step of Martens & Grosse (2015)
without their momentum:

1. the gradient ``g`` of ``f`` on B and ``f`` on a second batch B̄ (``f₀``);
2. the direction ``p = −(K + (λ + wd) I)⁻¹ g`` by K-FAC's factored Tikhonov
   inverse (§6.3; ``wd`` the problem's L2 factor, like HF's ``(C + (wd + λ) I)``);
3. the step length that minimises the damped quadratic model along ``p``
   (§6.4), with one exact GGN product ``C p`` on B:
   ``α* = −gᵀp / (pᵀ(C + diag(wd) + λ I)p)``, times ``lr``;
4. ``f`` on B̄ at ``θ + αp`` and the reduction ratio
   ``ρ = (f(θ + αp) − f₀) / M(αp)`` with the *undamped* model
   ``M(δ) = gᵀδ + ½ δᵀ(C + diag(wd))δ`` (§6.5), from which the caller adapts λ
   by the Levenberg-Marquardt rule (:mod:`hfft.optim.damping`).

The step is taken only when it lowers ``f`` on B̄ (as HF's line search
demands); otherwise, and on any exception inside the step, θ is put back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hfft.optim.batches import Batchable
from hfft.optim.curvature import (
    Chunk,
    CurvatureOperator,
    LinearizationCache,
    batch_loss,
    linearize_curvature,
    split_batch,
)
from hfft.optim.damping import reduction_ratio
from hfft.optim.flat import flatten
from hfft.optim.hf_step import write_flat
from hfft.optim.kfac import KFAC
from hfft.optim.output_hessians import Loss

__all__ = ["KFACStepResult", "kfac_step"]

Batch = tuple[Batchable, Tensor]


@dataclass(frozen=True)
class KFACStepResult:
    """What one step measured and decided.

    Attributes:
        loss: ``f`` on B̄ at θ.
        loss_after: ``f`` on B̄ at ``θ + αp`` (NaN when the step got no length).
        rho: The reduction ratio (``-inf`` when meaningless, as :func:`reduction_ratio`).
        alpha: The step length ``lr · α*`` (``None`` when none could be computed).
        accepted: Whether the weights are now ``θ + αp``.
        reason: Why the step was not taken (``None`` when it was).
    """

    loss: float
    loss_after: float
    rho: float
    alpha: float | None
    accepted: bool
    reason: str | None = None


def kfac_step(
    model: nn.Module,
    loss_fn: Loss,
    params: Sequence[Tensor],
    wd: Tensor,
    batch: Batch,
    eval_batch: Batch,
    factors: KFAC,
    *,
    damping: float,
    weight_decay: float,
    lr: float = 1.0,
    chunk_size: int | None = None,
    lin_cache: LinearizationCache | None = None,
) -> KFACStepResult:
    """One K-FAC step at the model's current parameters (module docstring).

    The model is used in the mode it is in (the caller sets it).

    Args:
        model: The network; its ``params`` are updated in place when the step is taken.
        loss_fn: The batch loss.
        params: The optimised parameters, in the order of ``wd`` and of ``factors``.
        wd: The L2 factor of every entry of the flat parameters.
        batch: B: the gradient and the curvature product.
        eval_batch: B̄: ``f₀``, ``f(θ + αp)`` and so ρ.
        factors: K-FAC's factors (on B, or on an earlier batch).
        damping: λ > 0.
        weight_decay: The scalar L2 factor added to λ in K-FAC's inverse.
        lr: Multiplier of the step length α*.
        chunk_size: Examples per chunk of B and B̄.
        lin_cache: Traced linearisations to reuse across steps.

    Returns:
        The :class:`KFACStepResult`.
    """
    theta = flatten(params)
    try:
        op, grad, f0, eval_chunks = _linearize(
            model, loss_fn, params, theta, wd, batch, eval_batch, chunk_size, lin_cache
        )
        if not (math.isfinite(f0) and bool(torch.isfinite(grad).all())):
            return _no_length(f0, "non-finite loss or gradient")
        p = -factors.inverse(damping + weight_decay)(grad)
        alpha_star, g_p, curvature = _step_length(op, grad, p, wd, damping)
        if not math.isfinite(alpha_star) or alpha_star <= 0:
            return _no_length(f0, "no finite step length")
        alpha = lr * alpha_star
        predicted = alpha * g_p + 0.5 * alpha**2 * curvature  # M(αp), the undamped model
        new = theta + alpha * p
        f_new = _objective_at(model, loss_fn, params, new, wd, eval_chunks)
    except BaseException:  # an interrupt in a trial evaluation: the weights stay at θ
        write_flat(params, theta)
        raise
    reason = _rejection(f0, f_new, new, theta)
    if reason is not None:
        write_flat(params, theta)
    rho = reduction_ratio(f_new, f0, predicted)
    return KFACStepResult(f0, f_new, rho, alpha, reason is None, reason)


def _step_length(
    op: CurvatureOperator, grad: Tensor, p: Tensor, wd: Tensor, damping: float
) -> tuple[float, float, float]:
    """``α*`` that minimises the damped model along ``p`` (Martens & Grosse 2015, §6.4),
    with ``gᵀp`` and ``pᵀ(C + diag(wd))p`` from which the undamped model's decrease follows."""
    cp = op.matvec(p)  # p → C p: the one exact GGN product of the step
    g_p = float(torch.dot(grad, p))
    curvature = float(torch.dot(p, cp)) + float(torch.dot(p, wd * p))  # pᵀ(C + diag(wd))p
    return -g_p / (curvature + damping * float(torch.dot(p, p))), g_p, curvature


def _rejection(f0: float, f_new: float, new: Tensor, theta: Tensor) -> str | None:
    """Why the step ``θ → new`` is not taken (``None``: it is): it must lower ``f`` on B̄
    (as HF's line search demands) and change the weights."""
    if not f_new < f0:  # also NaN
        return "the step did not lower the loss on B̄"
    if torch.equal(new, theta):
        return "the step was too small to change the weights"
    return None


def _no_length(f0: float, reason: str) -> KFACStepResult:
    return KFACStepResult(f0, math.nan, -math.inf, None, False, reason)


def _linearize(
    model: nn.Module,
    loss_fn: Loss,
    params: Sequence[Tensor],
    theta: Tensor,
    wd: Tensor,
    batch: Batch,
    eval_batch: Batch,
    chunk_size: int | None,
    lin_cache: LinearizationCache | None,
) -> tuple[CurvatureOperator, Tensor, float, list[Chunk]]:
    """The GGN operator on B, the objective's gradient on B, ``f₀`` on B̄ and B̄'s chunks."""
    op = linearize_curvature(
        model, loss_fn, batch[0], batch[1], params, chunk_size=chunk_size, lin_cache=lin_cache
    )
    eval_chunks = split_batch(eval_batch[0], eval_batch[1], chunk_size, loss_fn)
    f0 = _objective_at(model, loss_fn, params, theta, wd, eval_chunks)
    return op, op.grad + wd * theta, f0, eval_chunks


def _objective_at(
    model: nn.Module,
    loss_fn: Loss,
    params: Sequence[Tensor],
    flat: Tensor,
    wd: Tensor,
    chunks: list[Chunk],
) -> float:
    """``f`` on ``chunks`` at ``flat`` (written into the parameters)."""
    write_flat(params, flat)
    return batch_loss(model, loss_fn, chunks) + 0.5 * float(torch.dot(wd * flat, flat))
