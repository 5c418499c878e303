"""A model's loss and metrics on the data splits, outside any training clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hfft.optim import distributed
from hfft.optim.batches import Batchable, batch_size, pieces, take

if TYPE_CHECKING:
    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.data.task import Task
    from hfft.optim.output_hessians import Loss

__all__ = ["SPLITS", "evaluate", "evaluate_splits"]

SPLITS = ("train_eval", "valid", "test")


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Batchable, y: Tensor, task: Task, loss_fn: Loss, batch: int = 1024
) -> dict[str, float]:
    """The task's metrics (loss, accuracy or RMSE and R², …) of ``model`` on ``(x, y)``.

    In eval mode (the model's modes are restored afterwards), in batches whose
    sums are combined exactly: the loss is the mean over the loss's own
    normaliser (non-ignored targets, elements, samples), not over batches.
    Streamed inputs are read ahead by their workers.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    n = batch_size(x)
    if distributed.is_distributed():  # each rank evaluates its shard; sums are reduced
        part = distributed.shard(n)
        x, y = take(x, part), y[part]
    totals: dict[str, float] = {}
    try:
        for start, inputs in _pieces(x, batch):
            sums = task.batch_sums(loss_fn, model(inputs), y[start : start + batch])
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
    finally:
        for module, training in modes.items():
            module.training = training
    if distributed.is_distributed():
        keys = sorted(totals)
        summed = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=y.device)
        totals = dict(zip(keys, distributed.all_reduce_sum(summed).tolist(), strict=True))
    return task.finish(totals)


def _pieces(x: Batchable, batch: int) -> Iterator[tuple[int, Batchable]]:
    """Consecutive batches of ``x`` with their first sample's position."""
    return zip(range(0, batch_size(x), batch), pieces(x, batch), strict=True)


def evaluate_splits(
    model: nn.Module, splits: DataSplits, task: Task, loss_fn: Loss
) -> dict[str, float]:
    """``{split}_{metric}`` for train-eval, valid and test (empty splits left out)."""
    out: dict[str, float] = {}
    for name in SPLITS:
        x, y = getattr(splits, f"{name}_x"), getattr(splits, f"{name}_y")
        if y.shape[0] == 0:
            continue
        for metric, value in evaluate(model, x, y, task, loss_fn).items():
            out[f"{name}_{metric}"] = value
    return out
