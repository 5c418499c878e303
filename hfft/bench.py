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

__all__ = [
    "BenchResult",
    "LoopBenchResult",
    "bench_products",
    "bench_sgd_loop",
    "median_time",
    "shaped_problem",
]

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


def median_time(fn: Callable[[], Any], cuda: bool, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    return statistics.median(_timed(fn, cuda) for _ in range(repeats))


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


@dataclass(frozen=True)
class LoopBenchResult:
    """Seconds per epoch of hfft's SGD loop and of a plain PyTorch loop."""

    model: str
    data: str
    batch_size: int
    device: str
    rounds: int
    hfft_seconds: float
    plain_seconds: float

    @property
    def throughput_ratio(self) -> float:
        """hfft's samples per second over the plain loop's (≥ 1 means hfft is faster)."""
        return self.plain_seconds / self.hfft_seconds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {**asdict(self), "throughput_ratio": self.throughput_ratio}


def bench_sgd_loop(
    model_name: str = "cnn",
    data: str = "digits",
    batch_size: int = 128,
    device: str = "cpu",
    rounds: int = 5,
    seed: int = 0,
) -> LoopBenchResult:
    """One epoch of :func:`hfft.train.sgd_epoch` against a plain hand-written loop.

    Both train the same model (two identical copies) with ``torch.optim.SGD`` on
    the same device-resident training split, without augmentation, one epoch
    each, interleaved over ``rounds`` (alternating which goes first) after one
    warm-up epoch; the medians are compared.
    """
    import copy

    from hfft.data import load_data
    from hfft.models import get_problem, param_groups
    from hfft.modelspec import build_model
    from hfft.sampling import BatchSampler
    from hfft.train import sgd_epoch

    torch.manual_seed(seed)
    splits = load_data(data, device=device, seed=seed, augment=False)
    model = build_model(
        model_name,
        {},
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        input_size=splits.input_size,
    ).to(device)
    d = get_problem(model_name).defaults
    twin = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss()
    opt_h = torch.optim.SGD(param_groups(model, d.weight_decay), lr=d.lr, momentum=d.momentum)
    opt_p = torch.optim.SGD(param_groups(twin, d.weight_decay), lr=d.lr, momentum=d.momentum)
    sampler = BatchSampler(splits.train_x.shape[0], seed=seed, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x_all, y_all = splits.train_x, splits.train_y
    n = x_all.shape[0]

    def hfft_epoch() -> None:
        sgd_epoch(model, opt_h, loss_fn, splits, sampler, batch_size, gen)

    def plain_epoch() -> None:
        twin.train()
        perm = torch.randperm(n, device=device)
        for i in range(n // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            opt_p.zero_grad()
            loss = loss_fn(twin(x_all[idx]), y_all[idx])
            loss.backward()
            opt_p.step()

    cuda = device.startswith("cuda")
    times: dict[str, list[float]] = {"hfft": [], "plain": []}
    order = [("hfft", hfft_epoch), ("plain", plain_epoch)]
    for r in range(rounds + 1):
        # alternate which loop goes first, so that neither always runs on a warm cache
        for key, fn in order if r % 2 else order[::-1]:
            t = _timed(fn, cuda)
            if r > 0:
                times[key].append(t)
    return LoopBenchResult(
        model=model_name,
        data=data,
        batch_size=batch_size,
        device=device,
        rounds=rounds,
        hfft_seconds=statistics.median(times["hfft"]),
        plain_seconds=statistics.median(times["plain"]),
    )
