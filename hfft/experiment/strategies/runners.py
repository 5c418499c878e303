"""One optimizer step of each strategy, behind one small interface.

A runner owns its optimizer and draws its own batches from the shared data
pipeline (:class:`hfft.experiment.data.sampling.BatchSampler`'s seeded draws, gathered from
device-resident tensors or streamed, :class:`hfft.experiment.data.sampling.BatchStream`),
so no strategy is favoured by its loader. ``step(fraction)`` takes one step
at the given budget fraction and returns a JSON-ready record;
``step_samples`` is how many training samples that step consumed (B only, for
epoch budgets).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn

from hfft.experiment.data.sampling import BatchSampler, BatchStream
from hfft.experiment.strategies.catalog import DEFAULT_EVAL_BATCH, default_m, largest_m
from hfft.experiment.strategies.hf_progress import HFProgress
from hfft.experiment.strategies.interface import Runner, SGDSettings
from hfft.experiment.strategies.schedules import Plateau, make_schedule
from hfft.models import param_groups
from hfft.optim import distributed
from hfft.optim.batches import take
from hfft.optim.flat import FlatSpace
from hfft.optim.optimizer import HessianFree

if TYPE_CHECKING:
    from torch import Tensor

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.records import HFStepEntry, RunnerReport, SGDStepEntry
    from hfft.experiment.strategies.registry import RunnerContext, StartingFacts, Strategy
    from hfft.optim.batches import Batchable
    from hfft.optim.output_hessians import Loss

    Batch = tuple[Batchable, Tensor]

__all__ = [
    "FromSettings",
    "HFRunner",
    "Runner",
    "SGDRunner",
    "SGDSettings",
    "ScheduledRunner",
    "build_hf",
    "build_sgd",
    "check_hf",
    "check_sgd",
    "check_sgd_batch",
    "hf_batch_sizes",
    "kfac_loss_problem",
    "sgd_settings",
    "sgd_update",
]


def sgd_update(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Loss,
    x: Batchable,
    y: Tensor,
    check: bool = False,
) -> Tensor:
    """One SGD update on the batch ``(x, y)``; returns the batch loss (detached).

    With ``check``, the loss is read from the device first (one
    synchronisation) and a non-finite loss skips the update, so the
    parameters stay finite; without, nothing waits for the device.
    """
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    if check and not math.isfinite(float(loss.detach())):
        return loss.detach()
    loss.backward()
    opt.step()
    return loss.detach()


class FromSettings:
    """A runner built from its strategy, the model, its data and the checkpoint's settings:
    the registry's builder is the class's :meth:`build`."""

    if TYPE_CHECKING:

        def __init__(
            self, strategy: Strategy, model: nn.Module, splits: DataSplits, settings: SGDSettings
        ) -> None: ...

    @classmethod
    def build(cls, strategy: Strategy, context: RunnerContext) -> Self:
        """The runner of ``strategy`` (the registry's builder)."""
        return cls(strategy, context.model, context.splits, context.settings)


class SampledRunner(Runner):
    """A runner that draws SGD's seeded batches of ``size`` (the same for the same seed, for
    every strategy built on it) and may take SGD-style updates on them."""

    def __init__(self, model: nn.Module, splits: DataSplits, loss_fn: Loss, size: int, seed: int):
        self.model, self.splits, self.loss_fn = model, splits, loss_fn
        device = splits.train_y.device
        self.sampler = BatchSampler(splits.num_train, seed=seed, device=device)
        self.gen = torch.Generator(device=device).manual_seed(seed + 1)
        draw = functools.partial(self.sampler.next_batch, size)
        self.batches = BatchStream(splits.train_x, splits.train_y, draw, splits.augment, self.gen)
        self.step_samples = size
        self.count = 0

    def update(self, opt: torch.optim.Optimizer) -> float:
        """One update of ``opt`` on the next batch, in training mode; its batch loss.

        A non-finite loss skips the update and marks the run diverged.
        """
        self.model.train()
        x, y = self.batches.next()
        if distributed.is_distributed():
            opt.zero_grad(set_to_none=True)
            value = self._sharded_backward(opt, x, y)
            if math.isfinite(value):
                opt.step()
        else:
            # float(): also the per-step device synchronisation that fair timing needs
            value = float(sgd_update(self.model, opt, self.loss_fn, x, y, check=True))
        self.count += 1
        self.diverged = not math.isfinite(value)  # then the update was skipped
        return value

    def _sharded_backward(self, opt: torch.optim.Optimizer, x: Batchable, y: torch.Tensor) -> float:
        """This rank's share of the batch loss and gradient, summed over ranks.

        Every rank drew the same global batch; it takes its contiguous shard,
        weights the shard's mean loss by its share of the batch and sums the
        gradients and the loss over ranks in one all-reduce, so every rank
        applies the gradient of the whole batch.
        """
        n = y.shape[0]
        part = distributed.shard(n)
        share = (part.stop - part.start) / n
        loss = self.loss_fn(self.model(take(x, part)), y[part]) * share
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        space = FlatSpace(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = distributed.all_reduce_sum(space.flatten([*grads, loss.detach()]))
        for p, g in zip(params, space.unflatten(flat[:-1]), strict=True):
            p.grad = g.clone()
        return float(flat[-1])


class ScheduledRunner(SampledRunner):
    """A runner whose step sets its optimizer's rate from its schedule, then updates
    (SGD's four schedules, Adam's constant or cosine rate)."""

    opt: torch.optim.Optimizer
    schedule: Callable[[float], float]
    lr: float

    def step(self, fraction: float) -> SGDStepEntry:
        self.lr = float(self.schedule(fraction))  # a plateau's rate: its last observation's
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        value = self.update(self.opt)
        return {"step": self.count, "fraction": fraction, "lr": self.lr, "loss": value}

    def settings(self) -> dict[str, float]:
        return {"lr": self.lr}


class SGDRunner(ScheduledRunner):
    """SGD with one of the four learning-rate strategies of the paper (§3.2)."""

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        settings: SGDSettings,
        *,
        evaluations: int,
    ) -> None:
        s = settings
        self.base_lr, self.batch_size = sgd_settings(strategy, s.lr, s.batch_size)
        momentum = float(strategy.options.get("momentum", s.momentum))
        check_sgd_batch(self.batch_size, splits.num_train)
        super().__init__(model, splits, s.loss_fn, self.batch_size, s.seed)
        self.opt = torch.optim.SGD(
            param_groups(model, s.weight_decay), lr=self.base_lr, momentum=momentum
        )
        schedule = strategy.entry.settings["schedule"]
        self.schedule = make_schedule(schedule, self.base_lr, evaluations)
        self.plateau = self.schedule if isinstance(self.schedule, Plateau) else None
        self.lr = self.base_lr

    def observe(self, metrics: Mapping[str, Any]) -> None:
        if self.plateau is not None and "train_eval_loss" in metrics:
            self.plateau.observe(metrics["train_eval_loss"])

    def report(self) -> RunnerReport:
        return {"plateau": self.plateau.to_dict()} if self.plateau is not None else {}


class HFRunner(Runner):
    """Hessian-free steps on disjoint batches B (size m) and B̄ (``eval_batch_size``)."""

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        *,
        loss_fn: Loss,
        weight_decay: float,
        eval_batch_size: int | None,
        seed: int,
    ) -> None:

        opts = dict(strategy.options)
        n = splits.num_train
        self.m, self.m_bar = hf_batch_sizes(opts.pop("m", None), n, eval_batch_size)
        self.model, self.splits = model, splits
        self.loss_fn = loss_fn
        self.opt = HessianFree(param_groups(model, weight_decay), **opts)
        self.sampler = BatchSampler(n, seed=seed, device=splits.train_y.device)
        self.step_samples = self.m
        self.progress = HFProgress(self.m, self.m_bar, n, rho_batch=self.opt.defaults["rho_batch"])
        self.local_m = len(range(n)[distributed.shard(self.m)])
        draw = functools.partial(_disjoint_pair, self.sampler, self.m, self.m_bar)
        self.batches = BatchStream(splits.train_x, splits.train_y, draw)
        # one-time tracing of the linearisation, like compilation: before the clock starts
        self.setup_seconds = self.opt.prepare(model, take(splits.train_x, slice(0, self.m)))

    def draw(self) -> tuple[Batch, Batch]:
        """The next disjoint batches B (size m) and B̄ of this runner's sampler."""
        x, y = self.batches.next()
        b, rest = slice(0, self.local_m), slice(self.local_m, None)
        return (take(x, b), y[b]), (take(x, rest), y[rest])

    def step_on(self, batches: tuple[Batch, Batch], fraction: float) -> HFStepEntry:
        """One HF step on batches from :meth:`draw`; its entry."""
        batch, eval_batch = batches
        record = self.opt.step(self.model, self.loss_fn, batch=batch, eval_batch=eval_batch)
        entry: HFStepEntry = {"fraction": fraction, **record.to_dict()}
        self.progress.observe(entry)
        return entry

    def step(self, fraction: float) -> HFStepEntry:
        return self.step_on(self.draw(), fraction)

    def objective(self, eval_batch: Batch) -> float:
        """The B̄ objective at the current parameters, as an HF step measures it."""
        return self.opt.objective(self.model, self.loss_fn, eval_batch)

    def settings(self) -> dict[str, float]:
        return {"damping": self.opt.damping}

    def report(self) -> RunnerReport:
        return {"curvature_products": self.opt.product_path, "hf_progress": self.progress.to_dict()}


def _disjoint_pair(sampler: BatchSampler, m: int, m_bar: int) -> Tensor:
    """B's indices, then B̄'s (this rank's shards of each; the optimizer all-reduces)."""
    idx, idx_bar = sampler.disjoint_pair(m, m_bar)
    return torch.cat([idx[distributed.shard(m)], idx_bar[distributed.shard(m_bar)]])


def hf_batch_sizes(
    m: int | None, n: int, eval_batch_size: int | None, *, method: str = "HF", name: str = "hf"
) -> tuple[int, int]:
    """HF's batch sizes, B (``m``, default min(2048, n/2)) and B̄, checked against ``n`` samples.

    B̄ defaults to min(1024, n − m). ``kfac`` draws the same batches: its errors name
    ``method`` (``K-FAC``) and the strategy ``name`` (``kfac``).

    Raises:
        ValueError: If B and B̄ cannot be two disjoint batches of the training set.
    """
    what = f"{name}:m={m}" if m is not None else "the default m"
    m = default_m(n) if m is None else int(m)
    if m < 1 or m >= n:
        raise ValueError(
            f"{method}'s batch B ({what}) must hold 1 to {n - 1} of the {n} training samples, "
            f"leaving samples for its second batch B̄; choose {name}:m={max(1, largest_m(n))} "
            "or less"
        )
    m_bar = min(DEFAULT_EVAL_BATCH, n - m) if eval_batch_size is None else eval_batch_size
    if m_bar < 1 or m + m_bar > n:
        raise ValueError(
            f"{method} needs two disjoint batches of the {n} training samples, B of {m} ({what}) "
            f"and B̄ of {m_bar} (--eval-batch-size), but {m + m_bar} do not fit; choose a "
            f"smaller {name}:m= or --eval-batch-size"
        )
    return m, m_bar


def check_sgd_batch(batch_size: int, n: int) -> None:
    """An SGD batch must fit in the ``n`` training samples.

    Raises:
        ValueError: If it does not.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"the SGD batch size {batch_size} must be between 1 and the {n} training samples"
        )


def sgd_settings(strategy: Strategy, lr: float | None, batch_size: int | None) -> tuple[float, int]:
    """An SGD strategy's (or ``auto``'s) learning rate and batch size: its options, else given.

    Raises:
        ValueError: When neither the strategy nor the checkpoint gives them.
    """
    lr = strategy.options.get("lr", lr)
    batch_size = strategy.options.get("batch_size", batch_size)
    if lr is None or batch_size is None:
        missing = {"learning rate": lr is None, "batch size": batch_size is None}
        flags = {"learning rate": "--lr", "batch size": "--batch-size"}
        named = [what for what, absent in missing.items() if absent]
        raise ValueError(
            f"{strategy.name} needs the training {' and '.join(named)}, which this "
            f"checkpoint does not record; pass {' and '.join(flags[w] for w in named)}"
        )
    return float(lr), int(batch_size)


def check_sgd(strategy: Strategy, facts: StartingFacts) -> None:
    """An SGD strategy's rate and batch size are known and the batch fits the data.

    Raises:
        ValueError: If not, in one sentence.
    """
    check_sgd_batch(sgd_settings(strategy, facts.lr, facts.batch_size)[1], facts.n_train)


def kfac_loss_problem(facts: StartingFacts) -> str | None:
    """Why K-FAC cannot take the run's loss (:func:`hfft.optim.kfac.unsupported_loss`), in
    one sentence; ``None`` when it can or the caller does not know the loss."""
    if facts.loss_fn is None:
        return None
    from hfft.optim.kfac import unsupported_loss

    return unsupported_loss(facts.loss_fn, float_targets=facts.float_targets)


def check_hf(strategy: Strategy, facts: StartingFacts) -> None:
    """HF's batches B and B̄ fit the data (:func:`hf_batch_sizes`), and K-FAC as CG's
    preconditioner supports the loss and runs in one process.

    Raises:
        ValueError: If not, in one sentence.
    """
    m = strategy.options.get("m")
    hf_batch_sizes(None if m is None else int(m), facts.n_train, facts.eval_batch_size)
    if strategy.options.get("preconditioner") == "kfac":
        if (problem := kfac_loss_problem(facts)) is not None:
            raise ValueError(
                f"HF's preconditioner=kfac cannot be used here: {problem}; choose "
                "preconditioner=empirical-fisher or none"
            )
        from hfft.optim import distributed

        if distributed.is_distributed():  # else refused at the first step, after the setup
            raise ValueError(
                "hf:preconditioner=kfac runs in one process only (K-FAC's factors are not "
                "summed over ranks); run it without torchrun"
            )


def build_sgd(strategy: Strategy, context: RunnerContext) -> SGDRunner:
    """The runner of an SGD strategy (its entry names the schedule)."""
    c = context
    return SGDRunner(strategy, c.model, c.splits, c.settings, evaluations=c.evaluations)


def build_hf(strategy: Strategy, context: RunnerContext) -> HFRunner:
    """The runner of ``hf``."""
    s = context.settings
    return HFRunner(
        strategy,
        context.model,
        context.splits,
        loss_fn=s.loss_fn,
        weight_decay=s.weight_decay,
        eval_batch_size=context.eval_batch_size,
        seed=s.seed,
    )
