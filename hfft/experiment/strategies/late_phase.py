"""The late-phase methods a practitioner would also try, as runners like the paper's.

Each is built on the library that maintains it and draws its batches as SGD
does (the same seeded sampler, so the same batches for the same seed):

* ``swa`` — Stochastic Weight Averaging (Izmailov et al. 2018) with
  ``torch.optim.swa_utils``: SGD at the checkpoint's α until the budget
  fraction ``start``, then ``SWALR`` anneals the rate to ``swa_lr`` over
  ``anneal_steps`` steps (cosine) and ``AveragedModel`` averages the iterates
  after every step. The average is what is evaluated and saved. A model with
  BatchNorm gets ``update_bn`` over the training split before each evaluation
  of the average, **on the clock**: no other strategy gets work done for it off
  the clock, so neither does SWA.
* ``lbfgs`` — ``torch.optim.LBFGS`` with the strong-Wolfe line search, each
  step ``max_iter`` iterations on one batch of ``m`` samples (default HF's
  ``m``), in HF's model mode (eval: the closure is deterministic); weight decay
  is the L2 term ½·λ‖w‖² of the objective, as in HF.
* ``adam`` / ``adamw`` — ``torch.optim.Adam`` / ``AdamW``, constant or cosine
  (``schedule=cosine``), with the problem's weight decay per parameter group
  (for ``adamw`` decoupled, so SGD's small L2 factor decays little); the
  checkpoint's own Adam moments and rate when a ``torch.save`` file holds an
  Adam state that can be matched to the parameters, otherwise fresh moments
  and ``lr`` 1e-3, recorded as not tuned.
* ``sgd-schedulefree`` — schedule-free SGD (Defazio et al. 2024) from the
  ``schedulefree`` package; its ``eval()`` point x is what is evaluated and
  saved (``train()`` again afterwards), and a model with BatchNorm gets its
  statistics recomputed at x on up to 50 batches of the train-eval subset
  before each evaluation, on the clock, as the package's documentation
  prescribes.

What the two charge to the clock depends on the number of evaluation points
(a time budget; under step and epoch budgets it is free, like evaluation).
Their extra state (the average, z) is part of the run's step history, so an
interrupt or a divergence puts it back with the weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfft.experiment.interrupts import signals_held
from hfft.experiment.limits import LIMITS
from hfft.experiment.strategies.catalog import ADAM_DEFAULT_LR, default_m
from hfft.experiment.strategies.runners import (
    FromSettings,
    SampledRunner,
    ScheduledRunner,
    SGDSettings,
    check_sgd_batch,
    sgd_settings,
)
from hfft.experiment.strategies.schedules import make_schedule
from hfft.models import param_groups
from hfft.optim.batches import pieces

if TYPE_CHECKING:
    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.records import (
        LBFGSStepEntry,
        RunnerReport,
        SGDStepEntry,
        SWAStepEntry,
    )
    from hfft.experiment.strategies.registry import RunnerContext, StartingFacts, Strategy
    from hfft.optim.batches import Batchable

__all__ = [
    "ADAM_DEFAULT_LR",
    "AdamRunner",
    "LBFGSRunner",
    "SWARunner",
    "ScheduleFreeRunner",
    "adam_moments",
    "check_adam",
    "check_lbfgs",
    "lbfgs_batch",
]


_BN_BATCH = 256


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class SWARunner(SampledRunner, FromSettings):
    """SGD, then SWALR and an ``AveragedModel`` of the iterates from ``start`` on."""

    def __init__(
        self, strategy: Strategy, model: nn.Module, splits: DataSplits, settings: SGDSettings
    ) -> None:
        from torch.optim.swa_utils import AveragedModel

        opts, s = strategy.options, settings
        self.base_lr, batch_size = sgd_settings(strategy, s.lr, s.batch_size)
        super().__init__(model, splits, s.loss_fn, batch_size, s.seed)
        momentum = float(opts.get("momentum", s.momentum))
        self.opt = torch.optim.SGD(
            param_groups(model, s.weight_decay), lr=self.base_lr, momentum=momentum
        )
        self.swa_lr = float(opts.get("swa_lr", self.base_lr / 2))
        self.start = float(strategy.get("start"))
        self.anneal_steps = int(strategy.get("anneal_steps"))
        self.average = AveragedModel(model)
        self.scheduler: Any = None
        self.bn = _has_batchnorm(model)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    @property
    def averaged(self) -> int:
        """Iterates in the average (its ``n_averaged``, which the step history restores)."""
        return int(self.average.n_averaged)

    def step_state(self) -> list[torch.Tensor]:
        return list(self.average.state_dict().values())

    def step(self, fraction: float) -> SWAStepEntry:
        from torch.optim.swa_utils import SWALR

        if self.scheduler is None and fraction >= self.start:
            self.scheduler = SWALR(
                self.opt, swa_lr=self.swa_lr, anneal_epochs=self.anneal_steps, anneal_strategy="cos"
            )
        lr = self.lr
        value = self.update(self.opt)
        if self.scheduler is not None and not self.diverged:
            self.average.update_parameters(self.model)
            self.scheduler.step()
        return {"step": self.count, "fraction": fraction, "lr": lr, "loss": value,
                "averaged": self.averaged}  # fmt: skip

    def prepare_evaluation(self) -> None:
        if self.bn and self.averaged:
            from torch.optim.swa_utils import update_bn

            update_bn(([xb] for xb in pieces(self.splits.train_x, _BN_BATCH)), self.average)

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[nn.Module]:
        yield self.average.module if self.averaged else self.model

    def settings(self) -> dict[str, float]:
        return {"lr": self.lr}

    def report(self) -> RunnerReport:
        bn = "on the clock" if self.bn else "none (no BatchNorm)"
        return {"swa": {"swa_lr": self.swa_lr, "start": self.start, "averaged": self.averaged,
                        "anneal_steps": self.anneal_steps, "batchnorm_update": bn}}  # fmt: skip


def lbfgs_batch(strategy: Strategy, n: int) -> int:
    """L-BFGS's batch: its ``m``, else HF's default (min(2048, n/2)).

    Raises:
        ValueError: If it does not fit the ``n`` training samples.
    """
    m = int(strategy.options.get("m", max(1, default_m(n))))
    if not 1 <= m <= n:
        raise ValueError(f"the L-BFGS batch lbfgs:m={m} must hold 1 to the {n} training samples")
    return m


class LBFGSRunner(SampledRunner, FromSettings):
    """``torch.optim.LBFGS`` (strong Wolfe) on one batch per step, in HF's model mode."""

    def __init__(
        self, strategy: Strategy, model: nn.Module, splits: DataSplits, settings: SGDSettings
    ) -> None:
        s = settings
        super().__init__(model, splits, s.loss_fn, lbfgs_batch(strategy, splits.num_train), s.seed)
        groups = param_groups(model, s.weight_decay)
        self.decayed = [p for g in groups if g["weight_decay"] for p in g["params"]]
        self.weight_decay = s.weight_decay
        self.opt = torch.optim.LBFGS(
            [p for g in groups for p in g["params"]],
            lr=float(strategy.get("lr")),
            max_iter=int(strategy.get("max_iter")),
            history_size=int(strategy.get("history_size")),
            line_search_fn="strong_wolfe",
        )
        self.totals = (0, 0)  # LBFGS's running counts of iterations and evaluations

    def _objective(self, x: Batchable, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(self.model(x), y)
        if self.weight_decay:
            loss = loss + 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self.decayed)
        return loss

    def step(self, fraction: float) -> LBFGSStepEntry:
        x, y = self.batches.next()
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()

        def closure() -> torch.Tensor:
            self.opt.zero_grad(set_to_none=True)
            loss = self._objective(x, y)
            loss.backward()
            return loss

        try:
            before = float(self.opt.step(closure).detach())
            with torch.no_grad():
                after = float(self._objective(x, y))
        finally:
            for module, training in modes.items():
                module.training = training
        self.count += 1
        state = self.opt.state[self.opt.param_groups[0]["params"][0]]
        totals = (int(state.get("n_iter", 0)), int(state.get("func_evals", 0)))
        iterations, evals = totals[0] - self.totals[0], totals[1] - self.totals[1]
        self.totals = totals
        self.diverged = not (math.isfinite(after) and _finite(self.model))
        return {"step": self.count, "fraction": fraction, "loss": before, "loss_after": after,
                "iterations": iterations, "function_evals": evals}  # fmt: skip

    def settings(self) -> dict[str, float]:
        return {"lr": float(self.opt.param_groups[0]["lr"])}


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def adam_moments(state: dict[str, Any] | None, model: nn.Module) -> list[dict[str, Any]] | None:
    """Per parameter (in ``model.parameters()`` order), the moments of a saved Adam state.

    ``state`` is an optimizer ``state_dict`` as ``torch.save`` wrote it. Its
    entries are matched to the model's parameters by the names torch saved
    with them (``param_names``), or, without names, only when it has one group
    holding every parameter in the model's order; each must have ``exp_avg``
    and ``exp_avg_sq`` of its parameter's shape. Otherwise ``None``.
    """
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        return None
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return None
    ids = [i for g in groups for i in g.get("params", [])]
    names = [n for g in groups for n in g.get("param_names", [])]
    named = dict(model.named_parameters())
    if names and len(names) == len(ids) and set(names) == set(named):
        index_of = dict(zip(names, ids, strict=True))
        order = [index_of[n] for n in named]
    elif len(groups) == 1 and ids == list(range(len(named))):
        order = ids
    else:
        return None
    out = []
    for i, p in zip(order, model.parameters(), strict=True):
        entry = state["state"].get(i)
        if not isinstance(entry, dict):
            return None
        avg, sq = entry.get("exp_avg"), entry.get("exp_avg_sq")
        if not (isinstance(avg, torch.Tensor) and isinstance(sq, torch.Tensor)):
            return None
        if avg.shape != p.shape or sq.shape != p.shape:
            return None
        step = entry.get("step", 0)
        out.append({"step": torch.as_tensor(float(step)), "exp_avg": avg, "exp_avg_sq": sq})
    return out


def _saved_lr(state: dict[str, Any] | None) -> float | None:
    groups = (state or {}).get("param_groups") or [{}]
    lr = groups[0].get("lr") if isinstance(groups[0], dict) else None
    if lr is None or not LIMITS["lr"].accepts(lr):  # a finite rate > 0, not a bool
        return None
    return float(lr)


class AdamRunner(ScheduledRunner):
    """``torch.optim.Adam`` or ``AdamW`` from the checkpoint, constant or cosine."""

    @classmethod
    def build(cls, strategy: Strategy, context: RunnerContext) -> AdamRunner:
        """The runner of its strategy (the registry's builder)."""
        c = context
        return cls(strategy, c.model, c.splits, c.settings, c.optimizer_state)

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        settings: SGDSettings,
        optimizer_state: dict[str, Any] | None = None,
    ) -> None:
        opts, s = strategy.options, settings
        batch_size = sgd_settings(strategy, ADAM_DEFAULT_LR, s.batch_size)[1]  # its own rate
        super().__init__(model, splits, s.loss_fn, batch_size, s.seed)
        cls = torch.optim.AdamW if strategy.entry.settings["decoupled"] else torch.optim.Adam
        moments = adam_moments(optimizer_state, model)
        saved_lr = _saved_lr(optimizer_state) if moments is not None else None
        if "lr" in opts:
            self.base_lr, self.lr_source = float(opts["lr"]), "option"
        elif saved_lr is not None:
            self.base_lr, self.lr_source = saved_lr, "the checkpoint's Adam state"
        else:
            self.base_lr, self.lr_source = ADAM_DEFAULT_LR, f"default {ADAM_DEFAULT_LR} (not tuned)"
        self.schedule = make_schedule(strategy.get("schedule"), self.base_lr, evaluations=1)
        self.cosine = strategy.get("schedule") == "cosine"
        betas = (float(strategy.get("beta1")), float(strategy.get("beta2")))
        self.opt = cls(
            param_groups(model, s.weight_decay),
            lr=self.base_lr,
            betas=betas,
            eps=float(strategy.get("eps")),
        )
        self.moments = "the checkpoint's" if moments is not None else "fresh"
        if moments is not None:
            for p, entry in zip(model.parameters(), moments, strict=True):
                self.opt.state[p] = {k: v.to(p.device, p.dtype).clone() for k, v in entry.items()}
                self.opt.state[p]["step"] = entry["step"].float()
        self.lr = self.base_lr

    def report(self) -> RunnerReport:
        schedule = "cosine" if self.cosine else "constant"
        return {"adam": {"lr": self.base_lr, "lr_source": self.lr_source,
                         "moments": self.moments, "schedule": schedule}}  # fmt: skip


class ScheduleFreeRunner(SampledRunner, FromSettings):
    """``schedulefree.SGDScheduleFree``; its x (``eval()``) is evaluated and saved."""

    def __init__(
        self, strategy: Strategy, model: nn.Module, splits: DataSplits, settings: SGDSettings
    ) -> None:
        from schedulefree import SGDScheduleFree

        s = settings
        self.base_lr, batch_size = sgd_settings(strategy, s.lr, s.batch_size)
        super().__init__(model, splits, s.loss_fn, batch_size, s.seed)
        self.opt = SGDScheduleFree(
            param_groups(model, s.weight_decay),
            lr=self.base_lr,
            momentum=float(strategy.get("momentum")),
            warmup_steps=int(strategy.get("warmup_steps")),
            foreach=False,
        )
        self.opt.train()
        for group in self.opt.param_groups:  # z as its first step would make it, so that
            for p in group["params"]:  # the step history can hold it from the start
                self.opt.state[p]["z"] = p.detach().clone()
        self.bn = _has_batchnorm(model)
        self.at_x = False

    def step_state(self) -> list[torch.Tensor]:
        return [self.opt.state[p]["z"] for g in self.opt.param_groups for p in g["params"]]

    def _swap(self, to_x: bool) -> None:
        """Move the parameters to x (``eval()``) or back to y (``train()``), uninterrupted:
        a signal halfway would leave some at each."""
        with signals_held():
            self.opt.eval() if to_x else self.opt.train()

    def step(self, fraction: float) -> SGDStepEntry:
        value = self.update(self.opt)
        return {"step": self.count, "fraction": fraction, "lr": self.base_lr, "loss": value}

    def prepare_evaluation(self) -> None:
        if self.bn and self.count:  # the package's recipe: statistics at x, train mode
            self._swap(to_x=True)
            self.at_x = True
            modes = {m: m.training for m in self.model.modules()}
            self.model.train()
            with torch.no_grad():
                # the train-eval subset: a seeded sample of train, not its first (sorted) part
                for xb in pieces(self.splits.train_eval_x, _BN_BATCH, most=50):
                    self.model(xb)
            for module, training in modes.items():
                module.training = training

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[nn.Module]:
        if not self.at_x:
            self._swap(to_x=True)
        try:
            yield self.model
        finally:
            self._swap(to_x=False)
            self.at_x = False

    def settings(self) -> dict[str, float]:
        return {"lr": self.base_lr}

    def report(self) -> RunnerReport:
        bn = "on the clock" if self.bn else "none (no BatchNorm)"
        return {"schedulefree": {"lr": self.base_lr, "batchnorm_update": bn}}


def check_lbfgs(strategy: Strategy, facts: StartingFacts) -> None:
    """L-BFGS's batch fits the data (:func:`lbfgs_batch`)."""
    lbfgs_batch(strategy, facts.n_train)


def check_adam(strategy: Strategy, facts: StartingFacts) -> None:
    """Adam's batch size is known and fits the data (its rate is its own)."""
    check_sgd_batch(sgd_settings(strategy, ADAM_DEFAULT_LR, facts.batch_size)[1], facts.n_train)
