"""Batches that are one tensor or a nest of them (a dict or tuple of batched tensors).

Many models take more than one input — token ids and an attention mask, an
image and a caption — as a dict or tuple whose tensors share dimension 0, the
samples. Every part of hfft that slices, gathers, moves or counts a batch
does it through these functions, so such inputs work like a plain tensor
(the model receives the nest as its one argument: ``model({"x": …, "mask": …})``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["Batchable", "batch_size", "leaves", "map_tensors", "take"]

Batchable = Any
"""A tensor, or a dict, tuple or list of batchables, all with the samples along dimension 0."""


def map_tensors(fn: Callable[[Tensor], Any], x: Batchable) -> Batchable:
    """``x`` with ``fn`` applied to every tensor in it (dicts, tuples and lists kept)."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: map_tensors(fn, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(map_tensors(fn, v) for v in x)
    raise TypeError(
        f"a batch must be a tensor or a dict, tuple or list of them, not {type(x).__name__}"
    )


def leaves(x: Batchable) -> list[Tensor]:
    """The tensors in ``x``, in order."""
    out: list[Tensor] = []
    map_tensors(out.append, x)
    return out


def batch_size(x: Batchable) -> int:
    """The number of samples: dimension 0 of the tensors (they must agree)."""
    sizes = {t.shape[0] for t in leaves(x)}
    if len(sizes) != 1:
        raise ValueError(
            f"the tensors of a batch disagree on its size (dimension 0): {sorted(sizes)}"
        )
    return sizes.pop()


def take(x: Batchable, index: Tensor | slice) -> Batchable:
    """The samples ``index`` (indices or a slice along dimension 0) of every tensor."""
    return map_tensors(lambda t: t[index], x)
