"""One Hessian-free step, phase by phase (Martens 2010; Tatzel et al., Algorithm 1).

:class:`HFStep` holds what one step works with — the model at θ, the L2 term
of the objective, the evaluation batch B̄, the clock — and runs the phases
that :meth:`hfft.optim.optimizer.HessianFree.step` strings together:

1. :meth:`HFStep.linearize`: gradient and curvature on B (the objective's L2
   term added to both); with ``curvature_fraction`` < 1 the curvature on the
   first part of B only (Byrd, Chin, Neveitt & Nocedal 2011);
2. :meth:`HFStep.solve`: CG on ``(C + (wd + λ) I) p = −g`` from a warm start,
   optionally preconditioned by the damped empirical-Fisher diagonal or by
   K-FAC's inverse, and inside a trust region with ``damping_rule="trust-region"``;
3. :meth:`HFStep.choose`: ρ of the last iterate (on B̄, or on B with
   ``rho_batch="curvature"``) and the next damping or trust radius, CG
   backtracking and the Armijo line search on B̄;
4. :meth:`HFStep.record`: the :class:`~hfft.optim.step_record.StepRecord`.

The B̄ evaluations write trial points into the parameters; the caller puts θ
back if a step is rejected or interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hfft.optim import distributed
from hfft.optim.batches import take
from hfft.optim.cg import CGResult, conjugate_gradient
from hfft.optim.curvature import (
    CurvatureOperator,
    LinearizationCache,
    batch_gradient,
    batch_loss,
    linearize_curvature,
    split_batch,
)
from hfft.optim.damping import adapt_damping, adapt_radius, reduction_ratio
from hfft.optim.linesearch import armijo, backtrack
from hfft.optim.output_hessians import Loss, loss_normaliser, loss_reduction
from hfft.optim.preconditioner import empirical_fisher_diagonal, preconditioner_from_diagonal
from hfft.optim.step_context import Timer
from hfft.optim.step_record import StepRecord

__all__ = ["Choice", "HFStep", "curvature_size", "write_flat"]

Batch = tuple[Tensor, Tensor]


@torch.no_grad()
def write_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    """Copy a flat vector into the parameters, in order."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def curvature_size(fraction: float, n: int) -> int:
    """How many of B's ``n`` samples CG's curvature products take: ⌈fraction · n⌉ (all of B
    at a fraction of 1)."""
    return n if fraction >= 1 else max(1, math.ceil(fraction * n))


@dataclass(frozen=True)
class Choice:
    """What phase 3 decided: the step ``alpha · p`` (``alpha`` ``None``: rejected)."""

    p: Tensor
    alpha: float | None
    loss_after: float
    rho: float
    next_damping: float
    chosen_iterate: int
    tries: int
    next_radius: float | None = None


class HFStep:
    """The state of one HF step between its phases.

    Args:
        model: The network, in the step's mode.
        loss_fn: The batch loss.
        params: The optimised parameters (their values are θ).
        theta: θ, flat.
        wd: The L2 coefficient of every entry of θ, flat.
        hp: The optimizer's hyperparameters (``HessianFree.defaults``).
        damping: This step's λ.
        targets: This rank's targets of B and B̄ (data-parallel: shards).
        radius: This step's trust region on ``‖p‖`` (``damping_rule="trust-region"``;
            ``None``: the first step, unconstrained).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Loss,
        params: list[Tensor],
        theta: Tensor,
        wd: Tensor,
        hp: dict[str, Any],
        damping: float,
        targets: tuple[Tensor, Tensor],
        radius: float | None = None,
    ) -> None:
        self.model, self.loss_fn, self.params, self.theta, self.wd = (
            model,
            loss_fn,
            params,
            theta,
            wd,
        )
        self.hp, self.damping, self.radius = hp, damping, radius
        # sub-sampled curvature: the first part of B (itself a random draw) is S
        self.n_s = curvature_size(hp["curvature_fraction"], int(targets[0].shape[0]))
        self.timer = Timer(theta.device)
        self.times: dict[str, float] = dict.fromkeys(
            ("gradient", "preconditioner", "cg", "eval", "backtracking", "linesearch"), 0.0
        )
        # data-parallel: the sums over ranks and the global loss normalisers and sizes
        self.reduction = loss_reduction(loss_fn)
        local = [loss_normaliser(loss_fn, t) for t in (*targets, targets[0][: self.n_s])]
        local.append(float(self.n_s))
        self.reduce, totals = distributed.shard_sizes(local, theta.device)
        self.norm_b: float | None = totals[0] if totals is not None else None
        self.norm_bar: float | None = totals[1] if totals is not None else None
        self.norm_s: float | None = totals[2] if totals is not None else None
        self.n_s_total: int | None = int(totals[3]) if totals is not None else None
        self.evals = 0
        self.eval_chunks: list[Any] = []
        self.batch_chunks: list[Any] = []
        self.curvature_batch: Batch | None = None
        self.f0 = self.batch_f = math.nan

    def l2(self, flat: Tensor) -> float:
        """The objective's L2 term ``Σ (wd/2) θ²`` at ``flat``."""
        return 0.5 * float(torch.dot(self.wd * flat, flat))

    def objective_at(self, d: Tensor | None, chunks: list[Any] | None = None) -> float:
        """The objective on B̄ (or ``chunks``) at ``θ + d`` (θ for ``None``); writes that point."""
        if chunks is None:  # the record counts the evaluations on B̄ alone
            self.evals += 1
        flat = self.theta if d is None else self.theta + d
        write_flat(self.params, flat)
        loss = batch_loss(self.model, self.loss_fn, self.eval_chunks if chunks is None else chunks)
        return distributed.sum_float(loss, self.reduce, flat.device) + self.l2(flat)

    # 1. gradient and curvature on B ------------------------------------------------------

    def linearize(
        self, batch: Batch, eval_batch: Batch, lin_cache: LinearizationCache, profile: bool
    ) -> tuple[CurvatureOperator, Tensor, float]:
        """The curvature operator on B, the objective's gradient and its value on B.

        Also measures the objective on B̄ at θ (``f0``), which every later
        decision compares with.
        """
        hp = self.hp
        # the option decides, not this rank's shard: ⌈f·n⌉ may be all of one rank's shard and
        # not of another's, and every rank must normalise S alike and run the same all-reduces
        whole = hp["curvature_fraction"] >= 1
        sub = batch if whole else (take(batch[0], slice(0, self.n_s)), batch[1][: self.n_s])
        self.curvature_batch = sub
        op = linearize_curvature(
            self.model,
            self.loss_fn,
            sub[0],
            sub[1],
            self.params,
            curvature=hp["curvature"],
            backend=hp["backend"],
            chunk_size=hp["chunk_size"],
            cache_chunks=hp["cache_chunks"],
            lin_cache=lin_cache,
            total=self.norm_b if whole else self.norm_s,
            reduce=self.reduce,
        )
        op.synchronize = profile
        loss, grad = op.loss, op.grad
        if not whole or hp["rho_batch"] == "curvature":
            self.batch_chunks = split_batch(
                batch[0], batch[1], hp["chunk_size"], self.loss_fn, self.norm_b
            )
        if not whole:  # the gradient on all of B, the curvature on S
            loss, grad = batch_gradient(
                self.model, self.loss_fn, self.batch_chunks, self.params, self.reduce
            )
        grad = grad + self.wd * self.theta
        batch_f = self.batch_f = loss + self.l2(self.theta)
        self.times["gradient"] = self.timer.lap()
        self.eval_chunks = split_batch(
            eval_batch[0], eval_batch[1], hp["chunk_size"], self.loss_fn, self.norm_bar
        )
        self.f0 = self.objective_at(None)
        self.times["eval"] = self.timer.lap()
        return op, grad, batch_f

    # 2. the solve: preconditioner, warm start, CG -------------------------------------------

    def solve(self, op: CurvatureOperator, grad: Tensor, x0: Tensor | None) -> CGResult:
        """CG on ``(C + (wd + λ) I) p = −g`` from ``x0``."""
        hp = self.hp
        shift = self.wd + self.damping

        def damped(v: Tensor) -> Tensor:
            return op.matvec(v) + shift * v

        precondition = self._preconditioner(op, shift)
        self.times["preconditioner"] = self.timer.lap()
        radius = self.radius if hp["damping_rule"] == "trust-region" else None
        if radius is not None and x0 is not None:  # Steihaug's CG starts inside the region
            norm = float(torch.linalg.vector_norm(x0))
            x0 = x0 * (0.5 * radius / norm) if norm > 0.5 * radius else x0
        result = conjugate_gradient(
            damped,
            -grad,
            x0,
            max_iter=hp["cg_max_iter"],
            tol=hp["cg_tol"],
            martens_criterion=hp["martens_criterion"],
            precondition=precondition,
            radius=radius,
        )
        op.release()  # the B̄ evaluations that follow need no chunk kept linearised
        self.times["cg"] = self.timer.lap()
        return result

    def _preconditioner(
        self, op: CurvatureOperator, shift: Tensor
    ) -> Callable[[Tensor], Tensor] | None:
        """``r ↦ M⁻¹ r``: the damped empirical-Fisher diagonal, K-FAC's damped inverse on
        the curvature batch (Martens & Grosse 2015), or none."""
        hp = self.hp
        if hp["preconditioner"] == "empirical-fisher":
            op.release()  # one chunk's values at a time during the Fisher pass too
            diag = empirical_fisher_diagonal(
                self.model, self.loss_fn, op.chunks, self.params, self.reduction,
                total=self.n_s_total,
            )  # fmt: skip
            if self.reduce is not None:
                diag = self.reduce(diag)
            return preconditioner_from_diagonal(diag, shift, hp["preconditioner_exponent"])
        if hp["preconditioner"] == "kfac":
            from hfft.optim.kfac import KFAC

            if self.reduce is not None:
                raise ValueError("the K-FAC preconditioner runs in one process only")
            assert self.curvature_batch is not None
            op.release()
            x, y = self.curvature_batch
            factors = KFAC.compute(
                self.model, self.loss_fn, x, y, self.params, chunk_size=hp["chunk_size"]
            )
            return factors.inverse(float(shift.max()))
        return None

    # 3. choosing the step: ρ and damping, backtracking, line search --------------------------

    def choose(self, result: CGResult, grad: Tensor) -> Choice:
        """ρ of the last iterate (the LM rule's next λ), backtracking and the line search."""
        hp = self.hp
        p_last = result.iterates[-1][1]
        f_last = self.objective_at(p_last)  # ρ's numerator, and backtracking's start
        if hp["rho_batch"] == "curvature":  # on B, which the quadratic model was built on
            f_b = self.objective_at(p_last, self.batch_chunks)
            rho = reduction_ratio(f_b, self.batch_f, result.q_values[-1])
        else:
            rho = reduction_ratio(f_last, self.f0, result.q_values[-1])
        self.times["eval"] += self.timer.lap()  # ρ's evaluations, not backtracking's
        next_damping, next_radius = self.damping, None
        if hp["damping_rule"] == "trust-region":  # λ stays; the region adapts
            reached = self.radius is None or result.stop_reason == "radius"
            base = self.radius or float(torch.linalg.vector_norm(p_last))
            next_radius = adapt_radius(base, rho, reached) if base > 0 else self.radius
        elif hp["adapt_damping"]:
            next_damping = adapt_damping(self.damping, rho, upper=hp["max_damping"])
        if hp["use_cg_backtracking"]:
            chosen, p, f_p, _ = backtrack(result.iterates, self.objective_at, last_loss=f_last)
        else:
            chosen, p, f_p = result.iterates[-1][0], p_last, f_last
        self.times["backtracking"] = self.timer.lap()
        alpha, f_new, tries = self._line_search(p, f_p, float(torch.dot(grad, p)))
        self.times["linesearch"] = self.timer.lap()
        self.times["eval"] += self.times["backtracking"] + self.times["linesearch"]
        return Choice(p, alpha, f_new, rho, next_damping, chosen, tries, next_radius)

    def _line_search(self, p: Tensor, f_p: float, slope: float) -> tuple[float | None, float, int]:
        hp = self.hp
        if hp["use_linesearch"]:
            ls = armijo(
                lambda a: self.objective_at(a * p),
                self.f0,
                slope,
                alpha0=hp["lr"],
                beta=hp["linesearch_beta"],
                c=hp["linesearch_c"],
                max_tries=hp["linesearch_max_tries"],
                known={1.0: f_p},
            )
            return ls.alpha, ls.loss, ls.tries
        alpha = hp["lr"]
        f_new = f_p if alpha == 1.0 else self.objective_at(alpha * p)
        return (alpha if math.isfinite(f_new) else None), f_new, 1

    # 4. the record ---------------------------------------------------------------------------

    def record(self, op: CurvatureOperator | None, step: int, **decided: Any) -> StepRecord:
        """The :class:`StepRecord`: what was measured, and ``decided`` (the rest as if rejected)."""
        fields: dict[str, Any] = dict(
            step=step,
            accepted=False,
            reject_reason=None,
            loss_before=self.f0,
            loss_after=self.f0,
            batch_loss=math.nan,
            grad_norm=math.nan,
            damping=self.damping,
            next_damping=self.damping,
            rho=math.nan,
            cg_iterations=0,
            cg_stop_reason="not run",
            cg_chosen_iterate=0,
            cg_q=math.nan,
            alpha=0.0,
            linesearch_tries=0,
            products=op.num_products if op is not None else 0,
            eval_batch_evaluations=self.evals,
            time_products=op.product_seconds if op is not None else 0.0,
            time_total=self.timer.total(),
            radius=self.radius if self.hp["damping_rule"] == "trust-region" else None,
            **{f"time_{k}": v for k, v in self.times.items()},
        )
        fields.update(decided)
        return StepRecord(**fields)
