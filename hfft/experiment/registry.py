"""Which runner runs which strategy, and whether a strategy fits the data.

:func:`make_runner` builds the runner of a parsed strategy with its
hyperparameters resolved (the strategy's options, else the checkpoint's);
:func:`check_strategy` checks the same without building anything, so that
``compare`` can refuse a strategy before the first run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfft.experiment.auto import AutoRunner
from hfft.experiment.late_phase import ADAM_DEFAULT_LR, late_phase_runner, lbfgs_batch
from hfft.experiment.runners import (
    HFRunner,
    Runner,
    SGDRunner,
    SGDSettings,
    check_sgd_batch,
    hf_batch_sizes,
    sgd_settings,
)
from hfft.experiment.strategies import EXTENDED_STRATEGIES
from hfft.optim import distributed

if TYPE_CHECKING:
    from torch import nn

    from hfft.experiment.splits import DataSplits
    from hfft.experiment.strategies import Strategy
    from hfft.optim.output_hessians import Loss

__all__ = ["check_strategy", "make_runner"]


def check_strategy(
    strategy: Strategy,
    n: int,
    *,
    lr: float | None,
    batch_size: int | None,
    eval_batch_size: int | None,
) -> None:
    """Whether a strategy can run on ``n`` training samples, without building anything.

    ``compare`` checks every strategy with this before the first run starts.

    Raises:
        ValueError: For batches that do not fit the data or a missing learning
            rate or batch size, in one sentence.
    """
    if strategy.name in EXTENDED_STRATEGIES and distributed.is_distributed():
        raise ValueError(
            f"strategy {strategy.name!r} does not run data-parallel yet; run it in one process"
        )
    if strategy.is_hf or strategy.is_auto:
        m = strategy.options.get("m")
        hf_batch_sizes(None if m is None else int(m), n, eval_batch_size)
    if strategy.name == "lbfgs":
        lbfgs_batch(strategy, n)
    elif strategy.name in ("adam", "adamw"):
        check_sgd_batch(sgd_settings(strategy, ADAM_DEFAULT_LR, batch_size)[1], n)  # Adam's lr
    elif not strategy.is_hf:
        check_sgd_batch(sgd_settings(strategy, lr, batch_size)[1], n)


def make_runner(
    strategy: Strategy,
    model: nn.Module,
    splits: DataSplits,
    *,
    loss_fn: Loss,
    lr: float | None,
    batch_size: int | None,
    momentum: float,
    weight_decay: float,
    eval_batch_size: int | None,
    evaluations: int,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
) -> Runner:
    """The runner of a strategy, with hyperparameters resolved.

    ``optimizer_state`` is the checkpoint's saved optimizer state, if any
    (``adam`` and ``adamw`` start from its moments).

    Raises:
        ValueError: When an SGD strategy (or ``auto``) has no learning rate or
            batch size, or HF's batches do not fit the data.
    """
    check_strategy(
        strategy,
        splits.num_train,
        lr=lr,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )
    if strategy.is_hf:
        return HFRunner(
            strategy,
            model,
            splits,
            loss_fn=loss_fn,
            weight_decay=weight_decay,
            eval_batch_size=eval_batch_size,
            seed=seed,
        )
    settings = SGDSettings(loss_fn, lr, batch_size, momentum, weight_decay, seed)
    if strategy.name in EXTENDED_STRATEGIES:
        return late_phase_runner(strategy, model, splits, settings, optimizer_state)
    if strategy.is_auto:
        return AutoRunner(
            strategy,
            model,
            splits,
            settings,
            eval_batch_size=eval_batch_size,
            evaluations=evaluations,
        )
    return SGDRunner(strategy, model, splits, settings, evaluations=evaluations)
