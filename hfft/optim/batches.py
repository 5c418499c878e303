"""Batches that are one tensor or a nest of them (a dict or tuple of batched tensors).

Many models take more than one input — token ids and an attention mask, an
image and a caption — as a dict or tuple whose tensors share dimension 0, the
samples. Every part of hfft that slices, gathers, moves or counts a batch
does it through these functions, so such inputs work like a plain tensor
(the model receives the nest as its one argument: ``model({"x": …, "mask": …})``, which
:mod:`hfft.experiment.data.convention` passes on as keywords when ``forward`` names them).

Inputs too large to hold in memory are a :class:`LazyInputs`: they know their
length and materialise only the samples :func:`take` asks for (a streamed data
set, :mod:`hfft.experiment.data.streaming`); :func:`subset` narrows them without
reading anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

__all__ = [
    "Batchable",
    "LazyInputs",
    "batch_size",
    "leaves",
    "map_tensors",
    "pieces",
    "signature",
    "subset",
    "take",
]

Batchable = Any
"""A tensor, or a dict, tuple or list of batchables, all with the samples along dimension 0
(or, for a whole split, a :class:`LazyInputs`)."""


class LazyInputs(ABC):
    """Inputs of which only the samples asked for are read (into tensors)."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abstractmethod
    def take(self, index: Tensor | slice) -> Batchable:
        """The samples ``index``, read and materialised as tensors."""

    @abstractmethod
    def subset(self, index: Tensor) -> LazyInputs:
        """The samples ``index`` as lazy inputs again (nothing is read)."""

    def pieces(self, size: int, most: int | None = None) -> Iterator[Batchable]:
        """The first ``most`` (default all) consecutive batches of ``size`` samples, in order
        (the last one of the inputs shorter)."""
        return (self.take(slice(s, s + size)) for s in range(0, len(self), size)[:most])


def map_tensors(fn: Callable[[Tensor], Any], x: Batchable) -> Batchable:
    """``x`` with ``fn`` applied to every tensor in it (dicts, tuples and lists kept)."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, LazyInputs):
        raise TypeError("streamed inputs hold no tensors until a batch of them is taken")
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
    if isinstance(x, LazyInputs):
        return len(x)
    sizes = {t.shape[0] for t in leaves(x)}
    if len(sizes) != 1:
        raise ValueError(
            f"the tensors of a batch disagree on its size (dimension 0): {sorted(sizes)}"
        )
    return sizes.pop()


def take(x: Batchable, index: Tensor | slice) -> Batchable:
    """The samples ``index`` (indices or a slice along dimension 0) of every tensor."""
    if isinstance(x, LazyInputs):
        return x.take(index)
    return map_tensors(lambda t: t[index], x)


def pieces(x: Batchable, size: int, most: int | None = None) -> Iterator[Batchable]:
    """The first ``most`` (default all) consecutive batches of ``size`` samples of ``x``."""
    if isinstance(x, LazyInputs):
        return x.pieces(size, most)
    return (take(x, slice(s, s + size)) for s in range(0, batch_size(x), size)[:most])


def subset(x: Batchable, index: Tensor) -> Batchable:
    """The samples ``index`` of a split: :func:`take`, except that lazy inputs stay lazy."""
    return x.subset(index) if isinstance(x, LazyInputs) else take(x, index)


def signature(x: Batchable) -> tuple[Any, ...]:
    """What a traced function of ``x`` depends on: its nesting, and each tensor's shape,
    dtype and device."""
    if isinstance(x, Tensor):
        return (tuple(x.shape), x.dtype, str(x.device))
    if isinstance(x, dict):
        return ("dict", tuple((k, signature(v)) for k, v in x.items()))
    return (type(x).__name__, tuple(signature(v) for v in x))
