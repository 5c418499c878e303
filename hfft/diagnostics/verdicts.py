"""How selftest judges a model: one function per property turns the numbers of
:func:`hfft.diagnostics.measure.measure` into a :class:`hfft.diagnostics.measure.Check` whose detail
names the cause and the fix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hfft._text import short_list
from hfft.diagnostics.measure import (
    FAIL,
    MODES,
    PASS,
    WARN,
    Check,
    Run,
    determinism_status,
    roundoff_tol,
)
from hfft.optim.batches import batch_size
from hfft.optim.curvature import split_batch
from hfft.optim.output_hessians import Loss, loss_reduction

KEEP_EVAL = "HF uses eval mode by default (model_mode='eval'); keep it"


def _kernel_hint(run: Run) -> str:
    if run.cuda:
        return (
            "set torch.backends.cudnn.deterministic = True, torch.backends.cudnn.benchmark = "
            "False and torch.use_deterministic_algorithms(True)"
        )
    return "call torch.use_deterministic_algorithms(True)"


def _quoted(names: list[str]) -> str:
    return short_list(names, 3, quoted=True)


def _random_cause(run: Run) -> str:
    """Why the forward pass of this run is not deterministic, with the fix."""
    if run.forward <= run.tol:
        where = f" in {run.culprit}" if run.culprit else ""
        return f"round-off differences (non-deterministic kernels{where}): {_kernel_hint(run)}"
    if run.dropout and (run.culprit is None or "Dropout" in run.culprit):
        return f"dropout is active in training mode ({_quoted(run.dropout)}): {KEEP_EVAL}"
    if run.culprit is not None:
        return (
            f"module {run.culprit} draws random numbers in {run.mode} mode: make it "
            "deterministic when not training (`if self.training:` around the noise)"
        )
    return f"the forward pass is random in {run.mode} mode: make it deterministic"


def forward_check(run: Run) -> Check:
    status = determinism_status(run.forward, run.tol)
    detail = "outputs and loss repeat bitwise" if status == PASS else _random_cause(run)
    return Check(f"forward determinism [{run.mode}]", status, run.forward, run.tol, detail)


def product_check(run: Run) -> Check:
    name = f"product determinism [{run.mode}]"
    if run.error is not None:
        detail = (
            f"GGN products fail: BatchNorm {_quoted(run.batchnorm)} updates its running "
            f"statistics inside them; {KEEP_EVAL}"
            if run.batchnorm
            else f"GGN products fail ({run.error}): make the model work under torch.func "
            "transforms (no in-place updates of buffers)"
        )
        return Check(name, FAIL, None, run.tol, detail)
    status = determinism_status(run.products, run.tol)
    if status == PASS:
        detail = "gradient and GGN products repeat bitwise, also after relinearising"
    elif run.forward > 0:
        detail = "follows from the forward pass (see forward determinism)"
    elif status == WARN:
        detail = f"round-off differences (non-deterministic backward kernels): {_kernel_hint(run)}"
    else:
        detail = (
            "products differ although the forward pass repeats, so the backward pass is "
            "random (a custom autograd.Function?): make it deterministic"
        )
    return Check(name, status, run.products, run.tol, detail)


def _ggn_check(run: Run, name: str, measured: float, passed: str, cause: str) -> Check:
    """A GGN property: failing follows from unrepeatable products, or else from ``cause``."""
    ok = measured <= run.tol
    detail = passed
    if not ok:
        detail = (
            "follows from products that do not repeat (see product determinism)"
            if run.products > run.tol
            else cause
        )
    return Check(f"{name} [{run.mode}]", PASS if ok else FAIL, measured, run.tol, detail)


# (detail when it passes, cause when it fails and the products do repeat)
_SYMMETRY = (
    "vᵀGw = wᵀGv for random v, w",
    "forward- and reverse-mode derivatives of the network disagree (a custom "
    "autograd.Function with a wrong backward or jvp?): fix that derivative",
)
_PSD = (
    "vᵀGv ≥ 0 on 3 random directions",
    "vᵀGv < 0: the loss is not convex in the network outputs; use "
    "cross-entropy or MSE, whose GGN is positive semi-definite",
)


def symmetry_check(run: Run) -> Check:
    return _ggn_check(run, "GGN symmetry", run.symmetry, *_SYMMETRY)


def psd_check(run: Run) -> Check:
    return _ggn_check(run, "GGN PSD", run.negative_curvature, *_PSD)


def independence_check(run: Run, chunk_size: int | None) -> Check:
    name = f"batch independence [{run.mode}]"
    if run.independence is None:
        return Check(name, WARN, None, run.tol, "a batch of one sample cannot be split")
    if run.independence <= run.tol:
        detail = f"outputs of the first {run.part} samples do not depend on the others"
        return Check(name, PASS, run.independence, run.tol, detail)
    if run.forward > run.tol:
        detail = "inconclusive: the forward pass is random"
        if run.batchnorm:
            detail += f"; BatchNorm {_quoted(run.batchnorm)} uses batch statistics too"
        return Check(name, WARN, run.independence, run.tol, detail)
    if run.batchnorm:
        detail = (
            f"BatchNorm {_quoted(run.batchnorm)} normalises with batch statistics in "
            f"{run.mode} mode, so chunks are not exact: {KEEP_EVAL}"
        )
    else:
        detail = (
            "a sample's output depends on the rest of its batch, so chunks are not exact: "
            "do not use chunk_size, or normalise per sample"
        )
    status = FAIL if chunk_size is not None else WARN
    return Check(name, status, run.independence, run.tol, detail)


def finite_check(run: Run) -> Check:
    bad = {k: v for k, v in run.nonfinite.items() if v}
    name = f"finite values [{run.mode}]"
    if not bad:
        measured = [k for k in run.nonfinite if k not in ("inputs", "weights")]
        return Check(name, PASS, 0.0, 0.0, f"finite {', '.join(measured)}")
    if "inputs" in bad:
        fix = "the data contain NaN or Inf; clean them"
    elif "weights" in bad:
        fix = "the checkpoint holds non-finite weights; use an earlier one"
    else:
        fix = "the model overflows on this batch; use an earlier checkpoint or rescale the data"
    detail = f"non-finite {', '.join(bad)}: {fix}"
    return Check(name, FAIL, float(sum(bad.values())), 0.0, detail)


def linearisation_check(run: Run) -> Check:
    name = f"linearisation [{run.mode}]"
    if run.fallback is None:
        return Check(name, PASS, None, None, "traced once per input shape; every product reuses it")
    why = "the forward pass is random" if run.forward > run.tol else run.fallback
    detail = f"tracing failed ({why}); every product re-runs the forward pass: correct but slower"
    return Check(name, WARN, None, None, detail)


def reduction_check(model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor, chunk: int) -> Check:
    """Chunk losses of one forward pass, weighted as accumulation weighs them, vs the batch loss."""
    reduction = loss_reduction(loss_fn)
    name = "reduction consistency"
    n = batch_size(x)
    if n < 2:
        return Check(name, WARN, None, None, "a batch of one sample cannot be split: use ≥ 2")
    chunks = split_batch(x, y, chunk, loss_fn)
    weighted = as_mean = as_sum = 0.0
    with torch.no_grad():
        z = model(x)  # one pass, sliced: this checks the loss, not the model
        full = float(loss_fn(z, y))
        start = 0
        for c in chunks:
            size = batch_size(c.inputs)
            loss = float(loss_fn(z[start : start + size], c.targets))
            weighted += c.weight * loss
            as_mean += size / n * loss
            as_sum += loss
            start += size
    tol = roundoff_tol(z.dtype)
    scale = max(abs(full), torch.finfo(torch.float64).tiny)
    measured, as_mean, as_sum = (abs(t - full) / scale for t in (weighted, as_mean, as_sum))
    if measured <= tol:
        detail = f"batch loss = {reduction} over {len(chunks)} chunks, as accumulation assumes"
        return Check(name, PASS, measured, tol, detail)
    if reduction == "mean" and as_sum <= tol:
        detail = (
            "the loss sums over the batch but is treated as a mean (a loss without a "
            "`reduction` attribute is taken to average): set loss_fn.reduction = 'sum'"
        )
    elif reduction == "sum" and as_mean <= tol:
        detail = "the loss averages over the batch but says reduction='sum': make it 'mean'"
    else:
        detail = (
            "the batch loss is neither the mean nor the sum of its chunks' losses, so chunked "
            "accumulation cannot be exact: make the loss a per-sample mean or sum"
        )
    return Check(name, FAIL, measured, tol, detail)


def mode_flag(mode: str) -> bool | None:
    """``model.train(flag)`` for HF's model mode; ``None`` for ``"keep"``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return None if mode == "keep" else mode == "train"


def only_in_training(check: Check, hf_check: Check) -> Check:
    """A training-mode failure that HF's eval mode does not have explains; it does not fail."""
    if check.status != FAIL or hf_check.status == FAIL:
        return check
    detail = "eval mode is unaffected; " + check.detail
    return Check(check.name, WARN, check.measured, check.tolerance, detail)
