"""How selftest measures a model: the pieces behind :func:`hfft.diagnostics.selftest.model_checks`.

One :func:`measure` per model mode collects every number (two forward
passes, gradients and GGN products through two linearisations, a split
batch, non-finite counts, the modules that make a pass random);
:mod:`hfft.diagnostics.verdicts` then turns those numbers into :class:`Check` results
whose detail names the cause and the fix.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hfft.optim.batches import leaves, take
from hfft.optim.curvature import LinearizationCache, linearize_curvature
from hfft.optim.flat import flatten
from hfft.optim.optimizer import MODEL_MODES
from hfft.optim.output_hessians import Loss
from hfft.optim.step_context import step_mode

PASS, WARN, FAIL = "pass", "warn", "fail"
STATUSES = (PASS, WARN, FAIL)
MODES = MODEL_MODES
"""The model modes of an HF step (:data:`hfft.optim.optimizer.MODEL_MODES`)."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: What was checked, e.g. ``"GGN symmetry [eval]"``.
        status: ``"pass"``, ``"warn"`` (allowed, but read the detail) or ``"fail"``.
        measured: The measured discrepancy (relative unless the detail says
            otherwise), ``None`` where nothing could be measured.
        tolerance: The largest discrepancy that passes, ``None`` if none applies.
        detail: One sentence; for a failure or warning it names the cause and
            the fix.
    """

    name: str
    status: str
    measured: float | None
    tolerance: float | None
    detail: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a non-finite measurement becomes its string, e.g. ``"inf"``)."""
        out = asdict(self)
        for key in ("measured", "tolerance"):
            value = out[key]
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
        return out


def rel_diff(a: Tensor, b: Tensor) -> float:
    """``max|a − b| / max(|a|, |b|)``; ``inf`` where one is finite and the other not.

    Entries that are the same non-finite value in both count as equal, so that
    a determinism check does not fail on NaNs that :func:`nonfinite` reports.
    """
    a, b = a.detach().reshape(-1).double(), b.detach().reshape(-1).to(a.device).double()
    finite = torch.isfinite(a) & torch.isfinite(b)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    if not bool((finite | same).all()):
        return math.inf
    if not bool(finite.any()):
        return 0.0
    a, b = a[finite], b[finite]
    diff, scale = torch.stack([(a - b).abs().max(), torch.maximum(a.abs().max(), b.abs().max())])
    return float(diff / scale) if float(scale) > 0 else float(diff)


def nonfinite(*tensors: Tensor) -> int:
    """Number of NaN or infinite entries."""
    return int(sum(int((~torch.isfinite(t.detach())).sum()) for t in tensors))


def roundoff_tol(dtype: torch.dtype) -> float:
    """``√ε`` of a floating dtype: differences above it are not round-off."""
    return math.sqrt(torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps)


def determinism_status(measured: float, tol: float) -> str:
    """Bitwise equal → pass; round-off level (≤ tol) → warn; more → fail."""
    if measured == 0.0:
        return PASS
    return WARN if measured <= tol else FAIL


def random_vectors(n: int, dim: int, like: Tensor, seed: int = 0) -> list[Tensor]:
    """``n`` seeded normal vectors of length ``dim`` like ``like``; the global RNG is untouched."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(dim, generator=gen, dtype=torch.float64).to(like.device, like.dtype)
        for _ in range(n)
    ]


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore the model's train/eval flags, buffers and the global RNG state afterwards.

    Checks run forward passes in training mode (which update BatchNorm's
    running statistics) and draw random numbers (dropout); the caller's model
    and random stream come back unchanged.
    """
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({b.device.index or 0 for b in _tensors_of(model) if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            for m, training in flags:
                m.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _tensors_of(model: nn.Module) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from model.buffers()


# -- what breaks determinism ------------------------------------------------------------


def active_dropout(model: nn.Module) -> list[str]:
    """Names of dropout modules that drop something (``p > 0``) in the model's current mode."""
    return [
        name or "(model)"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]


def training_batchnorm(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules that normalise with batch statistics in the current mode."""
    return [
        name or "(model)"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
    ]


def _fingerprint(obj: Any) -> Tensor:
    """Two float64 sums per tensor in a (nested) structure: equal tensors, equal fingerprints."""
    if isinstance(obj, Tensor):
        t = obj.detach().double()
        return torch.stack([t.sum(), t.square().sum()]).nan_to_num(1.0, 2.0, 3.0).cpu()
    parts: list[Any] = []
    if isinstance(obj, dict):
        parts = list(obj.values())
    elif isinstance(obj, (tuple, list)):
        parts = list(obj)
    found = [_fingerprint(p) for p in parts]
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.float64)


def _fingerprint_pass(model: nn.Module, x: Tensor) -> list[tuple[str, Tensor, Tensor]]:
    """``(module name, input fingerprint, output fingerprint)`` in completion order, one pass."""
    records: list[tuple[str, Tensor, Tensor]] = []
    inputs: dict[str, list[Tensor]] = {}

    def pre(name: str) -> Callable[..., None]:
        return lambda mod, args: inputs.setdefault(name, []).append(_fingerprint(args))

    def post(name: str) -> Callable[..., None]:
        return lambda mod, args, out: records.append((name, inputs[name].pop(), _fingerprint(out)))

    handles = []
    for name, module in model.named_modules():
        handles += [
            module.register_forward_pre_hook(pre(name)),
            module.register_forward_hook(post(name)),
        ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return records


def random_module(model: nn.Module, x: Tensor) -> tuple[str, nn.Module] | None:
    """The innermost module whose output differs between two passes although its input did not.

    Hooks fingerprint every module's inputs and outputs in two forward
    passes; forward hooks fire children first, so the first module (in
    completion order) with equal inputs and unequal outputs is where the
    randomness enters. ``None`` if no module is to blame (or control flow
    differs between the passes).
    """
    first, second = _fingerprint_pass(model, x), _fingerprint_pass(model, x)
    if len(first) != len(second):
        return None
    for (name, in1, out1), (name2, in2, out2) in zip(first, second, strict=True):
        if name != name2:
            return None
        if torch.equal(in1, in2) and not torch.equal(out1, out2):
            return name, model.get_submodule(name)
    return None


# -- measurements in one mode -------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one mode measured; discrepancies are relative, NaN where not measured."""

    mode: str
    tol: float
    forward: float
    culprit: str | None
    independence: float | None
    part: int
    nonfinite: dict[str, int]
    dropout: list[str]
    batchnorm: list[str]
    cuda: bool
    products: float = math.nan
    symmetry: float = math.nan
    negative_curvature: float = math.nan
    fallback: str | None = None
    error: str | None = None


def split_size(n: int, chunk_size: int | None) -> int:
    """Samples in the first chunk of a split into at least two (uneven when possible)."""
    if chunk_size is not None and chunk_size < n:
        return chunk_size
    return (n + 1) // 2


def _cosine(v: Tensor, gv: Tensor) -> float:
    scale = float(torch.linalg.vector_norm(v) * torch.linalg.vector_norm(gv))
    return float(torch.dot(v, gv)) / scale if scale > 0 else 0.0


def measure_products(
    model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor, chunk_size: int | None, wd: float
) -> dict[str, Any]:
    """Gradient/GGN-product determinism, symmetry and PSD; the error if products fail."""
    params = [p for p in model.parameters() if p.requires_grad]
    cache = LinearizationCache()
    try:
        ops = [
            linearize_curvature(
                model, loss_fn, x, y, params, chunk_size=chunk_size, lin_cache=cache
            )
            for _ in range(2)
        ]
        v, w, u = random_vectors(3, ops[0].grad.numel(), ops[0].grad)
        gv, gw, gu = ops[0].matvec(v), ops[0].matvec(w), ops[0].matvec(u)
        # the same v through the same linearisation, and through a new one
        again, fresh = ops[0].matvec(v), ops[1].matvec(v)
    except RuntimeError as err:
        return {"error": str(err).split(". ")[0].split("\n")[0]}
    losses = torch.tensor([op.loss for op in ops], dtype=torch.float64)
    products = max(
        rel_diff(losses[:1], losses[1:]),
        rel_diff(ops[0].grad, ops[1].grad),
        rel_diff(gv, again),
        rel_diff(gv, fresh),
    )
    norms = [float(torch.linalg.vector_norm(t)) for t in (v, gw, w, gv)]
    gap = abs(float(torch.dot(v, gw)) - float(torch.dot(w, gv)))
    scale = max(norms[0] * norms[1], norms[2] * norms[3])
    theta = flatten(params)
    return {
        "products": products,
        "symmetry": gap / scale if scale > 0 else gap,
        "negative_curvature": max(
            0.0, -min(_cosine(a, ga) for a, ga in ((v, gv), (w, gw), (u, gu)))
        ),
        "fallback": cache.fallback_reason,
        "nonfinite": {
            "gradient": nonfinite(ops[0].grad + wd * theta),
            "GGN products": nonfinite(gv, gw, gu),
        },
    }


def measure(
    model: nn.Module,
    loss_fn: Loss,
    x: Tensor,
    y: Tensor,
    training: bool | None,
    chunk_size: int | None,
    weight_decay: float,
) -> Run:
    """Everything one mode's checks judge, with the model in HF's step mode.

    The mode is entered as :meth:`hfft.HessianFree.step` does (see
    :func:`hfft.optim.step_context.step_mode`): BatchNorm in training mode normalises
    with batch statistics without updating its running averages.
    """
    mode = "keep" if training is None else ("train" if training else "eval")
    with step_mode(model, mode):
        return _measure(model, loss_fn, x, y, chunk_size, weight_decay)


def _measure(
    model: nn.Module,
    loss_fn: Loss,
    x: Tensor,
    y: Tensor,
    chunk_size: int | None,
    weight_decay: float,
) -> Run:
    with torch.no_grad():
        try:
            z = model(x)
        except RuntimeError as err:
            raise ValueError(f"the model's forward pass fails on the batch: {err}") from None
        z2 = model(x)
        loss, loss2 = loss_fn(z, y), loss_fn(z2, y)
        n = y.shape[0]
        part = split_size(n, chunk_size)
        independence = rel_diff(model(take(x, slice(0, part))), z[:part]) if n > 1 else None
    forward = max(rel_diff(z, z2), rel_diff(loss, loss2))
    culprit = None
    if forward > 0:
        found = random_module(model, x)
        if found is not None:
            culprit = f"'{found[0] or '(model)'}' ({type(found[1]).__name__})"
    curvature = measure_products(model, loss_fn, x, y, chunk_size, weight_decay)
    weights = flatten(model.parameters())
    counts = {
        "inputs": nonfinite(*(t for t in leaves(x) if t.is_floating_point())),
        "weights": nonfinite(weights),
        "outputs": nonfinite(z),
        "loss": nonfinite(loss),
        **curvature.pop("nonfinite", {}),
    }
    return Run(
        mode="train" if model.training else "eval",
        tol=roundoff_tol(z.dtype if z.is_floating_point() else weights.dtype),
        forward=forward,
        culprit=culprit,
        independence=independence,
        part=part,
        nonfinite=counts,
        dropout=active_dropout(model),
        batchnorm=training_batchnorm(model),
        cuda=y.device.type == "cuda",
        **curvature,
    )
