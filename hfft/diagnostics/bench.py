"""Side-by-side timings of the operations an HF step is made of.

Everything is measured in one process, interleaved round by round (so that
drifts in machine load hit every operation alike), after warm-up; the median
over rounds is reported with its ratio to one gradient (forward + backward of
the batch loss, the unit of cost SGD pays per step). Peak memory and
arithmetic (FLOPs) are measured in separate runs of each operation, because
the instruments slow it down. A whole HF step is measured by
:func:`hfft.diagnostics.step_bench.bench_hf_step`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hfft.diagnostics.instruments import (
    count_flops,
    interleaved_medians,
    peak_memory,
)
from hfft.experiment.data.splits import DataSplits
from hfft.experiment.data.task import Task
from hfft.experiment.strategies.registry import Strategy
from hfft.experiment.strategies.runners import SGDRunner, SGDSettings
from hfft.models import get_problem
from hfft.optim.batches import take
from hfft.optim.cg import conjugate_gradient
from hfft.optim.curvature import LinearizationCache, linearize_curvature
from hfft.optim.output_hessians import Loss

__all__ = ["BenchResult", "bench_model", "shaped_problem"]

# input shape and classes of the data set each registered problem trains on
DATA_SHAPES = {
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "svhn": (3, 32, 10),
    "mnist": (1, 28, 10),
    "fashion-mnist": (1, 28, 10),
    "digits": (1, 8, 10),
}

CG_ITERATIONS = 5
"""CG iterations of the timed CG run; one iteration is reported."""

REVERSE = "reverse-over-reverse"
"""The products of a network whose kernels lack forward mode (LSTMs on oneDNN, …), timed on
every network: what the fallback costs against the traced linearisation."""

LABELS = {
    "forward": "forward",
    "gradient": "gradient (forward + backward)",
    "sgd_step[hfft]": "SGD step, hfft",
    "sgd_step[plain]": "SGD step, plain PyTorch loop",
    "ggn_setup[func]": "HF setup, func (forward, gradient, linearisation)",
    "ggn_product[func]": "GGN-vector product, func",
    "cg_iteration[func]": "CG iteration, func (product + vector algebra)",
    "ggn_setup[backpack]": "HF setup, BackPACK",
    "ggn_product[backpack]": "GGN-vector product, BackPACK R-op",
    "ggn_setup[chunked]": "HF setup, func, 4 chunks",
    "ggn_product[chunked]": "GGN-vector product, func, 4 chunks re-linearised",
    "ggn_setup[one chunk]": "HF setup, func, one chunk (¼ batch) alone",
    "ggn_product[one chunk]": "GGN-vector product, func, one chunk alone",
    f"ggn_setup[{REVERSE}]": "HF setup, the reverse-over-reverse fallback",
    f"ggn_product[{REVERSE}]": "GGN-vector product, reverse-over-reverse fallback",
}
"""Table labels of the measured operations, in display order."""


@dataclass(frozen=True)
class BenchResult:
    """Median seconds, peak memory and FLOPs per operation, with ratios.

    Attributes:
        seconds: Median seconds per operation (keys as in :data:`LABELS`).
        ratios: Seconds over one gradient's, plus named headline ratios.
        flops: FLOPs per operation over one gradient's.
        peak_bytes: Peak memory each operation allocates.
        step: The whole-step benchmark (:func:`hfft.diagnostics.step_bench.bench_hf_step`).
        targets: The performance targets (docs/benchmarks.md), name → (value, bound, met).
    """

    model: str
    batch_size: int
    device: str
    num_params: int
    rounds: int
    seconds: dict[str, float]
    ratios: dict[str, float] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    step: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, tuple[float, str, bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        out = asdict(self)
        out["targets"] = {
            k: {"value": v, "target": b, "met": m} for k, (v, b, m) in self.targets.items()
        }
        return out


def shaped_problem(
    name: str, batch_size: int, device: str = "cpu", seed: int = 0
) -> tuple[nn.Module, Tensor, Tensor]:
    """A registered model in eval mode with a random batch shaped like its data."""

    problem = get_problem(name)
    channels, size, classes = DATA_SHAPES[problem.defaults.dataset]
    torch.manual_seed(seed)
    model = problem.build(num_classes=classes, in_channels=channels, input_size=size)
    model = model.to(device).eval()
    x = torch.randn(batch_size, channels, size, size, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    return model, x, y


def _operations(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Loss, backends: tuple[str, ...]
) -> tuple[dict[str, Callable[[], Any]], int, dict[str, LinearizationCache]]:
    """The measured operations as closures, the number of parameters, the traces."""

    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    v = torch.randn(dim, device=y.device, dtype=params[0].dtype)
    caches = {b: LinearizationCache() for b in (*backends, "chunked", "one chunk")}
    caches[REVERSE] = LinearizationCache(reverse_only=True)
    ops: dict[str, Any] = {}
    quarter = max(1, y.shape[0] // 4)
    head = take(x, slice(0, quarter))
    batches = {"chunked": (x, y, quarter), "one chunk": (head, y[:quarter], None)}

    def setup(backend: str, inputs: Tensor, targets: Tensor, chunk: int | None = None) -> Any:
        def run() -> None:
            ops[backend] = linearize_curvature(
                model,
                loss_fn,
                inputs,
                targets,
                params,
                backend="func" if backend in (*batches, REVERSE) else backend,
                chunk_size=chunk,
                lin_cache=caches[backend],
            )

        return run

    def product(backend: str) -> Callable[[], Any]:
        return lambda: ops[backend].matvec(v)

    def cg_iteration() -> None:
        # CG_ITERATIONS iterations to the end (no stopping rule), reported per iteration
        op = ops["func"]
        conjugate_gradient(
            lambda u: op.matvec(u) + u,
            v,
            max_iter=CG_ITERATIONS,
            tol=0.0,
            martens_criterion=False,
        )

    fns: dict[str, Callable[[], Any]] = {
        "forward": lambda: _forward(model, x),
        "gradient": lambda: _gradient(model, loss_fn, x, y),
    }
    fns.update(_sgd_steps(model, x, y, loss_fn))
    for b in backends:
        fns[f"ggn_setup[{b}]"] = setup(b, x, y)
        fns[f"ggn_product[{b}]"] = product(b)
        if b == "func":
            fns["cg_iteration[func]"] = cg_iteration
            # the fallback for kernels without forward mode, on the same batch
            fns[f"ggn_setup[{REVERSE}]"] = setup(REVERSE, x, y)
            fns[f"ggn_product[{REVERSE}]"] = product(REVERSE)
    if "func" in backends and y.shape[0] >= 4:
        for key, (xb, yb, chunk) in batches.items():
            fns[f"ggn_setup[{key}]"] = setup(key, xb, yb, chunk)
            fns[f"ggn_product[{key}]"] = product(key)
    return fns, dim, caches


def _forward(model: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        model(x)


def _gradient(model: nn.Module, loss_fn: Loss, x: Tensor, y: Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()


def _sgd_steps(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Loss
) -> dict[str, Callable[[], Any]]:
    """One SGD step of hfft's runner and of a plain loop, each on its own copy."""

    n = y.shape[0]
    splits = _bench_splits(x, y)
    ours = copy.deepcopy(model)
    settings = SGDSettings(loss_fn, lr=1e-6, batch_size=n, momentum=0.9, weight_decay=5e-4, seed=0)
    runner = SGDRunner(Strategy("sgd"), ours, splits, settings, evaluations=1)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(twin.parameters(), lr=1e-6, momentum=0.9, weight_decay=5e-4)

    def plain() -> None:
        twin.train()
        idx = torch.randperm(n, device=y.device)
        opt.zero_grad()
        loss = loss_fn(twin(take(x, idx)), y[idx])
        loss.backward()
        opt.step()
        float(loss.detach())  # the loss a plain loop logs, as hfft's runner does

    return {"sgd_step[hfft]": lambda: runner.step(0.0), "sgd_step[plain]": plain}


def _bench_splits(x: Tensor, y: Tensor) -> Any:

    return DataSplits(
        name="bench",
        train_x=x,
        train_y=y,
        valid_x=x,
        valid_y=y,
        train_eval_x=x,
        train_eval_y=y,
        test_x=x,
        test_y=y,
        num_classes=1,
        input_shape=(),
        augment=None,
        normalization=None,
        seed=0,
    )


def bench_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Loss | None = None,
    *,
    name: str = "model",
    rounds: int = 5,
    warmup: int = 1,
    backends: tuple[str, ...] = ("func", "backpack"),
    cg_iterations: int = 50,
    measure_memory: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time, count and weigh every operation of an HF step and of an SGD step.

    Args:
        model: The network (used in its current mode; SGD steps train copies).
        x: A batch of inputs.
        y: Its targets.
        loss_fn: The loss (a classification task's cross-entropy by default).
        name: Label for the report.
        rounds: Timed rounds (the median is reported).
        warmup: Untimed rounds first.
        backends: Curvature back-ends to time.
        cg_iterations: CG iterations of the whole-step benchmark (0: skip it).
        measure_memory: Also measure peak memory (a separate, slower run).
        on_stage: Called with a short description as each stage starts.

    Returns:
        The :class:`BenchResult`.
    """
    loss_fn = loss_fn if loss_fn is not None else Task().loss()
    cuda = y.device.type == "cuda"
    stage = on_stage if on_stage is not None else (lambda _: None)
    stage(f"{name}: timing operations ({warmup + rounds} rounds)")
    fns, dim, caches = _operations(model, x, y, loss_fn, backends)
    seconds = interleaved_medians(fns, cuda, rounds, warmup)
    if "cg_iteration[func]" in seconds:
        seconds["cg_iteration[func]"] /= CG_ITERATIONS
    unit = seconds["gradient"]
    ratios = {k: s / unit for k, s in seconds.items()}
    if f"ggn_product[{REVERSE}]" in seconds:  # what the fallback costs
        ratios[f"{REVERSE} / func product"] = (
            seconds[f"ggn_product[{REVERSE}]"] / seconds["ggn_product[func]"]
        )
    stage(f"{name}: counting FLOPs")
    flops = _flop_ratios(fns)
    peak = {}
    if measure_memory:
        stage(f"{name}: measuring peak memory")
        peak = _peaks(fns, y.device)
    step: dict[str, Any] = {}
    if cg_iterations > 0:
        from hfft.diagnostics.step_bench import bench_hf_step

        stage(f"{name}: one HF step of {cg_iterations} CG iterations per back-end")
        step = bench_hf_step(
            model,
            x,
            y,
            loss_fn,
            cg_iterations=cg_iterations,
            backends=backends,
            measure_memory=measure_memory,
        )
    notes = [
        f"{b}: traced linearisation unavailable ({c.fallback_reason})"
        for b, c in caches.items()
        if c.fallback_reason and not c.reverse_only
    ]
    model.zero_grad(set_to_none=True)
    result = BenchResult(
        model=name,
        batch_size=y.shape[0],
        device=str(y.device),
        num_params=dim,
        rounds=rounds,
        seconds=seconds,
        ratios=ratios,
        flops=flops,
        peak_bytes=peak,
        step=step,
        notes=notes,
    )
    result.targets.update(check_targets(result))
    return result


def _flop_ratios(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """FLOPs of every operation per gradient's FLOPs.

    Products are counted after their setups (already built); setups and SGD
    steps are not counted: each is one gradient's arithmetic
    (tests/test_curvature.py checks setups).
    """

    raw = {k: count_flops(f) for k, f in fns.items() if not k.startswith(("sgd_step", "ggn_setup"))}
    flops = {k: f / raw["gradient"] for k, f in raw.items() if raw["gradient"]}
    if "cg_iteration[func]" in flops:
        flops["cg_iteration[func]"] /= CG_ITERATIONS
    return flops


def _peaks(fns: dict[str, Callable[[], Any]], device: torch.device) -> dict[str, int]:
    """Peak memory of every operation; a product's with the setup it needs."""

    peak = {}
    for key, fn in fns.items():
        if key.startswith("ggn_product"):
            setup = fns[key.replace("product", "setup")]
            peak[key] = peak_memory(_then(setup, fn), device)
        elif not key.startswith("ggn_setup"):
            peak[key] = peak_memory(fn, device)
    return peak


def _then(first: Callable[[], Any], second: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: (first(), second())


def check_targets(r: BenchResult) -> dict[str, tuple[float, str, bool]]:
    """The performance targets this result can be held to: value, bound, met."""
    s, out = r.seconds, {}

    def add(key: str, value: float, bound: str, met: bool) -> None:
        out[key] = (value, bound, met)

    if "ggn_product[func]" in s:
        v = s["ggn_product[func]"] / s["gradient"]
        add("product / gradient", v, "≤ 1.2", v <= 1.2)
    if "ggn_product[backpack]" in s and "ggn_product[func]" in s:
        v = s["ggn_product[backpack]"] / s["ggn_product[func]"]
        add("BackPACK product / func product", v, "≥ 3", v >= 3)
    steps = r.step.get("seconds", {})
    if "func" in steps and "backpack" in steps:
        v = steps["backpack"] / steps["func"]
        add("BackPACK step / func step", v, "≥ 3", v >= 3)
    if "sgd_step[hfft]" in s:
        v = s["sgd_step[plain]"] / s["sgd_step[hfft]"]
        add("SGD step speed, hfft / plain", v, "≥ 0.95", v >= 0.95)
    if "ggn_product[chunked]" in s and "ggn_product[func]" in s:
        v = s["ggn_product[chunked]"] / s["ggn_product[func]"]
        add("chunked product time / unchunked", v, "≤ 1.3", v <= 1.3)
        p = r.peak_bytes
        if p.get("ggn_product[one chunk]"):
            v = p["ggn_product[chunked]"] / p["ggn_product[one chunk]"]
            add("chunked peak memory / one chunk", v, "≤ 1.5", v <= 1.5)
    return out
