"""The second-order and preconditioned methods practitioners use today, beside HF (issue #28).

* ``kfac`` — K-FAC (Martens & Grosse 2015): each step draws B (``m``) and a
  disjoint B̄ as HF does (the same sampler, so the same batches as ``hf`` at
  the same ``m`` and seed), computes K-FAC's factors on B
  (:class:`hfft.optim.kfac.KFAC`, every ``update_every`` steps), steps along
  ``−(K + (λ + wd) I)⁻¹ g`` with Martens & Grosse's step length from one exact
  GGN product and adapts λ by the Levenberg-Marquardt rule from ρ on B̄
  (:func:`hfft.optim.kfac_step.kfac_step`); a step that does not lower the
  objective on B̄ is rejected and λ grows, as in HF. It runs in HF's model mode
  (eval). Martens & Grosse's momentum and running averages of the factors are
  left out: each step's factors are those of its own B.
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
  decoupled: the problem's L2 factor.

``soap`` and ``muon`` draw SGD's seeded batches at the checkpoint's batch size.
Each reports its settings in ``metrics.json`` (``kfac``, ``soap``, ``muon``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfft.experiment.data.sampling import BatchSampler, BatchStream
from hfft.experiment.strategies.catalog import (
    DEFAULT_EVAL_BATCH,
    SOAP_DEFAULT_LR,
    default_m,
    largest_m,
)
from hfft.experiment.strategies.interface import Runner
from hfft.experiment.strategies.runners import SampledRunner, check_sgd_batch
from hfft.models import param_groups
from hfft.optim.batches import take
from hfft.optim.damping import MAX_DAMPING_FACTOR, adapt_damping, raise_damping

if TYPE_CHECKING:
    from torch import Tensor

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.records import KFACStepEntry, RunnerReport, SGDStepEntry
    from hfft.experiment.strategies.interface import SGDSettings
    from hfft.experiment.strategies.registry import RunnerContext, StartingFacts, Strategy
    from hfft.optim.batches import Batchable
    from hfft.optim.kfac import KFAC

__all__ = [
    "EXTRA",
    "KFACRunner",
    "MuonRunner",
    "SOAPRunner",
    "check_kfac",
    "check_muon",
    "check_soap",
    "kfac_batch_sizes",
]

EXTRA = "soap needs pytorch-optimizer, the second-order extra: pip install 'hfft[second-order]'"

_KFAC_SEED_OFFSET = 2  # the Monte-Carlo labels' generator: not the sampler's nor augmentation's


def _soap_class() -> Any:
    try:
        from pytorch_optimizer import SOAP
    except ImportError:
        raise ValueError(EXTRA) from None
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


class SOAPRunner(SampledRunner):
    """``pytorch_optimizer.SOAP`` on SGD's seeded batches."""

    @classmethod
    def build(cls, strategy: Strategy, context: RunnerContext) -> SOAPRunner:
        """The runner of ``soap`` (the registry's builder)."""
        return cls(strategy, context.model, context.splits, context.settings)

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


class MuonRunner(SampledRunner):
    """``torch.optim.Muon`` on the weight matrices and SGD on the rest, on SGD's batches."""

    @classmethod
    def build(cls, strategy: Strategy, context: RunnerContext) -> MuonRunner:
        """The runner of ``muon`` (the registry's builder)."""
        return cls(strategy, context.model, context.splits, context.settings)

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


def kfac_batch_sizes(m: int | None, n: int, eval_batch_size: int | None) -> tuple[int, int]:
    """K-FAC's batches B (``m``, default HF's min(2048, n/2)) and B̄ (default min(1024, n − m)).

    Raises:
        ValueError: If they cannot be two disjoint batches of the ``n`` training samples.
    """
    what = f"kfac:m={m}" if m is not None else "the default m"
    m = default_m(n) if m is None else int(m)
    if m < 1 or m >= n:
        raise ValueError(
            f"K-FAC's batch B ({what}) must hold 1 to {n - 1} of the {n} training samples, "
            f"leaving samples for its second batch B̄; choose kfac:m={max(1, largest_m(n))} or less"
        )
    m_bar = min(DEFAULT_EVAL_BATCH, n - m) if eval_batch_size is None else eval_batch_size
    if m_bar < 1 or m + m_bar > n:
        raise ValueError(
            f"K-FAC needs two disjoint batches of the {n} training samples, B of {m} ({what}) "
            f"and B̄ of {m_bar} (--eval-batch-size), but {m + m_bar} do not fit; choose a "
            "smaller kfac:m= or --eval-batch-size"
        )
    return m, m_bar


class KFACRunner(Runner):
    """K-FAC steps on disjoint batches B (``m``) and B̄, in HF's model mode."""

    @classmethod
    def build(cls, strategy: Strategy, context: RunnerContext) -> KFACRunner:
        """The runner of ``kfac`` (the registry's builder)."""
        return cls(strategy, context.model, context.splits, context.settings,
                   eval_batch_size=context.eval_batch_size)  # fmt: skip

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        splits: DataSplits,
        settings: SGDSettings,
        *,
        eval_batch_size: int | None,
    ) -> None:
        from hfft.optim.curvature import LinearizationCache
        from hfft.optim.kfac import coverage

        s, get = settings, strategy.get
        n = splits.num_train
        self.m, self.m_bar = kfac_batch_sizes(get("m"), n, eval_batch_size)
        self.model, self.loss_fn, self.weight_decay = model, s.loss_fn, s.weight_decay
        groups = param_groups(model, s.weight_decay)
        self.params = [p for g in groups for p in g["params"] if p.requires_grad]
        self.wd = torch.cat([torch.full((p.numel(),), float(g["weight_decay"]), dtype=p.dtype,
                                        device=p.device)
                             for g in groups for p in g["params"] if p.requires_grad])  # fmt: skip
        self.sampler = BatchSampler(n, seed=s.seed, device=splits.train_y.device)
        self.batches = BatchStream(splits.train_x, splits.train_y, self._draw)
        device = self.params[0].device
        self.gen = torch.Generator(device=device).manual_seed(s.seed + _KFAC_SEED_OFFSET)
        self.fisher, self.update_every = str(get("fisher")), int(get("update_every"))
        self.lr, self.chunk_size = float(get("lr")), get("chunk_size")
        self.adapt = bool(get("adapt_damping"))
        self.damping = float(get("damping"))
        given = get("max_damping")
        self.max_damping = MAX_DAMPING_FACTOR * self.damping if given is None else float(given)
        self.lin_cache = LinearizationCache()
        self.factors: KFAC | None = None
        self.covered, self.uncovered = coverage(model, self.params)
        self.step_samples = self.m
        self.count = self.accepted = 0
        # one-time tracing of the linearisation, like compilation: before the clock starts
        self.setup_seconds = self._prepare(take(splits.train_x, slice(0, self.m)))

    def _prepare(self, inputs: Batchable) -> float:
        """Trace the GGN products' linearisation for B's chunk shapes; the seconds it took."""
        from hfft.optim.flat import ModelState
        from hfft.optim.step_context import step_mode

        start = time.perf_counter()
        state = ModelState(self.model, self.params)
        size = self.chunk_size or self.m
        with step_mode(self.model, "eval"):
            for k in sorted({min(size, self.m), self.m % size} - {0}):
                head = take(inputs, slice(0, k))
                self.lin_cache.get(self.model, state, [p.detach() for p in self.params], head)
        return time.perf_counter() - start

    def _draw(self) -> Tensor:
        return torch.cat(self.sampler.disjoint_pair(self.m, self.m_bar))

    def step(self, fraction: float) -> KFACStepEntry:
        from hfft.optim.kfac import KFAC
        from hfft.optim.kfac_step import kfac_step
        from hfft.optim.step_context import step_mode

        x, y = self.batches.next()
        b, rest = slice(0, self.m), slice(self.m, None)
        batch, eval_batch = (take(x, b), y[b]), (take(x, rest), y[rest])
        with step_mode(self.model, "eval"):
            if self.factors is None or self.count % self.update_every == 0:
                self.factors = KFAC.compute(
                    self.model, self.loss_fn, batch[0], batch[1], self.params,
                    fisher=self.fisher, generator=self.gen, chunk_size=self.chunk_size,
                )  # fmt: skip
                self.covered, self.uncovered = self.factors.covered, self.factors.uncovered
            result = kfac_step(
                self.model, self.loss_fn, self.params, self.wd, batch, eval_batch, self.factors,
                damping=self.damping, weight_decay=self.weight_decay, lr=self.lr,
                chunk_size=self.chunk_size, lin_cache=self.lin_cache,
            )  # fmt: skip
        self.count += 1
        self.accepted += result.accepted
        damping, self.damping = self.damping, self._next_damping(result.rho, result.accepted)
        return {"step": self.count, "fraction": fraction, "loss": _finite(result.loss),
                "loss_after": _finite(result.loss_after), "rho": _finite(result.rho),
                "damping": damping, "alpha": result.alpha,
                "accepted": result.accepted}  # fmt: skip

    def _next_damping(self, rho: float, accepted: bool) -> float:
        """The LM rule's λ; after a rejected step at least 3/2 × λ (as HF)."""
        if not self.adapt:
            return self.damping
        adapted = adapt_damping(self.damping, rho, upper=self.max_damping)
        return adapted if accepted else max(adapted, raise_damping(self.damping, self.max_damping))

    def settings(self) -> dict[str, float]:
        return {"damping": self.damping}

    def report(self) -> RunnerReport:
        note = None
        if self.uncovered:
            shown = ", ".join(self.uncovered[:5]) + (", …" if len(self.uncovered) > 5 else "")
            note = (
                f"K-FAC treats {len(self.uncovered)} of the "
                f"{len(self.covered) + len(self.uncovered)} parameter tensors as the identity, "
                f"as no Linear, Conv1d or Conv2d layer it supports holds them ({shown})"
            )
        return {"kfac": {"m": self.m, "eval_batch_size": self.m_bar, "fisher": self.fisher,
                         "update_every": self.update_every, "covered": self.covered,
                         "uncovered": self.uncovered, "note": note, "accepted": self.accepted,
                         "damping": self.damping}}  # fmt: skip


def _finite(value: float) -> float | None:
    """A measured value as JSON keeps it: ``None`` when not finite."""
    return value if math.isfinite(value) else None


def check_kfac(strategy: Strategy, facts: StartingFacts) -> None:
    """K-FAC's batches B and B̄ fit the data (:func:`kfac_batch_sizes`)."""
    m = strategy.options.get("m")
    kfac_batch_sizes(None if m is None else int(m), facts.n_train, facts.eval_batch_size)


def check_soap(strategy: Strategy, facts: StartingFacts) -> None:
    """pytorch-optimizer is installed and SOAP's batch is known and fits the data."""
    _soap_class()
    check_sgd_batch(_batch_size(strategy, facts.batch_size), facts.n_train)


def check_muon(strategy: Strategy, facts: StartingFacts) -> None:
    """The checkpoint's SGD rate is known (for the non-matrix parameters) and the batch fits."""
    _checkpoint_rate(strategy, facts.lr)
    check_sgd_batch(_batch_size(strategy, facts.batch_size), facts.n_train)
