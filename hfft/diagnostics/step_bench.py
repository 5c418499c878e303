"""A whole HF step with a fixed number of CG iterations, per back-end, broken down.

Every back-end takes its step from the same parameters on the same batch,
with CG run for exactly ``cg_iterations`` iterations (Martens' criterion and
the residual test off), so the steps compute the same iterates up to the
rounding of their products; the benchmark reports how far apart the
resulting parameters are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hfft.diagnostics.instruments import peak_memory
from hfft.optim.flat import flatten
from hfft.optim.optimizer import HessianFree
from hfft.optim.output_hessians import Loss

__all__ = ["BREAKDOWN", "bench_hf_step"]

BREAKDOWN = {
    "gradient": "forward, gradient and linearisation on B",
    "preconditioner": "preconditioner",
    "products": "curvature products",
    "cg_algebra": "CG vector algebra",
    "rho": "B̄ losses at θ and at the last iterate (ρ)",
    "backtracking": "CG backtracking on B̄",
    "linesearch": "line search on B̄",
    "other": "everything else",
}
"""Parts of a step in the breakdown, with their labels."""


def _breakdown(record: Any) -> dict[str, float]:
    rho = record.time_eval - record.time_backtracking - record.time_linesearch
    parts = {
        "gradient": record.time_gradient,
        "preconditioner": record.time_preconditioner,
        "products": record.time_products,
        "cg_algebra": record.time_cg - record.time_products,
        "rho": rho,
        "backtracking": record.time_backtracking,
        "linesearch": record.time_linesearch,
    }
    parts["other"] = max(0.0, record.time_total - sum(parts.values()))
    return parts


def _stepper(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Loss,
    backend: str,
    cg_iterations: int,
) -> Callable[[], tuple[Any, Tensor]]:
    """One step on a copy of ``model``, ready to run: returns the record and the
    new flat parameters. Copying and tracing happen here, outside the step."""

    net = copy.deepcopy(model)
    opt = HessianFree(
        net.parameters(),
        weight_decay=5e-4,
        cg_max_iter=cg_iterations,
        cg_tol=0.0,
        martens_criterion=False,
        backend=backend,
    )
    opt.profile = True
    if backend == "func":
        opt.prepare(net, x)  # tracing happens once per shape, before any clock

    def run() -> tuple[Any, Tensor]:
        record = opt.step(net, loss_fn, batch=(x, y), eval_batch=(x, y))
        with torch.no_grad():
            theta = flatten(net.parameters())
        return record, theta

    return run


def bench_hf_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Loss,
    *,
    cg_iterations: int = 50,
    backends: tuple[str, ...] = ("func", "backpack"),
    measure_memory: bool = True,
) -> dict[str, Any]:
    """Time one HF step of each back-end and compare their results.

    Returns:
        A JSON-ready dict: ``cg_iterations``; ``seconds`` (back-end → total);
        ``breakdown`` (back-end → part → seconds, see :data:`BREAKDOWN`);
        ``records`` (back-end → the step's record); ``max_abs_difference``
        and ``relative_difference`` of the parameters after the step between
        the first back-end and each other one, relative to the step's length;
        ``peak_bytes`` (back-end → peak memory of a step; on the CPU measured
        on a 3-iteration step to save time: the peak comes from one product
        and the kept iterates, not from the number of iterations).
    """

    with torch.no_grad():
        theta0 = flatten(model.parameters())
    out: dict[str, Any] = {
        "cg_iterations": cg_iterations,
        "seconds": {},
        "breakdown": {},
        "records": {},
        "max_abs_difference": {},
        "relative_difference": {},
        "peak_bytes": {},
    }
    thetas = {}
    for backend in backends:
        record, theta = _stepper(model, x, y, loss_fn, backend, cg_iterations)()
        thetas[backend] = theta
        out["seconds"][backend] = record.time_total
        out["breakdown"][backend] = _breakdown(record)
        out["records"][backend] = record.to_dict()
    first = backends[0]
    length = float(torch.linalg.vector_norm(thetas[first] - theta0))
    for backend in backends[1:]:
        diff = thetas[backend] - thetas[first]
        out["max_abs_difference"][backend] = float(diff.abs().max())
        out["relative_difference"][backend] = float(torch.linalg.vector_norm(diff)) / max(
            length, 1e-30
        )
    if measure_memory:
        iters = cg_iterations if x.device.type == "cuda" else min(cg_iterations, 3)
        for backend in backends:
            out["peak_bytes"][backend] = peak_memory(
                _stepper(model, x, y, loss_fn, backend, iters), x.device
            )
    return out
