"""Build a strategy's runner, and check a strategy against the data first.

:func:`check_strategy` runs the check a strategy's entry names (and refuses a
strategy that does not run data-parallel under ``torchrun``) without building
anything, so that ``compare`` can refuse a strategy before the first run
starts; :func:`make_runner` checks and then calls the entry's builder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfft.experiment.strategies.interface import SGDSettings
from hfft.experiment.strategies.registry import RunnerContext, StartingFacts

if TYPE_CHECKING:
    from torch import nn

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.strategies.interface import Runner
    from hfft.experiment.strategies.registry import Strategy
    from hfft.optim.output_hessians import Loss

__all__ = ["check_strategy", "make_runner"]


def check_strategy(
    strategy: Strategy,
    n: int,
    *,
    lr: float | None,
    batch_size: int | None,
    eval_batch_size: int | None,
    loss_fn: Loss | None = None,
    float_targets: bool = False,
) -> None:
    """Whether a strategy can run on ``n`` training samples, without building anything.

    ``compare`` checks every strategy with this before the first run starts. ``loss_fn``
    and ``float_targets`` (whether the training targets are floating point) let a
    strategy that supports only some losses refuse the others (``kfac``).

    Raises:
        StrategyUnavailable: For a strategy that cannot run on this problem or
            installation whatever its options (its loss, a missing package).
        ValueError: For batches that do not fit the data, a missing learning rate or
            batch size, or a strategy that does not run data-parallel under torchrun,
            in one sentence.
    """
    spec = strategy.entry
    if not spec.data_parallel:
        from hfft.optim import distributed

        if distributed.is_distributed():
            raise ValueError(
                f"strategy {strategy.name!r} does not run data-parallel yet; run it in one process"
            )
    check = spec.checker()
    if check is not None:
        facts = StartingFacts(n, lr, batch_size, eval_batch_size, loss_fn, float_targets)
        check(strategy, facts)


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
    """The runner of a strategy, checked first (:func:`check_strategy`), built by its entry.

    ``lr``, ``batch_size`` and ``momentum`` are the checkpoint's (a strategy's own
    options take precedence); ``optimizer_state`` is its saved optimizer state, if any
    (``adam`` and ``adamw`` start from its moments).

    Raises:
        ValueError: When the strategy cannot run on the data (see :func:`check_strategy`).
    """
    check_strategy(
        strategy,
        splits.num_train,
        lr=lr,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        loss_fn=loss_fn,
        float_targets=splits.train_y.is_floating_point(),
    )
    settings = SGDSettings(loss_fn, lr, batch_size, momentum, weight_decay, seed)
    context = RunnerContext(model, splits, settings, eval_batch_size, evaluations, optimizer_state)
    return strategy.entry.builder()(strategy, context)
