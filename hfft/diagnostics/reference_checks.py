"""Built-in correctness checks: hfft's products, CG and chunking on tiny float64 problems.

Every reference is built independently of :mod:`hfft.optim.curvature`, with dense
``torch.func`` Jacobians and Hessians, so a pass proves the installation
computes the right numbers on this device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hfft.diagnostics.dense import dense, dense_ggn, dense_hessian
from hfft.diagnostics.measure import (
    FAIL,
    PASS,
    WARN,
    Check,
    determinism_status,
    random_vectors,
    rel_diff,
)
from hfft.optim.cg import conjugate_gradient
from hfft.optim.curvature import CurvatureOperator, LinearizationCache, linearize_curvature
from hfft.optim.output_hessians import Loss

__all__ = ["builtin_checks", "dense", "dense_ggn", "dense_hessian"]

#: Relative tolerance of float64 comparisons with dense references.
DENSE_TOL = 1e-10
#: Relative tolerance of float64 CPU/CUDA agreement (different kernels, same maths).
DEVICE_TOL = 1e-9
#: Relative distance of CG's solution from ``torch.linalg.solve``'s.
CG_TOL = 1e-8


# -- built-in problems ----------------------------------------------------------------------


class _Problems:
    """The tiny seeded float64 problems of one device, each built (and traced) once.

    Models: ``mlp`` (4 → 5 → 3, tanh) and ``cnn`` (3×3 conv, tanh, max-pool,
    dense); losses ``ce``, ``mse`` and their ``-sum`` variants; 7 samples.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.cache = LinearizationCache()
        self._models: dict[str, nn.Module] = {}
        self._data: dict[tuple[str, str], tuple[Loss, Tensor, Tensor]] = {}

    def get(self, kind: str, loss: str) -> tuple[nn.Module, Loss, Tensor, Tensor]:
        """``(model, loss_fn, x, y)``."""
        if kind not in self._models:
            model: nn.Module = (
                nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
                if kind == "mlp"
                else nn.Sequential(
                    nn.Conv2d(1, 2, 3, padding=1),
                    nn.Tanh(),
                    nn.MaxPool2d(2),
                    nn.Flatten(),
                    nn.Linear(8, 3),
                )
            )
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():  # seeded weights; the global RNG is not touched
                for p in model.double().parameters():
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            self._models[kind] = model.to(self.device)
        if (kind, loss) not in self._data:
            gen = torch.Generator().manual_seed(0)
            shape = (7, 4) if kind == "mlp" else (7, 1, 4, 4)
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
            reduction = "sum" if loss.endswith("-sum") else "mean"
            loss_fn: Loss
            if loss.startswith("ce"):
                loss_fn = nn.CrossEntropyLoss(reduction=reduction)
                y = torch.randint(0, 3, (7,), generator=gen)
            else:
                loss_fn = nn.MSELoss(reduction=reduction)
                y = torch.randn(7, 3, generator=gen, dtype=torch.float64)
            self._data[kind, loss] = (loss_fn, x.to(self.device), y.to(self.device))
        return (self._models[kind], *self._data[kind, loss])

    def op(self, kind: str, loss: str, **kwargs: Any) -> CurvatureOperator:
        """:func:`linearize_curvature` of a problem, sharing traced linearisations."""
        model, loss_fn, x, y = self.get(kind, loss)
        return linearize_curvature(model, loss_fn, x, y, lin_cache=self.cache, **kwargs)


def _dense_check(name: str, measured: float, what: str) -> Check:
    ok = measured <= DENSE_TOL
    detail = (
        f"= dense torch.func {what}"
        if ok
        else f"products differ from the dense torch.func {what}: this installation computes "
        "wrong curvature; report it with the output of `hfft selftest --json`"
    )
    return Check(name, PASS if ok else FAIL, measured, DENSE_TOL, detail)


def _ggn_vs_dense(problems: _Problems, kind: str, loss: str) -> Check:
    op = problems.op(kind, loss)
    measured = rel_diff(dense(op.matvec, op.grad), dense_ggn(*problems.get(kind, loss)))
    return _dense_check(f"GGN {kind}/{loss} [{problems.device}]", measured, "JᵀHJ")


def _hessian_vs_dense(problems: _Problems, kind: str) -> Check:
    op = problems.op(kind, "ce", curvature="hessian")
    measured = rel_diff(dense(op.matvec, op.grad), dense_hessian(*problems.get(kind, "ce")))
    return _dense_check(f"Hessian {kind}/ce [{problems.device}]", measured, "∇²L")


def _backends_agree(problems: _Problems) -> Check:
    measured = 0.0
    for curvature, kind in (("ggn", "cnn"), ("hessian", "mlp")):
        func, backpack = (
            problems.op(kind, "ce", curvature=curvature, backend=b) for b in ("func", "backpack")
        )
        for v in random_vectors(2, func.grad.numel(), func.grad):
            measured = max(measured, rel_diff(func.matvec(v), backpack.matvec(v)))
    ok = measured <= DENSE_TOL
    detail = (
        "GGN and Hessian products of both back-ends agree"
        if ok
        else "torch.func and BackPACK products disagree: one back-end is broken in this "
        "installation; compare with `hfft bench` and report it"
    )
    name = f"func vs BackPACK [{problems.device}]"
    return Check(name, PASS if ok else FAIL, measured, DENSE_TOL, detail)


def _cg_solves_spd(device: str, n: int = 12) -> Check:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    # well conditioned (κ = 10), so that float64 rounding keeps CG's exact-arithmetic finish
    a = (q * torch.logspace(0, 1, n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    a, b = a.to(device), b.to(device)
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=n, tol=1e-10, martens_criterion=False)
    measured = rel_diff(res.x, torch.linalg.solve(a, b))
    ok = measured <= CG_TOL and res.stop_reason == "residual"
    detail = f"solved in {res.iterations} ≤ {n} iterations"
    if not ok:
        detail = (
            f"CG stopped ({res.stop_reason}) after {res.iterations} iterations {measured:.1e} "
            f"away from the solution of a {n}×{n} SPD system it must solve in ≤ {n}: hfft.optim.cg "
            "is broken in this installation; report it"
        )
    return Check(f"CG, SPD {n}×{n} [{device}]", PASS if ok else FAIL, measured, CG_TOL, detail)


def _chunks_equal_full(problems: _Problems, reduction: str) -> Check:
    kind, loss = ("cnn", "ce") if reduction == "mean" else ("mlp", "mse-sum")
    full = problems.op(kind, loss)
    (v,) = random_vectors(1, full.grad.numel(), full.grad)
    measured = 0.0
    for cache_chunks in (False, True):
        chunked = problems.op(kind, loss, chunk_size=3, cache_chunks=cache_chunks)
        measured = max(
            measured,
            abs(chunked.loss - full.loss) / abs(full.loss),
            rel_diff(chunked.grad, full.grad),
            rel_diff(chunked.matvec(v), full.matvec(v)),
        )
    ok = measured <= DENSE_TOL
    detail = (
        "chunks of 3+3+1 add up to the batch's loss, gradient and GGN product"
        if ok
        else f"chunked accumulation ({loss}) differs from the full batch: chunk weights are "
        "wrong in this installation; avoid chunk_size and report it"
    )
    name = f"chunks, {loss.split('-')[0]} {reduction} [{problems.device}]"
    return Check(name, PASS if ok else FAIL, measured, DENSE_TOL, detail)


def _deterministic(problems: _Problems) -> Check:
    model, _, x, _ = problems.get("cnn", "ce")
    with torch.no_grad():
        measured = rel_diff(model(x), model(x))
    ops = [problems.op("cnn", "ce") for _ in range(2)]
    (v,) = random_vectors(1, ops[0].grad.numel(), ops[0].grad)
    first = ops[0].matvec(v)
    for again in (ops[0].matvec(v), ops[1].matvec(v)):
        measured = max(measured, rel_diff(first, again))
    status = determinism_status(measured, DENSE_TOL)
    detail = {
        PASS: "forward passes and products repeat bitwise",
        WARN: "repeated products differ at round-off level (non-deterministic kernels); "
        "call torch.use_deterministic_algorithms(True) for bitwise reproducibility",
        FAIL: "repeated forward passes or products differ on a deterministic network: "
        "this installation's kernels are unreliable; report it",
    }[status]
    return Check(f"determinism [{problems.device}]", status, measured, DENSE_TOL, detail)


def _cpu_agrees(problems: _Problems) -> Check:
    results = []
    for source in (_Problems("cpu"), problems):
        op = source.op("cnn", "ce")
        (v,) = random_vectors(1, op.grad.numel(), op.grad)
        results.append((torch.tensor([op.loss], dtype=torch.float64), op.grad, op.matvec(v)))
    measured = max(rel_diff(a.cpu(), b.cpu()) for a, b in zip(*results, strict=True))
    ok = measured <= DEVICE_TOL
    device = problems.device
    detail = (
        "loss, gradient and product equal the CPU's"
        if ok
        else f"{device} and the CPU disagree beyond round-off in float64: the CUDA build of "
        "torch or the driver is faulty; reinstall torch for your CUDA version"
    )
    return Check(f"CPU vs {device}", PASS if ok else FAIL, measured, DEVICE_TOL, detail)


def builtin_checks(device: str = "cpu") -> list[Check]:
    """Correctness checks of the curvature machinery on tiny float64 problems.

    GGN products (MLP and CNN, cross-entropy and MSE) and Hessian products
    against dense ``torch.func`` matrices, torch.func against BackPACK, CG on
    an SPD system (solved in at most n iterations), chunked accumulation
    against the full batch for mean and sum reductions, bitwise determinism of
    forward passes and products, and on a CUDA device agreement with the CPU.
    The caller's random state is left unchanged.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The checks, in a fixed order.
    """
    with torch.random.fork_rng(devices=[]):  # module constructors draw initial weights
        problems = _Problems(device)
        checks = [
            _ggn_vs_dense(problems, k, loss) for k in ("mlp", "cnn") for loss in ("ce", "mse")
        ]
        checks += [_hessian_vs_dense(problems, kind) for kind in ("mlp", "cnn")]
        checks += [
            _backends_agree(problems),
            _cg_solves_spd(device),
            _chunks_equal_full(problems, "mean"),
            _chunks_equal_full(problems, "sum"),
            _deterministic(problems),
        ]
        if device != "cpu":
            checks.append(_cpu_agrees(problems))
    return checks
