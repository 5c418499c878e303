"""The Hessian-free optimizer (Martens 2010; Tatzel, Hennig & Schneider, Algorithm 1).

One :meth:`HessianFree.step` on a batch B and a disjoint batch B̄:

1. ``g = ∇f_B(θ)`` and the curvature ``C`` (GGN or Hessian) of ``f_B`` at θ,
   where ``f = L + Σ_groups (wd/2)‖θ_group‖²`` is the objective *with* its L2
   term: ``g`` gets ``wd·θ`` and the curvature ``wd·I`` on each group.
2. CG on ``(C + λI) p = −g`` from ``cg_decay_x0 ×`` the previous final iterate,
   optionally preconditioned by the damped empirical-Fisher diagonal.
3. λ adapted by the Levenberg-Marquardt rule with ρ measured on B̄.
4. CG backtracking on B̄ over the kept iterates.
5. An Armijo line search on B̄; no acceptable step size → the step is
   rejected, θ is left unchanged and λ is raised.

Every decision is returned as a :class:`StepRecord`; the optimizer never prints.
Non-finite values never reach the parameters: such a step is rejected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hfft.optim import distributed
from hfft.optim.cg import conjugate_gradient
from hfft.optim.curvature import (
    BACKENDS,
    CURVATURES,
    LinearizationCache,
    batch_loss,
    linearize_curvature,
    split_batch,
)
from hfft.optim.damping import INCREASE, adapt_damping, reduction_ratio
from hfft.optim.flat import ModelState, flatten
from hfft.optim.linesearch import armijo, backtrack
from hfft.optim.output_hessians import Loss, loss_reduction
from hfft.optim.preconditioner import (
    PRECONDITIONERS,
    empirical_fisher_diagonal,
    preconditioner_from_diagonal,
)
from hfft.optim.step_context import Timer, fp32_precision, step_mode
from hfft.optim.step_record import StepRecord

__all__ = ["MODEL_MODES", "HessianFree", "StepRecord"]

MODEL_MODES = ("eval", "train", "keep")
Batch = tuple[Tensor, Tensor]


class HessianFree(torch.optim.Optimizer):
    """Hessian-free (truncated-Newton) optimizer with GGN or Hessian curvature.

    Unlike first-order optimizers, :meth:`step` needs the model, the loss and
    the data, because it evaluates curvature products and losses itself::

        opt = HessianFree(model.parameters(), weight_decay=5e-4)
        record = opt.step(model, nn.CrossEntropyLoss(), batch=(x, y), eval_batch=(xb, yb))

    Args:
        params: Parameters or parameter groups; only ``weight_decay`` may
            differ between groups (e.g. a group of biases without L2).
        curvature: ``"ggn"`` (generalised Gauss-Newton, PSD; default) or
            ``"hessian"``.
        damping: Initial Tikhonov damping λ.
        adapt_damping: Levenberg-Marquardt adaptation of λ.
        cg_max_iter: Most CG iterations per step.
        cg_tol: CG stops when ``‖r‖ ≤ cg_tol · ‖g‖``.
        martens_criterion: Martens' relative-progress stopping rule for CG.
        cg_decay_x0: CG starts from this factor times the previous final
            iterate (0 disables the warm start).
        use_cg_backtracking: Choose among the kept CG iterates on B̄.
        lr: Initial step size α of the line search (the step size if the line
            search is off).
        use_linesearch: Armijo line search on B̄.
        weight_decay: L2 coefficient ``wd`` of the objective term
            ``(wd/2)‖θ‖²``, per group.
        preconditioner: ``None`` or ``"empirical-fisher"``.
        chunk_size: Split B and B̄ into chunks of this many samples; sums are
            exact for mean- and sum-reduced losses.
        backend: ``"func"`` (linearise once per step) or ``"backpack"``
            (BackPACK R-op products, for comparison).
        model_mode: Mode of the model during the step: ``"eval"`` (default:
            dropout off, BatchNorm uses running statistics, so every product
            sees the same quadratic), ``"train"`` or ``"keep"``.
        cache_chunks: Keep every chunk's linearisation between products
            (memory of the whole batch) instead of recomputing it.
        preconditioner_exponent: Exponent ξ of Martens' preconditioner.
        linesearch_beta: Shrink factor of the line search.
        linesearch_c: Armijo constant.
        linesearch_max_tries: Most step sizes tried.
        tf32: Let CUDA convolutions and matrix products in the step use TF32
            (faster on Ampere and later GPUs, relative error about 1e-3 per
            product). Off: CG needs products that are one symmetric linear
            map to float32 precision (see :func:`hfft.optim.step_context.fp32_precision`).

    Attributes:
        profile: Set to ``True`` to synchronise the GPU around every
            curvature product so that ``StepRecord.time_products`` is exact
            there (one extra synchronisation per product; for benchmarks).
            On a CPU products are always timed exactly.

    Raises:
        ValueError: For invalid hyperparameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        curvature: str = "ggn",
        damping: float = 1.0,
        adapt_damping: bool = True,
        cg_max_iter: int = 250,
        cg_tol: float = 1e-6,
        martens_criterion: bool = True,
        cg_decay_x0: float = 0.95,
        use_cg_backtracking: bool = True,
        lr: float = 1.0,
        use_linesearch: bool = True,
        weight_decay: float = 0.0,
        preconditioner: str | None = None,
        chunk_size: int | None = None,
        *,
        backend: str = "func",
        model_mode: str = "eval",
        cache_chunks: bool = False,
        preconditioner_exponent: float = 0.75,
        linesearch_beta: float = 0.8,
        linesearch_c: float = 0.01,
        linesearch_max_tries: int = 20,
        tf32: bool = False,
    ) -> None:
        _check(curvature in CURVATURES, f"curvature must be one of {CURVATURES}, got {curvature!r}")
        _check(backend in BACKENDS, f"backend must be one of {BACKENDS}, got {backend!r}")
        _check(model_mode in MODEL_MODES, f"model_mode must be one of {MODEL_MODES}")
        _check(
            preconditioner is None or preconditioner in PRECONDITIONERS,
            f"preconditioner must be None or one of {PRECONDITIONERS}, got {preconditioner!r}",
        )
        _check(damping > 0, f"damping must be positive, got {damping}")
        _check(cg_max_iter >= 1, f"cg_max_iter must be >= 1, got {cg_max_iter}")
        _check(cg_tol >= 0, f"cg_tol must be >= 0, got {cg_tol}")
        _check(0 <= cg_decay_x0 <= 1, f"cg_decay_x0 must be in [0, 1], got {cg_decay_x0}")
        _check(lr > 0, f"lr must be positive, got {lr}")
        _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
        _check(
            chunk_size is None or chunk_size >= 1,
            f"chunk_size must be a positive integer, got {chunk_size}",
        )
        defaults = dict(
            curvature=curvature,
            damping=damping,
            adapt_damping=adapt_damping,
            cg_max_iter=cg_max_iter,
            cg_tol=cg_tol,
            martens_criterion=martens_criterion,
            cg_decay_x0=cg_decay_x0,
            use_cg_backtracking=use_cg_backtracking,
            lr=lr,
            use_linesearch=use_linesearch,
            weight_decay=weight_decay,
            preconditioner=preconditioner,
            chunk_size=chunk_size,
            backend=backend,
            model_mode=model_mode,
            cache_chunks=cache_chunks,
            preconditioner_exponent=preconditioner_exponent,
            linesearch_beta=linesearch_beta,
            linesearch_c=linesearch_c,
            linesearch_max_tries=linesearch_max_tries,
            tf32=tf32,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check(group["weight_decay"] >= 0, "weight_decay must be >= 0 in every group")
        self._lin_cache = LinearizationCache()
        self.profile = False

    # -- state ---------------------------------------------------------------

    @property
    def damping(self) -> float:
        """The current damping λ."""
        return float(self._global().get("damping", self.defaults["damping"]))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state; the global HF state is copied, not shared with the source."""
        super().load_state_dict(state_dict)
        if "hf" in self.state:
            self.state["hf"] = dict(self.state["hf"])  # type: ignore[index]

    def prepare(self, model: nn.Module, inputs: Tensor) -> float:
        """Trace the model's linearisation for batches shaped like ``inputs`` now.

        The ``"func"`` GGN back-end traces the network once per input shape
        (like a compilation, about one gradient's cost); :meth:`step` does it
        on first use otherwise. Calling this first keeps that one-time cost out
        of timed steps. Chunk shapes implied by ``chunk_size`` are traced too.

        Returns:
            Seconds spent tracing.
        """
        hp = self.defaults
        if hp["backend"] != "func" or hp["curvature"] != "ggn":
            return 0.0
        start = time.perf_counter()
        params = self._params()
        state = ModelState(model, params)
        with step_mode(model, hp["model_mode"]):
            n, size = inputs.shape[0], hp["chunk_size"] or inputs.shape[0]
            for m in sorted({min(size, n), n % size} - {0}):
                self._lin_cache.get(model, state, [p.detach() for p in params], inputs[:m])
        return time.perf_counter() - start

    @property
    def product_path(self) -> str:
        """How curvature products are computed, in words (for logs and ``selftest``).

        The traced linearisation of the default back-end, ``torch.func.jvp``
        per product where the model could not be traced (with the reason),
        BackPACK's R-op, or reverse-over-reverse for the Hessian.
        """
        hp = self.defaults
        if hp["backend"] == "backpack":
            return f"BackPACK R-op ({hp['curvature']})"
        if hp["curvature"] == "hessian":
            return "reverse-over-reverse Hessian products"
        reason = self._lin_cache.fallback_reason
        if reason is not None:
            return f"torch.func.jvp per product (the model could not be traced: {reason})"
        return "traced linearisation (one forward pass per step, a tangent pass per product)"

    def _global(self) -> dict[str, Any]:
        return self.state["hf"]  # type: ignore[index]

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _wd_vector(self, params: Sequence[Tensor]) -> Tensor:
        parts = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    parts.append(
                        torch.full(
                            (p.numel(),), group["weight_decay"], dtype=p.dtype, device=p.device
                        )
                    )
        return torch.cat(parts)

    @torch.no_grad()
    def objective(self, model: nn.Module, loss_fn: Loss, batch: Batch) -> float:
        """The objective on ``batch`` at the current parameters, as :meth:`step` measures B̄.

        The loss (chunked like the step, in the step's model mode) plus the L2
        term ``Σ (wd/2)‖θ‖²``: at the same parameters and batch it equals a
        step's ``loss_before``, so callers can compare other updates with HF's
        on the same scale.
        """
        hp = self.defaults
        params = self._params()
        theta = flatten(params)
        reduce, totals = distributed.shard_sizes([batch[0].shape[0]], theta.device)
        total = totals[0] if totals is not None else None
        reduction = loss_reduction(loss_fn)
        chunks = split_batch(batch[0], batch[1], hp["chunk_size"], reduction, total)
        wd = self._wd_vector(params)
        with step_mode(model, hp["model_mode"]):
            loss = distributed.sum_float(batch_loss(model, loss_fn, chunks), reduce, theta.device)
        return loss + 0.5 * float(torch.dot(wd * theta, theta))

    # -- the step ------------------------------------------------------------

    def step(  # type: ignore[override]
        self,
        model: nn.Module,
        loss_fn: Loss,
        batch: Batch,
        eval_batch: Batch | None = None,
    ) -> StepRecord:
        """Take one Hessian-free step.

        Args:
            model: The network whose parameters this optimizer holds.
            loss_fn: ``loss_fn(outputs, targets)``, mean- or sum-reduced.
            batch: ``(inputs, targets)`` of B (gradient and curvature).
            eval_batch: ``(inputs, targets)`` of B̄ (damping, backtracking,
                line search); defaults to ``batch``.

        Returns:
            The :class:`StepRecord` of this step.

        The parameters are only ever left at θ or at the accepted θ + αp: on
        any exception inside the step (also ``KeyboardInterrupt``), the
        trial points written for the B̄ evaluations are undone and θ is put
        back before the exception propagates.
        """
        params = self._params()
        with torch.no_grad():
            theta = flatten(params)
        try:
            with (
                step_mode(model, self.defaults["model_mode"]),
                fp32_precision(self.defaults["tf32"]),
            ):
                return self._step(
                    model,
                    loss_fn,
                    batch,
                    eval_batch if eval_batch is not None else batch,
                    params,
                    theta,
                )
        except BaseException:
            self._write(params, theta)
            raise

    def _step(
        self,
        model: nn.Module,
        loss_fn: Loss,
        batch: Batch,
        eval_batch: Batch,
        params: list[Tensor],
        theta: Tensor,
    ) -> StepRecord:
        hp = self.defaults
        g_state = self._global()
        step_no = int(g_state.get("step", 0)) + 1
        g_state["step"] = step_no
        lam = float(g_state.get("damping", hp["damping"]))
        reduction = loss_reduction(loss_fn)
        timer = Timer(params[0].device)
        wd = self._wd_vector(params)

        def l2(flat: Tensor) -> float:
            return 0.5 * float(torch.dot(wd * flat, flat))

        # data-parallel: batch and eval_batch are this rank's shards of the global ones
        reduce, totals = distributed.shard_sizes(
            [batch[0].shape[0], eval_batch[0].shape[0]], theta.device
        )
        n_b, n_bar = totals if totals is not None else (None, None)

        # 1. gradient and curvature on B
        op = linearize_curvature(
            model,
            loss_fn,
            batch[0],
            batch[1],
            params,
            curvature=hp["curvature"],
            backend=hp["backend"],
            chunk_size=hp["chunk_size"],
            cache_chunks=hp["cache_chunks"],
            lin_cache=self._lin_cache,
            total=n_b,
            reduce=reduce,
        )
        op.synchronize = self.profile
        grad = op.grad + wd * theta
        batch_f = op.loss + l2(theta)
        grad_norm = float(torch.linalg.vector_norm(grad))
        t_grad = timer.lap()

        # objective on B̄ at θ + d
        eval_chunks = split_batch(eval_batch[0], eval_batch[1], hp["chunk_size"], reduction, n_bar)
        evals = 0

        def f_at(d: Tensor | None) -> float:
            nonlocal evals
            evals += 1
            flat = theta if d is None else theta + d
            self._write(params, flat)
            return distributed.sum_float(
                batch_loss(model, loss_fn, eval_chunks), reduce, flat.device
            ) + l2(flat)

        f0 = f_at(None)
        t_eval = timer.lap()

        def finish(**kw: Any) -> StepRecord:
            base: dict[str, Any] = dict(
                step=step_no,
                accepted=False,
                reject_reason=None,
                loss_before=f0,
                loss_after=f0,
                batch_loss=batch_f,
                grad_norm=grad_norm,
                damping=lam,
                next_damping=lam,
                rho=math.nan,
                cg_iterations=0,
                cg_stop_reason="not run",
                cg_chosen_iterate=0,
                cg_q=math.nan,
                alpha=0.0,
                linesearch_tries=0,
                products=op.num_products,
                eval_batch_evaluations=evals,
                time_gradient=t_grad,
                time_preconditioner=0.0,
                time_cg=0.0,
                time_products=op.product_seconds,
                time_eval=t_eval,
                time_backtracking=0.0,
                time_linesearch=0.0,
                time_total=timer.total(),
            )
            base.update(kw)
            g_state["damping"] = base["next_damping"]
            return StepRecord(**base)

        if not (math.isfinite(grad_norm) and math.isfinite(f0) and math.isfinite(batch_f)):
            self._write(params, theta)
            return finish(reject_reason="non-finite loss or gradient", next_damping=lam * INCREASE)

        # 2. CG on (C + (wd + λ) I) p = −g
        shift = wd + lam

        def damped(v: Tensor) -> Tensor:
            return op.matvec(v) + shift * v

        precondition = None
        if hp["preconditioner"] == "empirical-fisher":
            op.release()  # one chunk's values at a time during the Fisher pass too
            diag = empirical_fisher_diagonal(
                model, loss_fn, op.chunks, params, reduction, total=n_b
            )
            if reduce is not None:
                diag = reduce(diag)
            precondition = preconditioner_from_diagonal(diag, shift, hp["preconditioner_exponent"])
        t_pre = timer.lap()
        x0 = None
        prev = [self.state[p].get("cg_x") for p in params]
        if hp["cg_decay_x0"] > 0 and all(t is not None for t in prev):
            x0 = hp["cg_decay_x0"] * flatten(t for t in prev if t is not None)
        res = conjugate_gradient(
            damped,
            -grad,
            x0,
            max_iter=hp["cg_max_iter"],
            tol=hp["cg_tol"],
            martens_criterion=hp["martens_criterion"],
            precondition=precondition,
        )
        op.release()  # the B̄ evaluations that follow need no chunk kept linearised
        t_cg = timer.lap()
        if torch.isfinite(res.x).all():
            for p, chunk in zip(
                params, torch.split(res.x, [p.numel() for p in params]), strict=True
            ):
                self.state[p]["cg_x"] = chunk.view_as(p).clone()
        q_last = res.q_values[-1]
        cg_info = dict(cg_iterations=res.iterations, cg_stop_reason=res.stop_reason, cg_q=q_last)

        # 3. damping from ρ of the last iterate (its B̄ loss is backtracking's start)
        p_last = res.iterates[-1][1]
        f_last = f_at(p_last)
        t_eval += timer.lap()
        rho = reduction_ratio(f_last, f0, q_last)
        next_lam = adapt_damping(lam, rho) if hp["adapt_damping"] else lam

        # 4. CG backtracking
        if hp["use_cg_backtracking"]:
            chosen_i, p, f_p, _ = backtrack(res.iterates, f_at, last_loss=f_last)
        else:
            chosen_i, p, f_p = res.iterates[-1][0], p_last, f_last
        t_bt = timer.lap()

        # 5. line search
        slope = float(torch.dot(grad, p))
        if hp["use_linesearch"]:
            ls = armijo(
                lambda a: f_at(a * p),
                f0,
                slope,
                alpha0=hp["lr"],
                beta=hp["linesearch_beta"],
                c=hp["linesearch_c"],
                max_tries=hp["linesearch_max_tries"],
                known={1.0: f_p},
            )
            alpha, f_new, tries = ls.alpha, ls.loss, ls.tries
        else:
            alpha = hp["lr"]
            f_new = f_p if alpha == 1.0 else f_at(alpha * p)
            tries = 1
            if not math.isfinite(f_new):
                alpha = None
        t_ls = timer.lap()
        t_eval += t_bt + t_ls
        times = dict(
            time_preconditioner=t_pre,
            time_cg=t_cg,
            time_eval=t_eval,
            time_backtracking=t_bt,
            time_linesearch=t_ls,
        )

        if alpha is None:
            self._write(params, theta)
            reason = (
                "no step size passed the line search" if hp["use_linesearch"] else "non-finite loss"
            )
            return finish(
                reject_reason=reason,
                next_damping=max(next_lam, lam * INCREASE),
                rho=rho,
                cg_chosen_iterate=chosen_i,
                linesearch_tries=tries,
                **times,
                **cg_info,
            )
        self._write(params, theta + alpha * p)
        return finish(
            accepted=True,
            loss_after=f_new,
            next_damping=next_lam,
            rho=rho,
            cg_chosen_iterate=chosen_i,
            alpha=alpha,
            linesearch_tries=tries,
            **times,
            **cg_info,
        )

    @staticmethod
    @torch.no_grad()
    def _write(params: Sequence[Tensor], flat: Tensor) -> None:
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
