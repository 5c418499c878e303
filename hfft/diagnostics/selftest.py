"""``hfft selftest``: are curvature products right, is this model safe for them, what do they cost?

:func:`builtin_checks` proves that an installation computes the right
numbers: on tiny float64 networks (an MLP and a small CNN, softmax
cross-entropy and MSE) every curvature product is compared with a dense
matrix built independently by ``torch.func``, the two back-ends with each
other, CG with the solution of an SPD system, chunked accumulation with the
full batch, repeated products with each other and, on CUDA, the GPU with the
CPU.

CG assumes one quadratic model per HF step, so the network must be a
deterministic function of (θ, batch) in the mode HF runs it in; otherwise
every product sees a different quadratic and CG fails silently. HF's policy
is evaluation mode (``HessianFree(model_mode="eval")``): dropout off,
BatchNorm with its running statistics. :func:`model_checks` measures, in that
mode, on the user's model and batch:

* forward determinism (outputs and loss of two passes),
* gradient and GGN-product determinism (the same vector twice through one
  linearisation, and through a second one),
* GGN symmetry ``vᵀG w = wᵀG v`` and positive semi-definiteness ``vᵀG v ≥ 0``
  on random directions,
* batch independence (a sample's output does not depend on the rest of the
  batch, which exact chunked accumulation needs),
* reduction consistency (the batch loss is the mean- or sum-weighted total of
  the chunk losses, as :func:`hfft.optim.output_hessians.loss_reduction` says),
* finite outputs, loss, gradient and products, and whether the traced
  linearisation is used,

and repeats the determinism checks in training mode to explain the
difference: a failure there that eval mode does not have is only a warning,
with the module to blame (dropout, BatchNorm, a layer that draws random
numbers) and the fix. Discrepancies are relative; the tolerance is ``√ε`` of
the model's dtype (3.5e-4 for float32): bitwise equality passes, differences
below it are round-off from non-deterministic kernels (a warning), anything
above fails.

:func:`measure_cost` times a forward pass, a gradient, an HF step's setup and
a GGN product, and estimates an HF step as ``setup + 50 products + 5 forward
passes`` (50: a typical CG iteration count under Martens' stopping rule at
the default budget of 250; 5: the B̄ evaluations of damping, backtracking and
line search) and an SGD step as one gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hfft.diagnostics.instruments import median_time
from hfft.diagnostics.measure import (
    FAIL,
    MODES,
    PASS,
    WARN,
    Check,
    measure,
    preserved,
    random_vectors,
    split_size,
)
from hfft.diagnostics.progress_check import progress_check
from hfft.diagnostics.reference_checks import builtin_checks
from hfft.diagnostics.verdicts import (
    finite_check,
    forward_check,
    independence_check,
    linearisation_check,
    mode_flag,
    only_in_training,
    product_check,
    psd_check,
    reduction_check,
    symmetry_check,
)
from hfft.experiment.run.budget import parse_budget, resolve_budget
from hfft.optim.batches import map_tensors, take
from hfft.optim.curvature import LinearizationCache, linearize_curvature
from hfft.optim.output_hessians import Loss, loss_reduction
from hfft.optim.step_context import step_mode

if TYPE_CHECKING:
    from hfft.experiment.run.starting_point import StartingPoint

__all__ = [
    "DEFAULT_CG_ITERATIONS",
    "MODES",
    "Check",
    "Cost",
    "Report",
    "builtin_checks",
    "measure_cost",
    "model_checks",
    "selftest_builtin",
    "selftest_checkpoint",
    "selftest_devices",
    "selftest_model",
]

#: CG iterations assumed per HF step in the cost estimate.
DEFAULT_CG_ITERATIONS = 50
#: Forward passes on B̄ assumed per HF step (ρ, backtracking, line search).
EVAL_FORWARDS = 5


@dataclass(frozen=True)
class Cost:
    """Measured costs on the checked batch and what fits in a budget.

    Attributes:
        batch_size: Samples in the batch that was timed.
        forward_s: One forward pass (no gradient), median seconds.
        gradient_s: One forward and backward pass.
        setup_s: An HF step's setup: loss, gradient and linearisation.
        product_s: One GGN-vector product.
        peak_memory_bytes: CUDA peak memory of setup and products; ``None`` on the CPU.
        cg_iterations: CG iterations assumed per HF step.
        hf_step_s: Estimated HF step: ``setup + cg_iterations · product +
            5 · forward``.
        sgd_step_s: Estimated SGD step: one gradient.
        budget_s: The budget in seconds, if one was given.
        hf_steps_in_budget: ``⌊budget / hf_step⌋``.
        sgd_steps_in_budget: ``⌊budget / sgd_step⌋``.
    """

    batch_size: int
    forward_s: float
    gradient_s: float
    setup_s: float
    product_s: float
    peak_memory_bytes: int | None
    cg_iterations: int
    hf_step_s: float
    sgd_step_s: float
    budget_s: float | None = None
    hf_steps_in_budget: int | None = None
    sgd_steps_in_budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Report:
    """All checks of one selftest, the cost line, and what was tested.

    Attributes:
        checks: The checks in order.
        cost: The cost line (model checks only).
        subject: What was tested (checkpoint, model, data, devices, …).
    """

    checks: list[Check]
    cost: Cost | None = None
    subject: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No check failed (warnings allowed)."""
        return all(c.status != FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        """Checks per status."""
        return {s: sum(c.status == s for c in self.checks) for s in (PASS, WARN, FAIL)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "passed": self.passed,
            "counts": self.counts(),
            "subject": self.subject,
            "checks": [c.to_dict() for c in self.checks],
            "cost": self.cost.to_dict() if self.cost is not None else None,
        }


def selftest_devices() -> list[str]:
    """``["cpu"]``, plus ``"cuda"`` when a CUDA device is available."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def selftest_builtin(devices: Sequence[str] | None = None) -> Report:
    """:func:`builtin_checks` on every device (default: :func:`selftest_devices`)."""
    devices = list(devices) if devices is not None else selftest_devices()
    checks = [c for d in devices for c in builtin_checks(d)]
    return Report(checks, None, {"kind": "builtin", "devices": devices, "torch": torch.__version__})


# -- a user's model ----------------------------------------------------------------------


def model_checks(
    model: nn.Module,
    loss_fn: Loss,
    x: Tensor,
    y: Tensor,
    *,
    mode: str = "eval",
    chunk_size: int | None = None,
    weight_decay: float = 0.0,
) -> list[Check]:
    """Determinism and correctness checks of curvature products on a user's model and batch.

    Runs in ``mode``, the mode HF will use (``HessianFree(model_mode=...)``),
    and, when that is evaluation mode, repeats the determinism checks in
    training mode to explain the difference (see the module docstring). The
    model's train/eval flags, buffers (BatchNorm statistics) and parameters
    and the global random state are left as they were.

    Args:
        model: The network.
        loss_fn: ``loss_fn(outputs, targets)``, mean- or sum-reduced.
        x: Batch inputs (at least two samples for the chunk checks).
        y: Batch targets.
        mode: ``"eval"`` (HF's default), ``"train"`` or ``"keep"`` (as the model is).
        chunk_size: The ``chunk_size`` HF will use, if any.
        weight_decay: L2 coefficient of the objective (its gradient is checked too).

    Returns:
        The checks, HF's mode first.

    Raises:
        ValueError: For an unknown mode, a loss that does not reduce to a
            scalar, or a model whose forward pass fails on the batch.
    """
    training = mode_flag(mode)
    loss_reduction(loss_fn)  # fail early on reduction="none"
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    with preserved(model):
        hf = measure(model, loss_fn, x, y, training, chunk_size, weight_decay)
        reduction = reduction_check(model, loss_fn, x, y, split_size(y.shape[0], chunk_size))
        determinism = [forward_check(hf), product_check(hf), independence_check(hf, chunk_size)]
        checks = determinism[:2]
        if hf.error is None:  # products that fail cannot be judged further
            checks += [symmetry_check(hf), psd_check(hf)]
        checks += [determinism[2], reduction, finite_check(hf)]
        if hf.error is None:
            checks.append(linearisation_check(hf))
        if hf.mode == "eval":
            tr = measure(model, loss_fn, x, y, True, chunk_size, weight_decay)
            explained = [
                forward_check(tr),
                product_check(tr),
                independence_check(tr, chunk_size),
            ]
            checks += [only_in_training(c, h) for c, h in zip(explained, determinism, strict=True)]
    return checks


def measure_cost(
    model: nn.Module,
    loss_fn: Loss,
    x: Tensor,
    y: Tensor,
    *,
    mode: str = "eval",
    chunk_size: int | None = None,
    budget_seconds: float | None = None,
    cg_iterations: int = DEFAULT_CG_ITERATIONS,
    repeats: int = 3,
) -> Cost:
    """Time forward, gradient, HF setup and GGN product; estimate steps within a budget.

    An HF step is estimated as ``setup + cg_iterations · product + 5 ·
    forward`` (the B̄ evaluations, assumed on a batch of the same size), an
    SGD step as one gradient at this batch size. Each time is the median of
    ``repeats`` runs after a warm-up (which also traces the linearisation).

    Args:
        model: The network.
        loss_fn: The loss.
        x: Batch inputs.
        y: Batch targets.
        mode: As in :func:`model_checks`.
        chunk_size: HF's chunk size, if any.
        budget_seconds: Seconds to fill with steps, if any.
        cg_iterations: CG iterations assumed per HF step.
        repeats: Timed runs per operation.

    Returns:
        The :class:`Cost`.
    """
    mode_flag(mode)  # validates the mode
    if budget_seconds is not None and not (budget_seconds > 0 and math.isfinite(budget_seconds)):
        raise ValueError(f"the budget must be positive and finite, got {budget_seconds} s")
    times, peak = _time_operations(model, loss_fn, x, y, mode, chunk_size, repeats)
    hf_step_s = times["setup"] + cg_iterations * times["product"] + EVAL_FORWARDS * times["forward"]

    def fits(step_s: float) -> int | None:
        return None if budget_seconds is None else int(budget_seconds // max(step_s, 1e-12))

    return Cost(
        batch_size=int(y.shape[0]),
        forward_s=times["forward"],
        gradient_s=times["gradient"],
        setup_s=times["setup"],
        product_s=times["product"],
        peak_memory_bytes=peak,
        cg_iterations=cg_iterations,
        hf_step_s=hf_step_s,
        sgd_step_s=times["gradient"],
        budget_s=budget_seconds,
        hf_steps_in_budget=fits(hf_step_s),
        sgd_steps_in_budget=fits(times["gradient"]),
    )


def _time_operations(
    model: nn.Module,
    loss_fn: Loss,
    x: Tensor,
    y: Tensor,
    mode: str,
    chunk_size: int | None,
    repeats: int,
) -> tuple[dict[str, float], int | None]:
    """Median seconds of a forward pass, a gradient, an HF setup and a product; peak memory."""
    cuda = y.device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    cache = LinearizationCache()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def gradient() -> None:
        torch.autograd.grad(loss_fn(model(x), y), params)

    def setup() -> Any:
        return linearize_curvature(
            model, loss_fn, x, y, params, chunk_size=chunk_size, lin_cache=cache
        )

    with preserved(model), step_mode(model, mode):
        times = {
            name: median_time(fn, cuda, repeats)
            for name, fn in (("forward", forward), ("gradient", gradient), ("setup", setup))
        }
        if cuda:
            torch.cuda.reset_peak_memory_stats(y.device)
        op = setup()
        (v,) = random_vectors(1, op.grad.numel(), op.grad)
        times["product"] = median_time(lambda: op.matvec(v), cuda, repeats)
        peak = int(torch.cuda.max_memory_allocated(y.device)) if cuda else None
    return times, peak


def selftest_model(
    model: nn.Module,
    loss_fn: Loss,
    x: Tensor,
    y: Tensor,
    *,
    mode: str = "eval",
    chunk_size: int | None = None,
    budget_seconds: float | None = None,
    weight_decay: float = 0.0,
    subject: dict[str, Any] | None = None,
) -> Report:
    """:func:`model_checks` and :func:`measure_cost` as one :class:`Report`.

    The cost is left out (``None``) when curvature products fail in ``mode``;
    the checks say why.
    """
    checks = model_checks(
        model, loss_fn, x, y, mode=mode, chunk_size=chunk_size, weight_decay=weight_decay
    )
    products_fail = any(
        c.name.startswith("product determinism") and c.status == FAIL and c.measured is None
        for c in checks
    )
    cost = None
    if not products_fail:
        cost = measure_cost(
            model, loss_fn, x, y, mode=mode, chunk_size=chunk_size, budget_seconds=budget_seconds
        )
    return Report(checks, cost, dict(subject or {}))


def _time_budget(
    budget: str | None, train_seconds: float | None, unknown_because: str | None = None
) -> float | None:
    """Seconds of a time budget (``10%`` of the training time, ``600s``, ``1h``).

    ``None`` means ``10%`` when the training time is known, else no budget.

    Raises:
        ValueError: For a step or epoch budget, an unparsable one, or a
            percentage without a known training time.
    """

    if budget is None:
        if train_seconds is None:
            return None
        budget = "10%"
    resolved = resolve_budget(parse_budget(budget), train_seconds, unknown_because)
    if resolved.kind != "seconds":
        raise ValueError(
            f"the cost line fills a time budget with steps; give --budget as a percentage of "
            f"the training time (10%) or a duration (600s), not {resolved}"
        )
    return resolved.value


def selftest_checkpoint(
    source: StartingPoint,
    *,
    batch_size: int = 128,
    device: str | None = None,
    budget: str | None = None,
    mode: str = "eval",
    chunk_size: int | None = None,
) -> Report:
    """Check a loaded checkpoint on a seeded batch of its training data.

    The batch is ``batch_size`` training samples (fewer if the split is
    smaller) drawn without augmentation; the loss is cross-entropy, as in
    fine-tuning; the objective's L2 is the source's weight decay.

    Args:
        source: The checkpoint with its model and data (:meth:`StartingPointOptions.load`).
        batch_size: Samples in the checked batch.
        device: Move model and batch there (default: where the source is).
        budget: Time budget for the cost line: ``10%`` of the training time
            (the default when it is known), or a duration such as ``600s``.
        mode: HF's model mode.
        chunk_size: HF's chunk size, if any.

    Raises:
        ValueError: For a bad budget, mode or batch size, or a model that
            fails on the data.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size}")
    seconds = _time_budget(budget, source.train_seconds, source.train_time_problem)
    splits = source.splits
    n = splits.num_train
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(n, generator=gen)[: min(batch_size, n)].to(splits.train_y.device)
    dev = torch.device(device) if device is not None else splits.train_y.device
    model = source.model.to(dev)
    x = map_tensors(lambda t: t.to(dev), take(splits.train_x, idx))
    y = splits.train_y[idx].to(dev)
    subject = {
        "kind": "checkpoint",
        "checkpoint": str(source.path),
        "model": source.model_name,
        "data": source.data_name,
        "batch_size": int(y.shape[0]),
        "task": source.task.describe(),
        "device": str(dev),
        "mode": mode,
        "chunk_size": chunk_size,
        "weight_decay": source.weight_decay,
        "train_seconds": source.train_seconds,
    }
    report = selftest_model(
        model,
        source.task.loss(),
        x,
        y,
        mode=mode,
        chunk_size=chunk_size,
        budget_seconds=seconds,
        weight_decay=source.weight_decay,
        subject=subject,
    )
    if report.passed and mode == "eval":  # HF's own mode; products that fail decide nothing
        check = progress_check(model, source.task, splits, source.weight_decay, chunk_size)
        report.checks.append(check)
    return report
