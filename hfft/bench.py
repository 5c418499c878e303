"""Side-by-side timings of the operations an HF step is made of.

Everything is measured in one process, interleaved round by round (so that
drifts in machine load hit every operation alike), after warm-up; the median
over rounds is reported with its ratio to one gradient (forward + backward of
the batch loss, the unit of cost SGD pays per step).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hfft.curvature import LinearizationCache, linearize_curvature

__all__ = ["BenchResult", "bench_products", "shaped_problem"]

# input shape and classes of the data set each registered problem trains on
DATA_SHAPES = {
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "svhn": (3, 32, 10),
    "mnist": (1, 28, 10),
    "fashion-mnist": (1, 28, 10),
    "digits": (1, 8, 10),
}


@dataclass(frozen=True)
class BenchResult:
    """Median seconds per operation and ratios to one gradient."""

    model: str
    batch_size: int
    device: str
    num_params: int
    rounds: int
    seconds: dict[str, float]
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def shaped_problem(
    name: str, batch_size: int, device: str = "cpu", seed: int = 0
) -> tuple[nn.Module, Tensor, Tensor]:
    """A registered model in eval mode with a random batch shaped like its data."""
    from hfft.models import get_problem

    problem = get_problem(name)
    channels, size, classes = DATA_SHAPES[problem.defaults.dataset]
    torch.manual_seed(seed)
    model = problem.build(num_classes=classes, in_channels=channels, input_size=size)
    model = model.to(device).eval()
    x = torch.randn(batch_size, channels, size, size, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    return model, x, y


def _timed(fn: Callable[[], Any], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_products(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: nn.Module | None = None,
    *,
    name: str = "model",
    rounds: int = 5,
    warmup: int = 1,
    backends: tuple[str, ...] = ("func", "backpack"),
) -> BenchResult:
    """Time forward, gradient and GGN-vector products of each back-end.

    Args:
        model: The network (used in its current mode).
        x: A batch of inputs.
        y: Its targets.
        loss_fn: The loss (cross-entropy by default).
        name: Label for the report.
        rounds: Timed rounds (the median is reported).
        warmup: Untimed rounds first.
        backends: Curvature back-ends to time.

    Returns:
        The :class:`BenchResult`; ``seconds`` has ``forward``, ``gradient`` and
        per back-end ``ggn_product[<backend>]`` (one product, the operator
        already built) and ``ggn_setup[<backend>]`` (building the operator:
        forward, gradient and linearisation, once per HF step).
    """
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    cuda = x.device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    v = torch.randn(dim, device=x.device, dtype=x.dtype)
    caches = {b: LinearizationCache() for b in backends}
    ops: dict[str, Any] = {}

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    def setup(backend: str) -> Callable[[], None]:
        def run() -> None:
            ops[backend] = linearize_curvature(
                model, loss_fn, x, y, params, backend=backend, lin_cache=caches[backend]
            )

        return run

    def product(backend: str) -> Callable[[], None]:
        return lambda: ops[backend].matvec(v)

    timed: dict[str, Callable[[], None]] = {"forward": forward, "gradient": gradient}
    for b in backends:
        timed[f"ggn_setup[{b}]"] = setup(b)
        timed[f"ggn_product[{b}]"] = product(b)

    samples: dict[str, list[float]] = {k: [] for k in timed}
    for r in range(warmup + rounds):
        for key, fn in timed.items():
            t = _timed(fn, cuda)
            if r >= warmup:
                samples[key].append(t)
    seconds = {k: statistics.median(s) for k, s in samples.items()}
    unit = seconds["gradient"]
    ratios = {k: s / unit for k, s in seconds.items()}
    notes = []
    if "func" in backends and "backpack" in backends:
        ratios["backpack_over_func_product"] = (
            seconds["ggn_product[backpack]"] / seconds["ggn_product[func]"]
        )
    for b in backends:
        if caches[b].fallback_reason:
            notes.append(f"{b}: traced linearisation unavailable ({caches[b].fallback_reason})")
    model.zero_grad(set_to_none=True)
    return BenchResult(
        model=name,
        batch_size=x.shape[0],
        device=str(x.device),
        num_params=dim,
        rounds=rounds,
        seconds=seconds,
        ratios=ratios,
        notes=notes,
    )
