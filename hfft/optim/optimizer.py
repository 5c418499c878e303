"""The Hessian-free optimizer (Martens 2010; Tatzel, Hennig & Schneider, Algorithm 1).

One :meth:`HessianFree.step` on a batch B and a disjoint batch B̄:

1. ``g = ∇f_B(θ)`` and the curvature ``C`` (GGN or Hessian) of ``f_B`` at θ,
   where ``f = L + Σ_groups (wd/2)‖θ_group‖²`` is the objective *with* its L2
   term: ``g`` gets ``wd·θ`` and the curvature ``wd·I`` on each group.
2. CG on ``(C + λI) p = −g`` from ``cg_decay_x0 ×`` the previous final iterate,
   optionally preconditioned by the damped empirical-Fisher diagonal or K-FAC.
3. λ adapted by the Levenberg-Marquardt rule with ρ measured on B̄ (or, with
   ``damping_rule="trust-region"``, λ fixed and CG kept inside a radius that ρ
   adapts).
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
from hfft.optim.batches import Batchable, batch_size
from hfft.optim.cg import CGResult
from hfft.optim.curvature import (
    BACKENDS,
    CURVATURES,
    LinearizationCache,
    batch_loss,
    split_batch,
)
from hfft.optim.damping import MAX_DAMPING_FACTOR, raise_damping
from hfft.optim.flat import flatten, weight_decay_vector
from hfft.optim.hf_step import Choice, HFStep, curvature_size, write_flat
from hfft.optim.output_hessians import Loss, loss_normaliser
from hfft.optim.preconditioner import (
    PRECONDITIONERS,
)
from hfft.optim.step_context import fp32_precision, step_mode
from hfft.optim.step_record import StepRecord

__all__ = ["DAMPING_RULES", "MODEL_MODES", "RHO_BATCHES", "HessianFree", "StepRecord"]

MODEL_MODES = ("eval", "train", "keep")
DAMPING_RULES = ("lm", "trust-region")
RHO_BATCHES = ("eval", "curvature")
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
        max_damping: The largest λ (default ``1e4 × damping``): the LM rule
            stops growing λ there (see :mod:`hfft.optim.damping`).
        curvature_fraction: The share of B on which CG's curvature products are
            taken (its first part; B is a random draw); the gradient is on all
            of B (Byrd, Chin, Neveitt & Nocedal 2011). 1: all of B.
        damping_rule: ``"lm"`` (Levenberg-Marquardt on λ, Martens 2010) or
            ``"trust-region"``: λ stays at ``damping``, CG stops on the boundary
            of ``‖p‖ ≤ Δ`` (Steihaug 1983), and Δ — from the first step's
            length — is adapted by ρ (Nocedal & Wright 2006, Algorithm 4.1).
        rho_batch: Where ρ is measured: ``"eval"`` (B̄, the paper's choice) or
            ``"curvature"`` (B, the batch the quadratic model was built on: the
            question the Levenberg-Marquardt rule asks; one more evaluation of B).
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
        preconditioner: ``None``, ``"empirical-fisher"`` or ``"kfac"`` (K-FAC's
            damped inverse on the curvature batch, Martens & Grosse 2015; one
            process only).
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
        max_damping: float | None = None,
        curvature_fraction: float = 1.0,
        damping_rule: str = "lm",
        rho_batch: str = "eval",
    ) -> None:
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
            max_damping=MAX_DAMPING_FACTOR * damping if max_damping is None else max_damping,
            curvature_fraction=curvature_fraction,
            damping_rule=damping_rule,
            rho_batch=rho_batch,
        )
        _check_defaults(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_group(group, defaults)
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

    def prepare(self, model: nn.Module, inputs: Batchable) -> float:
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
        whole = batch_size(inputs)
        sizes = {whole, curvature_size(hp["curvature_fraction"], whole)}  # B, and S
        with step_mode(model, hp["model_mode"]):
            self._lin_cache.trace(model, self._params(), inputs, sizes, hp["chunk_size"])
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
        if self._lin_cache.no_forward_ad is not None:
            return (
                "reverse-over-reverse products (no forward-mode derivative: "
                f"{self._lin_cache.no_forward_ad})"
            )
        if reason is not None:
            return f"torch.func.jvp per product (the model could not be traced: {reason})"
        return "traced linearisation (one forward pass per step, a tangent pass per product)"

    def _global(self) -> dict[str, Any]:
        return self.state["hf"]  # type: ignore[index]

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

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
        reduce, totals = distributed.shard_sizes([loss_normaliser(loss_fn, batch[1])], theta.device)
        total = totals[0] if totals is not None else None
        chunks = split_batch(batch[0], batch[1], hp["chunk_size"], loss_fn, total)
        wd = weight_decay_vector(self.param_groups)
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
            write_flat(params, theta)
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
        """The phases of :mod:`hfft.optim.hf_step`, with this optimizer's state."""
        hp, g_state = self.defaults, self._global()
        step_no = g_state["step"] = int(g_state.get("step", 0)) + 1
        targets = (batch[1], eval_batch[1])
        damping = float(g_state.get("damping", hp["damping"]))
        radius = g_state.get("radius")
        wd = weight_decay_vector(self.param_groups)
        hf = HFStep(model, loss_fn, params, theta, wd, hp, damping, targets, radius)
        # 1. gradient and curvature on B, the objective on B̄ at θ
        op, grad, batch_f = hf.linearize(batch, eval_batch, self._lin_cache, self.profile)
        grad_norm = float(torch.linalg.vector_norm(grad))
        measured = dict(batch_loss=batch_f, grad_norm=grad_norm)
        if not (math.isfinite(grad_norm) and math.isfinite(hf.f0) and math.isfinite(batch_f)):
            write_flat(params, theta)
            record = hf.record(
                op,
                step_no,
                reject_reason="non-finite loss or gradient",
                next_damping=self._grown(damping),
                **measured,
            )
            return self._done(record, _shrunk(radius))
        # 2. CG from the decayed previous solution
        result = hf.solve(op, grad, self._warm_start(params))
        self._keep_warm_start(params, result.x)
        cg = dict(
            cg_iterations=result.iterations,
            cg_stop_reason=result.stop_reason,
            cg_q=result.q_values[-1],
        )
        # 3. ρ and damping, backtracking, line search
        choice = hf.choose(result, grad)
        decided = dict(
            rho=choice.rho,
            next_damping=choice.next_damping,
            cg_chosen_iterate=choice.chosen_iterate,
            linesearch_tries=choice.tries,
            **measured,
            **cg,
        )
        new = None if choice.alpha is None else theta + choice.alpha * choice.p
        reason = _not_taken(hp, result, choice, hf.f0, theta, new)
        if reason is not None:  # a rejected step: λ grows (the region shrinks), whatever ρ said
            write_flat(params, theta)
            decided["next_damping"] = max(choice.next_damping, self._grown(damping))
            record = hf.record(op, step_no, reject_reason=reason, **decided)
            return self._done(record, _shrunk(radius, result))
        assert new is not None
        write_flat(params, new)
        accepted = dict(accepted=True, loss_after=choice.loss_after, alpha=choice.alpha)
        return self._done(hf.record(op, step_no, **accepted, **decided), choice.next_radius)

    def _grown(self, damping: float) -> float:
        """λ after a rejected step: grown by the LM rule's factor, or kept under a trust
        region (whose radius shrinks instead)."""
        if self.defaults["damping_rule"] == "trust-region":
            return damping
        return raise_damping(damping, self.defaults["max_damping"])

    def _done(self, record: StepRecord, radius: float | None = None) -> StepRecord:
        self._global()["damping"] = record.next_damping
        if self.defaults["damping_rule"] == "trust-region":
            self._global()["radius"] = radius
        return record

    def _warm_start(self, params: Sequence[Tensor]) -> Tensor | None:
        """``cg_decay_x0`` × the previous step's final CG iterate (``None``: start at 0)."""
        prev = [self.state[p].get("cg_x") for p in params]
        if self.defaults["cg_decay_x0"] <= 0 or any(t is None for t in prev):
            return None
        return self.defaults["cg_decay_x0"] * flatten(t for t in prev if t is not None)

    def _keep_warm_start(self, params: Sequence[Tensor], x: Tensor) -> None:
        if torch.isfinite(x).all():
            for p, chunk in zip(params, torch.split(x, [p.numel() for p in params]), strict=True):
                self.state[p]["cg_x"] = chunk.view_as(p).clone()


def _shrunk(radius: float | None, result: CGResult | None = None) -> float | None:
    """The trust region after a rejected step: a quarter of it, or of the length of CG's
    last iterate on the first (unconstrained) step, whatever ρ said; ``None`` where there
    is none (no region yet and no CG run, or a length of 0 or not finite)."""
    if radius is None and result is not None:
        radius = float(torch.linalg.vector_norm(result.iterates[-1][1]))
    if radius is None or not (math.isfinite(radius) and radius > 0):
        return None
    return radius / 4


def _not_taken(
    hp: dict[str, Any],
    result: CGResult,
    choice: Choice,
    f0: float,
    theta: Tensor,
    new: Tensor | None,
) -> str | None:
    """Why the step from ``theta`` to ``new`` (``θ + αp``; ``None`` without a step size)
    is not taken, or ``None``: a step is taken only when CG
    stayed finite, a step size passed, the weights changed (a step of 1e-12
    relative length vanishes in float32) and, with the line search on, the loss
    on B̄ went down (Armijo's test passes a step that leaves it equal in float32).
    Without the line search the step is taken as it is, as the user asked."""
    if result.stop_reason == "non-finite":
        return "CG produced non-finite values"
    if new is None:
        return "no step size passed the line search" if hp["use_linesearch"] else "non-finite loss"
    if hp["use_linesearch"] and not choice.loss_after < f0:
        return "the step did not lower the loss on B̄"
    if torch.equal(new, theta):
        return "the step was too small to change the weights"
    return None


def _check_defaults(hp: dict[str, Any]) -> None:
    _check(
        hp["curvature"] in CURVATURES,
        f"curvature must be one of {CURVATURES}, got {hp['curvature']!r}",
    )
    _check(hp["backend"] in BACKENDS, f"backend must be one of {BACKENDS}, got {hp['backend']!r}")
    _check(hp["model_mode"] in MODEL_MODES, f"model_mode must be one of {MODEL_MODES}")
    pre = hp["preconditioner"]
    _check(
        pre is None or pre in PRECONDITIONERS,
        f"preconditioner must be None or one of {PRECONDITIONERS}, got {pre!r}",
    )
    _check(hp["damping"] > 0, f"damping must be positive, got {hp['damping']}")
    _check(
        hp["max_damping"] >= hp["damping"],
        f"max_damping must be at least damping ({hp['damping']}), got {hp['max_damping']}",
    )
    _check(hp["cg_max_iter"] >= 1, f"cg_max_iter must be >= 1, got {hp['cg_max_iter']}")
    _check(hp["cg_tol"] >= 0, f"cg_tol must be >= 0, got {hp['cg_tol']}")
    _check(0 <= hp["cg_decay_x0"] <= 1, f"cg_decay_x0 must be in [0, 1], got {hp['cg_decay_x0']}")
    _check(hp["lr"] > 0, f"lr must be positive, got {hp['lr']}")
    _check(hp["weight_decay"] >= 0, f"weight_decay must be >= 0, got {hp['weight_decay']}")
    _check(
        0 < hp["curvature_fraction"] <= 1,
        f"curvature_fraction must be in (0, 1], got {hp['curvature_fraction']}",
    )
    _check(hp["damping_rule"] in DAMPING_RULES, f"damping_rule must be one of {DAMPING_RULES}")
    _check(hp["rho_batch"] in RHO_BATCHES, f"rho_batch must be one of {RHO_BATCHES}")
    chunk = hp["chunk_size"]
    _check(chunk is None or chunk >= 1, f"chunk_size must be a positive integer, got {chunk}")


def _check_group(group: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Only weight_decay may differ between groups (every other option is the step's)."""
    _check(group["weight_decay"] >= 0, "weight_decay must be >= 0 in every group")
    per_group = [
        k for k, v in group.items() if k not in ("params", "weight_decay") and v != defaults[k]
    ]
    if per_group:
        raise ValueError(
            f"HessianFree takes only weight_decay per parameter group; {per_group[0]!r} "
            "applies to the whole step: pass it to HessianFree(...) itself"
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
