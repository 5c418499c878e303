"""Will HF make progress from this checkpoint? A few HF steps, as ``finetune`` takes them.

The products can be exact and deterministic and HF still do nothing: when the
model fits its training data closely, the step fitted to B raises the loss on
the disjoint batch B̄, every step is rejected and the damping climbs to its cap.
:func:`progress_check` takes :data:`PROBE_STEPS` steps of ``finetune --strategy
hf`` (its batch sizes, sampler and optimizer, on a copy of the model) and
measures the loss on held-out data (the validation split, else the test split)
before and after. A run that makes no or little progress is a warning, not a
failure: the model is fine for HF, HF is not useful for it here.
"""

from __future__ import annotations

import copy
import math

from torch import Tensor, nn

from hfft._text import clipped
from hfft.diagnostics.measure import PASS, WARN, Check
from hfft.experiment.data.splits import DataSplits
from hfft.experiment.data.task import Task
from hfft.experiment.run.evaluation import evaluate
from hfft.experiment.strategies.registry import Strategy
from hfft.experiment.strategies.runners import HFRunner
from hfft.optim.batches import Batchable, take

__all__ = ["PROBE_STEPS", "progress_check"]

PROBE_STEPS = 5
"""HF steps the check takes."""

HELD_OUT = 1024
"""Held-out samples the loss is measured on, at most."""


def progress_check(
    model: nn.Module,
    task: Task,
    splits: DataSplits,
    weight_decay: float,
    chunk_size: int | None = None,
    seed: int = 0,
) -> Check:
    """A few HF steps (the defaults of ``hf``, with ``chunk_size``) on a copy of ``model``.

    Passes when HF took at least half of its steps and the held-out loss went
    down; otherwise a warning whose detail says how many steps were taken, ρ
    on B̄, what that means and what to try. Steps that fail (memory, say) are
    a warning too: every other check has passed, and this one only predicts.
    """
    name = f"HF progress in {PROBE_STEPS} steps [eval]"
    x, y = _held_out(splits)
    loss_fn = task.loss()
    probe = copy.deepcopy(model)
    strategy = Strategy("hf", {} if chunk_size is None else {"chunk_size": chunk_size})
    try:
        before = evaluate(probe, x, y, task, loss_fn)["loss"]
        runner = HFRunner(
            strategy,
            probe,
            splits,
            loss_fn=loss_fn,
            weight_decay=weight_decay,
            eval_batch_size=None,
            seed=seed,
        )
        for k in range(PROBE_STEPS):
            runner.step(k / PROBE_STEPS)
        after = evaluate(probe, x, y, task, loss_fn)["loss"]
    except (RuntimeError, ValueError) as err:  # out of memory, data too small for B and B̄
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Check(name, WARN, None, None, f"HF steps could not be taken: {clipped(first)}")
    change = (after - before) / abs(before) if before else after - before
    progress = runner.progress.to_dict()
    where = f"held-out loss {before:.4g} → {after:.4g}"
    if progress["note"] is None and math.isfinite(change) and change < 0:
        taken = f"{progress['accepted']} of {progress['steps']} steps taken"
        return Check(name, PASS, change, 0.0, f"{taken}, {where}")
    why = progress["note"] or (
        f"HF took {progress['accepted']} of {progress['steps']} steps, but the {where} did "
        "not go down: the steps fit the training data without carrying over to held-out data."
    )
    return Check(name, WARN, change, 0.0, f"{why} ({where})")


def _held_out(splits: DataSplits) -> tuple[Batchable, Tensor]:
    """Up to :data:`HELD_OUT` samples of the validation split, else of the test split."""
    if splits.valid_y.shape[0]:
        x, y = splits.valid_x, splits.valid_y
    else:
        x, y = splits.test_x, splits.test_y
    n = min(HELD_OUT, y.shape[0])
    return take(x, slice(0, n)), y[:n]
