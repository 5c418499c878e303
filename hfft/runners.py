"""One optimizer step of each strategy, behind one small interface.

A runner owns its optimizer and draws its own batches from the shared data
pipeline (:class:`hfft.sampling.BatchSampler` over device-resident tensors),
so no strategy is favoured by its loader. ``step(fraction)`` takes one step
at the given budget fraction and returns a JSON-ready record;
``samples`` is how many training samples that step consumed (B only, for
epoch budgets).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfft import distributed
from hfft._params import FlatSpace
from hfft.models import param_groups
from hfft.sampling import BatchSampler, augment_batch

if TYPE_CHECKING:
    from torch import Tensor

    from hfft.data import DataSplits
    from hfft.strategies import Strategy

    Batch = tuple[Tensor, Tensor]

__all__ = ["HFRunner", "Runner", "SGDRunner", "make_runner"]

DEFAULT_M = 2048
DEFAULT_EVAL_BATCH = 1024


class Runner:
    """Interface: ``step(fraction) -> record``; ``diverged``; ``hyper`` and ``report`` for logs."""

    samples: int = 0
    diverged: bool = False
    setup_seconds: float = 0.0

    def step(self, fraction: float) -> dict[str, Any]:
        raise NotImplementedError

    def hyper(self) -> dict[str, float]:
        """The current learning rate (SGD) or damping (HF)."""
        raise NotImplementedError

    def observe(self, metrics: dict[str, float]) -> None:
        """Called with each evaluation's metrics (the plateau schedule listens)."""

    def report(self) -> dict[str, Any]:
        """Extra top-level entries for ``metrics.json`` (``auto`` logs its switch)."""
        return {}


class SGDRunner(Runner):
    """SGD with one of the four learning-rate strategies of the paper (§3.2)."""

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        *,
        lr: float,
        batch_size: int,
        momentum: float,
        weight_decay: float,
        evaluations: int,
        seed: int,
    ) -> None:
        from hfft.schedules import Plateau, make_schedule

        opts = strategy.options
        self.base_lr = float(opts.get("lr", lr))
        self.batch_size = int(opts.get("batch_size", batch_size))
        momentum = float(opts.get("momentum", momentum))
        n = splits.train_x.shape[0]
        if self.batch_size > n:
            raise ValueError(f"batch size {self.batch_size} exceeds the {n} training samples")
        self.model, self.splits = model, splits
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(
            param_groups(model, weight_decay), lr=self.base_lr, momentum=momentum
        )
        self.schedule = make_schedule(strategy.name, self.base_lr, evaluations)
        self.plateau = self.schedule if isinstance(self.schedule, Plateau) else None
        self.sampler = BatchSampler(
            splits.train_x.shape[0], seed=seed, device=splits.train_x.device
        )
        self.gen = torch.Generator(device=splits.train_x.device).manual_seed(seed + 1)
        self.lr = self.base_lr
        self.samples = self.batch_size
        self.count = 0

    def step(self, fraction: float) -> dict[str, Any]:
        self.lr = self.plateau.lr if self.plateau is not None else float(self.schedule(fraction))
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        self.model.train()
        idx = self.sampler.next_batch(self.batch_size)
        x, y = self.splits.train_x[idx], self.splits.train_y[idx]
        if self.splits.augment is not None:
            x = augment_batch(x, self.splits.augment, self.gen)
        self.opt.zero_grad(set_to_none=True)
        if distributed.is_distributed():
            value = self._sharded_backward(x, y)
        else:
            loss = self.loss_fn(self.model(x), y)
            value = float(loss.detach())  # also the per-step device sync fair timing needs
            if math.isfinite(value):
                loss.backward()
        self.count += 1
        if not math.isfinite(value):
            self.diverged = True  # the update is skipped: parameters stay finite
        else:
            self.opt.step()
        return {"step": self.count, "fraction": fraction, "lr": self.lr, "loss": value}

    def _sharded_backward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """This rank's share of the batch loss and gradient, summed over ranks.

        Every rank drew the same global batch; it takes its contiguous shard,
        weights the shard's mean loss by its share of the batch and sums the
        gradients and the loss over ranks in one all-reduce, so every rank
        applies the gradient of the whole batch.
        """
        part = distributed.shard(x.shape[0])
        share = (part.stop - part.start) / x.shape[0]
        loss = self.loss_fn(self.model(x[part]), y[part]) * share
        loss.backward()
        params = [p for g in self.opt.param_groups for p in g["params"]]
        space = FlatSpace(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = distributed.all_reduce_sum(space.flatten([*grads, loss.detach()]))
        for p, g in zip(params, space.unflatten(flat[:-1]), strict=True):
            p.grad = g.clone()
        return float(flat[-1])

    def hyper(self) -> dict[str, float]:
        return {"lr": self.lr}

    def observe(self, metrics: dict[str, float]) -> None:
        if self.plateau is not None and "train_eval_loss" in metrics:
            self.plateau.observe(metrics["train_eval_loss"])


class HFRunner(Runner):
    """Hessian-free steps on disjoint batches B (size m) and B̄ (``eval_batch_size``)."""

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        *,
        weight_decay: float,
        eval_batch_size: int | None,
        seed: int,
    ) -> None:
        from hfft.optimizer import HessianFree

        opts = dict(strategy.options)
        n = splits.train_x.shape[0]
        explicit_m = "m" in opts
        self.m = int(opts.pop("m", min(DEFAULT_M, n // 2)))
        if eval_batch_size is None:
            self.m_bar = min(DEFAULT_EVAL_BATCH, n - self.m)
        else:
            self.m_bar = eval_batch_size
        if self.m < 1 or self.m_bar < 1 or self.m + self.m_bar > n:
            where = "m" if explicit_m else "the default m"
            raise ValueError(
                f"HF needs two disjoint batches, B of {where}={self.m} and B̄ of {self.m_bar}, "
                f"but there are only {n} training samples; choose a smaller hf:m= or "
                "--eval-batch-size"
            )
        self.model, self.splits = model, splits
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = HessianFree(param_groups(model, weight_decay), **opts)
        self.sampler = BatchSampler(n, seed=seed, device=splits.train_x.device)
        self.samples = self.m
        # one-time tracing of the linearisation, like compilation: before the clock starts
        self.setup_seconds = self.opt.prepare(model, splits.train_x[: self.m])

    def draw(self) -> tuple[Batch, Batch]:
        """The next disjoint batches B (size m) and B̄ of this runner's sampler."""
        idx, idx_bar = self.sampler.disjoint_pair(self.m, self.m_bar)
        if distributed.is_distributed():  # this rank's shards; the optimizer all-reduces
            idx, idx_bar = idx[distributed.shard(self.m)], idx_bar[distributed.shard(self.m_bar)]
        x, y = self.splits.train_x, self.splits.train_y
        return (x[idx], y[idx]), (x[idx_bar], y[idx_bar])

    def take(self, batches: tuple[Batch, Batch], fraction: float) -> dict[str, Any]:
        """One HF step on batches from :meth:`draw`; its record as a JSON-ready dict."""
        batch, eval_batch = batches
        record = self.opt.step(self.model, self.loss_fn, batch=batch, eval_batch=eval_batch)
        return {"fraction": fraction, **record.to_dict()}

    def step(self, fraction: float) -> dict[str, Any]:
        return self.take(self.draw(), fraction)

    def objective(self, eval_batch: Batch) -> float:
        """The B̄ objective at the current parameters, as an HF step measures it."""
        return self.opt.objective(self.model, self.loss_fn, eval_batch)

    def hyper(self) -> dict[str, float]:
        return {"damping": self.opt.damping}


def make_runner(
    strategy: Strategy,
    model: nn.Module,
    splits: DataSplits,
    *,
    lr: float | None,
    batch_size: int | None,
    momentum: float,
    weight_decay: float,
    eval_batch_size: int | None,
    evaluations: int,
    seed: int,
) -> Runner:
    """The runner of a strategy, with hyperparameters resolved.

    Raises:
        ValueError: When an SGD strategy (or ``auto``) has no learning rate or
            batch size, or HF's batches do not fit the data.
    """
    if strategy.is_hf:
        return HFRunner(
            strategy,
            model,
            splits,
            weight_decay=weight_decay,
            eval_batch_size=eval_batch_size,
            seed=seed,
        )
    lr = strategy.options.get("lr", lr)
    batch_size = strategy.options.get("batch_size", batch_size)
    if lr is None or batch_size is None:
        raise ValueError(
            f"{strategy.name} needs the training learning rate and batch size, which this "
            "checkpoint does not record; pass --lr and --batch-size"
        )
    sgd: dict[str, Any] = dict(
        lr=float(lr),
        batch_size=int(batch_size),
        momentum=momentum,
        weight_decay=weight_decay,
        evaluations=evaluations,
        seed=seed,
    )
    if strategy.is_auto:
        from hfft.auto import AutoRunner

        return AutoRunner(strategy, model, splits, eval_batch_size=eval_batch_size, **sgd)
    return SGDRunner(strategy, model, splits, **sgd)
