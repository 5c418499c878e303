"""One epoch of hfft's SGD loop against a plain hand-written PyTorch loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from hfft.diagnostics.instruments import interleaved_medians
from hfft.experiment.data.factories import build_model
from hfft.experiment.data.sampling import BatchSampler, BatchStream
from hfft.experiment.data.splits import load_data
from hfft.experiment.data.task import Task
from hfft.experiment.run.train import sgd_epoch
from hfft.models import get_problem, param_groups
from hfft.optim.batches import take

__all__ = ["LoopBenchResult", "bench_sgd_loop"]


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
    """One epoch of :func:`hfft.experiment.run.train.sgd_epoch` against a plain hand-written loop.

    Both train the same model (two identical copies) with ``torch.optim.SGD`` on
    the same device-resident training split, without augmentation, one epoch
    each, interleaved over ``rounds`` (:func:`hfft.diagnostics.instruments.interleaved_medians`,
    alternating which goes first) after one warm-up epoch; the medians are
    compared.
    """
    import copy

    torch.manual_seed(seed)
    splits = load_data(data, device=device, seed=seed, augment=False)
    model = build_model(model_name, {}, splits.data_args()).to(device)
    d = get_problem(model_name).defaults
    twin = copy.deepcopy(model)
    loss_fn = Task().loss()
    opt_h = torch.optim.SGD(param_groups(model, d.weight_decay), lr=d.lr, momentum=d.momentum)
    opt_p = torch.optim.SGD(param_groups(twin, d.weight_decay), lr=d.lr, momentum=d.momentum)
    sampler = BatchSampler(splits.num_train, seed=seed, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x_all, y_all = splits.train_x, splits.train_y
    n = splits.num_train
    batches = BatchStream(x_all, y_all, lambda: sampler.next_batch(batch_size), None, gen)

    def hfft_epoch() -> None:
        sgd_epoch(model, opt_h, loss_fn, batches, n // batch_size)

    def plain_epoch() -> None:
        twin.train()
        perm = torch.randperm(n, device=device)
        for i in range(n // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            opt_p.zero_grad()
            loss = loss_fn(twin(take(x_all, idx)), y_all[idx])
            loss.backward()
            opt_p.step()

    seconds = interleaved_medians(
        {"hfft": hfft_epoch, "plain": plain_epoch}, device.startswith("cuda"), rounds
    )
    return LoopBenchResult(
        model=model_name,
        data=data,
        batch_size=batch_size,
        device=device,
        rounds=rounds,
        hfft_seconds=seconds["hfft"],
        plain_seconds=seconds["plain"],
    )
