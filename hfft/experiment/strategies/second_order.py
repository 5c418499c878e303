"""The preconditioned methods practitioners use today, beside HF (issue #28); K-FAC, the
second-order one, is in :mod:`hfft.experiment.strategies.kfac_runner`.

* ``soap`` — SOAP (Vyas et al. 2024, Adam in the eigenbasis of Shampoo's
  preconditioner) from pytorch-optimizer (``pytorch_optimizer.SOAP``), at the
  package's recommended settings (rate 3e-3, betas (0.95, 0.95), a new
  eigenbasis every 10 steps). pytorch-optimizer rather than heavyball: it keeps
  the plain ``torch.optim`` contract (``step()`` after ``backward()``, state in
  ``state_dict``), needs no ``torch.compile``, and maintains SOAP and Shampoo
  side by side. Its weight decay is decoupled (AdamW-style, the only kind it
  implements): by default the problem's L2 factor on the parameters that
  carry it, so SGD's small factor decays little. Its first step only sets up
  the preconditioner (the package's and the paper's behaviour).
* ``muon`` — ``torch.optim.Muon`` (Jordan et al. 2024) for the 2-D weight
  matrices (not embeddings), and SGD at the checkpoint's rate and momentum,
  with its L2 weight decay, for every other parameter (biases, convolution
  kernels, normalisation). Muon's rate is scaled by ``match_rms_adamw`` (Liu
  et al. 2025, *Muon is Scalable for LLM Training*): its update then has the
  RMS of an AdamW update, so it takes an AdamW rate, and by default the rate of
  hfft's ``adam``/``adamw`` peers (1e-3, not tuned to the checkpoint); Keller
  Jordan's ``original`` scaling wants Muon's own rate (0.02 in his recipe for
  training from scratch), far from a late-phase step. Muon's weight decay is
  decoupled, the problem's L2 factor on the matrices that carry it, and recorded
  (``weight_decay``, ``weight_decay_mode``).

``soap`` and ``muon`` draw SGD's seeded batches at the checkpoint's batch size.
Each reports its settings in ``metrics.json`` (``soap``, ``muon``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfft.experiment.strategies.catalog import SOAP_DEFAULT_LR
from hfft.experiment.strategies.registry import StrategyUnavailable
from hfft.experiment.strategies.runners import FromSettings, SampledRunner, check_sgd_batch
from hfft.models import param_groups

if TYPE_CHECKING:
    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.records import RunnerReport, SGDStepEntry
    from hfft.experiment.strategies.interface import SGDSettings
    from hfft.experiment.strategies.registry import StartingFacts, Strategy

__all__ = ["EXTRA", "MUON_DECAY", "MuonRunner", "SOAPRunner", "check_muon", "check_soap"]

EXTRA = "soap needs pytorch-optimizer, the second-order extra (pip install 'hfft[second-order]')"


def _soap_class() -> Any:
    """``pytorch_optimizer.SOAP``.

    Raises:
        StrategyUnavailable: When pytorch-optimizer is not installed (a suite that added
            ``soap`` leaves it out).
    """
    try:
        from pytorch_optimizer import SOAP
    except ImportError:
        raise StrategyUnavailable(EXTRA) from None
    return SOAP


def _batch_size(strategy: Strategy, batch_size: int | None) -> int:
    """The strategy's ``batch_size``, else the checkpoint's.

    Raises:
        ValueError: When neither gives one.
    """
    size = strategy.options.get("batch_size", batch_size)
    if size is None:
        raise ValueError(
            f"{strategy.name} needs the training batch size, which this checkpoint does not "
            "record; pass --batch-size"
        )
    return int(size)


class SOAPRunner(SampledRunner, FromSettings):
    """``pytorch_optimizer.SOAP`` on SGD's seeded batches."""

    def __init__(
        self, strategy: Strategy, model: nn.Module, splits: DataSplits, settings: SGDSettings
    ) -> None:
        soap, s = _soap_class(), settings
        super().__init__(model, splits, s.loss_fn, _batch_size(strategy, s.batch_size), s.seed)
        self.lr = float(strategy.get("lr"))
        self.lr_source = (
            "option"
            if "lr" in strategy.options
            else f"pytorch-optimizer's default {SOAP_DEFAULT_LR} (not tuned to the checkpoint)"
        )
        given = strategy.get("weight_decay")
        self.weight_decay = s.weight_decay if given is None else float(given)
        self.betas = (float(strategy.get("beta1")), float(strategy.get("beta2")))
        self.frequency = int(strategy.get("precondition_frequency"))
        self.opt = soap(
            param_groups(model, self.weight_decay),
            lr=self.lr,
            betas=self.betas,
            precondition_frequency=self.frequency,
        )

    def step(self, fraction: float) -> SGDStepEntry:
        value = self.update(self.opt)
        return {"step": self.count, "fraction": fraction, "lr": self.lr, "loss": value}

    def settings(self) -> dict[str, float]:
        return {"lr": self.lr}

    def report(self) -> RunnerReport:
        return {
            "soap": {
                "lr": self.lr,
                "lr_source": self.lr_source,
                "grafting": "none: SOAP runs Adam in Shampoo's eigenbasis, with Adam's step size",
                "betas": list(self.betas),
                "precondition_frequency": self.frequency,
                "weight_decay": self.weight_decay,
                "weight_decay_mode": "decoupled (AdamW-style)",
            }
        }


def _muon_split(model: nn.Module) -> set[int]:
    """The parameters Muon updates: 2-D weight matrices that are not embeddings."""
    embeddings = {
        id(p)
        for m in model.modules()
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        for p in m.parameters(recurse=False)
    }
    return {id(p) for p in model.parameters() if p.ndim == 2 and id(p) not in embeddings}


def _checkpoint_rate(strategy: Strategy, lr: float | None) -> float:
    """The checkpoint's SGD rate for the parameters Muon does not take.

    Raises:
        ValueError: When the checkpoint does not record one.
    """
    if lr is None:
        raise ValueError(
            f"{strategy.name} needs the training learning rate (SGD updates the parameters "
            "that are not weight matrices), which this checkpoint does not record; pass --lr"
        )
    return float(lr)


MUON_DECAY = "decoupled (AdamW-style): θ ← (1 − lr · weight_decay) θ, at Muon's unscaled rate"
"""``muon``'s ``weight_decay_mode``: ``torch.optim.Muon`` decays before its update, with the
rate ``lr`` as given (``adjust_lr_fn`` scales only the orthogonalised update)."""


class MuonRunner(SampledRunner, FromSettings):
    """``torch.optim.Muon`` on the weight matrices and SGD on the rest, on SGD's batches."""

    def __init__(
        self, strategy: Strategy, model: nn.Module, splits: DataSplits, settings: SGDSettings
    ) -> None:
        s = settings
        self.sgd_lr, self.sgd_momentum = _checkpoint_rate(strategy, s.lr), s.momentum
        super().__init__(model, splits, s.loss_fn, _batch_size(strategy, s.batch_size), s.seed)
        self.lr = float(strategy.get("lr"))
        self.adjust = str(strategy.get("adjust_lr_fn"))
        self.momentum = float(strategy.get("momentum"))
        matrices = _muon_split(model)
        groups = param_groups(model, s.weight_decay)
        muon = _part(groups, lambda p: id(p) in matrices)
        rest = _part(groups, lambda p: id(p) not in matrices)
        # what Muon applies, read off its groups (each sets it: Muon's own default is 0.1)
        self.weight_decay = max((float(g["weight_decay"]) for g in muon), default=0.0)
        self.opts: list[torch.optim.Optimizer] = []
        if muon:
            self.opts.append(
                torch.optim.Muon(muon, lr=self.lr, momentum=self.momentum, adjust_lr_fn=self.adjust)
            )
        if rest:
            self.opts.append(torch.optim.SGD(rest, lr=self.sgd_lr, momentum=self.sgd_momentum))
        self.counts = [_count(muon), _count(rest)]

    def step(self, fraction: float) -> SGDStepEntry:
        """One update of both optimizers from one backward pass, in training mode; a
        non-finite loss skips it and marks the run diverged (as SGD's update does)."""
        self.model.train()
        x, y = self.batches.next()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        value = float(loss.detach())  # also the per-step synchronisation fair timing needs
        if math.isfinite(value):
            loss.backward()
            for opt in self.opts:
                opt.step()
        self.count += 1
        self.diverged = not math.isfinite(value)
        return {"step": self.count, "fraction": fraction, "lr": self.lr, "loss": value}

    def settings(self) -> dict[str, float]:
        return {"lr": self.lr}

    def report(self) -> RunnerReport:
        (muon_tensors, muon_parameters), (sgd_tensors, sgd_parameters) = self.counts
        return {
            "muon": {
                "lr": self.lr,
                "adjust_lr_fn": self.adjust,
                "momentum": self.momentum,
                "weight_decay": self.weight_decay,
                "weight_decay_mode": MUON_DECAY,
                "muon_tensors": muon_tensors,
                "muon_parameters": muon_parameters,
                "sgd_tensors": sgd_tensors,
                "sgd_parameters": sgd_parameters,
                "sgd_lr": self.sgd_lr,
                "sgd_momentum": self.sgd_momentum,
            }
        }


def _part(groups: list[dict[str, Any]], keep: Any) -> list[dict[str, Any]]:
    """The parameter groups restricted to the parameters ``keep`` accepts (empty ones left out)."""
    parts = [{**g, "params": [p for p in g["params"] if keep(p)]} for g in groups]
    return [g for g in parts if g["params"]]


def _count(groups: list[dict[str, Any]]) -> tuple[int, int]:
    """Tensors and scalar parameters in ``groups``."""
    tensors = [p for g in groups for p in g["params"]]
    return len(tensors), sum(p.numel() for p in tensors)


def check_soap(strategy: Strategy, facts: StartingFacts) -> None:
    """pytorch-optimizer is installed and SOAP's batch is known and fits the data."""
    _soap_class()
    check_sgd_batch(_batch_size(strategy, facts.batch_size), facts.n_train)


def check_muon(strategy: Strategy, facts: StartingFacts) -> None:
    """The checkpoint's SGD rate is known (for the non-matrix parameters) and the batch fits."""
    _checkpoint_rate(strategy, facts.lr)
    check_sgd_batch(_batch_size(strategy, facts.batch_size), facts.n_train)
