"""``kfac``: K-FAC (Martens & Grosse 2015) as a strategy beside HF (issue #28).

Each step draws B (``m``) and a disjoint B̄ as HF does (the same sampler and
sizes, :func:`hfft.experiment.strategies.runners.hf_batch_sizes`, so the same
batches as ``hf`` at the same ``m`` and seed), computes K-FAC's factors on B
(:class:`hfft.optim.kfac.KFAC`, every ``update_every`` steps), steps along
``−(K + (λ + wd) I)⁻¹ g`` with Martens & Grosse's step length from one exact
GGN product and adapts λ by the Levenberg-Marquardt rule from ρ on B̄
(:func:`hfft.optim.kfac_step.kfac_step`); a step that does not lower the
objective on B̄ is rejected and λ grows, as in HF. It runs in HF's model mode
(eval). Martens & Grosse's momentum and running averages of the factors are
left out: each step's factors are those of its own B.

K-FAC knows the output Hessians of cross-entropy on class indices and of the
squared error only (:func:`hfft.optim.kfac.unsupported_loss`):
:func:`check_kfac` (and HF's check, for ``preconditioner=kfac``) refuses any
other loss before the first run (:func:`kfac_loss_problem`). The runner reports its
settings in ``metrics.json`` (``kfac``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from hfft.experiment.data.sampling import BatchSampler, BatchStream
from hfft.experiment.strategies.interface import Runner
from hfft.experiment.strategies.registry import StrategyUnavailable
from hfft.experiment.strategies.runners import hf_batch_sizes, kfac_loss_problem
from hfft.models import param_groups
from hfft.optim.batches import take
from hfft.optim.damping import MAX_DAMPING_FACTOR, adapt_damping, raise_damping
from hfft.optim.flat import weight_decay_vector

if TYPE_CHECKING:
    from torch import Tensor

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.records import KFACStepEntry, RunnerReport
    from hfft.experiment.strategies.interface import SGDSettings
    from hfft.experiment.strategies.registry import RunnerContext, StartingFacts, Strategy
    from hfft.optim.batches import Batchable
    from hfft.optim.kfac import KFAC

__all__ = ["KFACRunner", "check_kfac", "kfac_batch_sizes", "kfac_loss_problem"]

_KFAC_SEED_OFFSET = 2  # the Monte-Carlo labels' generator: not the sampler's nor augmentation's


def kfac_batch_sizes(m: int | None, n: int, eval_batch_size: int | None) -> tuple[int, int]:
    """K-FAC's batches B and B̄: HF's (:func:`hf_batch_sizes`), named ``kfac`` in its errors.

    Raises:
        ValueError: If they cannot be two disjoint batches of the ``n`` training samples.
    """
    return hf_batch_sizes(m, n, eval_batch_size, method="K-FAC", name="kfac")


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
        self.wd = weight_decay_vector(groups)
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
        from hfft.optim.step_context import step_mode

        start = time.perf_counter()
        with step_mode(self.model, "eval"):
            self.lin_cache.trace(self.model, self.params, inputs, [self.m], self.chunk_size)
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
    """K-FAC supports the run's loss (:func:`kfac_loss_problem`), and its batches B and B̄ fit
    the data (:func:`kfac_batch_sizes`).

    Raises:
        StrategyUnavailable: For a loss K-FAC does not support.
        ValueError: For batches that do not fit, in one sentence.
    """
    problem = kfac_loss_problem(facts)
    if problem is not None:  # whatever its options: a suite that added kfac leaves it out
        raise StrategyUnavailable(problem)
    m = strategy.options.get("m")
    kfac_batch_sizes(None if m is None else int(m), facts.n_train, facts.eval_batch_size)
