"""Loss and accuracy of a model on the data splits, outside any training clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hfft.optim import distributed

if TYPE_CHECKING:
    from hfft.experiment.splits import DataSplits

__all__ = ["SPLITS", "evaluate", "evaluate_splits"]

SPLITS = ("train_eval", "valid", "test")


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: nn.Module, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in eval mode.

    The model's mode is restored afterwards. The loss is the mean over samples
    (``loss_fn`` is called per batch and weighted by the batch size; a
    sum-reduced loss is divided by the number of samples).
    """
    was_training = model.training
    model.eval()
    n = x.shape[0]
    if distributed.is_distributed():  # each rank evaluates its shard; sums are reduced
        part = distributed.shard(n)
        x, y = x[part], y[part]
    total, correct = 0.0, 0
    reduction = getattr(loss_fn, "reduction", "mean")
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = model(xb)
            loss = float(loss_fn(out, yb))
            total += loss * xb.shape[0] if reduction == "mean" else loss
            correct += int((out.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    if distributed.is_distributed():
        sums = torch.tensor([total, float(correct)], dtype=torch.float64, device=x.device)
        total, correct = distributed.all_reduce_sum(sums).tolist()
    return total / max(n, 1), correct / max(n, 1)


def evaluate_splits(model: nn.Module, splits: DataSplits, loss_fn: nn.Module) -> dict[str, float]:
    """``{split}_loss`` and ``{split}_accuracy`` for train-eval, valid and test."""
    out: dict[str, float] = {}
    for name in SPLITS:
        x, y = getattr(splits, f"{name}_x"), getattr(splits, f"{name}_y")
        if x.shape[0] == 0:
            continue
        out[f"{name}_loss"], out[f"{name}_accuracy"] = evaluate(model, x, y, loss_fn)
    return out
