"""Data sets too large to hold in memory, read batch by batch by DataLoader workers.

A user's map-style ``Dataset`` (not a ``TensorDataset``, which is in memory
already) whose inputs would take more than :func:`resident_limit` bytes is not
read into tensors. Its targets are read once (``dataset.targets`` when the
Dataset has them and no ``target_transform``), and its inputs are read for each
batch by ``DataLoader`` workers, into pinned memory when the device is a GPU.

Streaming changes how the samples are read, never which: every strategy draws
the seeded indices it would draw from resident data
(:class:`hfft.experiment.data.sampling.BatchStream`), the loader only reads them
ahead of time, and the batches equal the resident ones sample for sample (the
loaders have generators of their own, so torch's global random state is what
it would be). Reading overlaps computing: each worker reads up to two batches
ahead, also while the clock is paused for an evaluation, which spares a
strategy of few large batches (HF) more reading time than one of many small
ones; ``HFFT_STREAM_WORKERS`` bounds it, and the memory it takes.
Streamed inputs are not checked for NaN or Inf beyond the first sample.

Settings, from the environment: ``HFFT_STREAM_ABOVE`` (bytes, with an optional
K, M or G suffix; 0 streams every such Dataset; default 2G) and
``HFFT_STREAM_WORKERS`` (default: the cores less one, 1 to 4).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from hfft.optim.batches import Batchable, LazyInputs, leaves, map_tensors

__all__ = ["StreamedInputs", "read_targets", "resident_limit", "should_stream", "stream_workers"]

_DEFAULT_LIMIT = 2 << 30
_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def resident_limit() -> int:
    """The most bytes of a Dataset's inputs that are read into memory (``HFFT_STREAM_ABOVE``).

    Raises:
        ValueError: For a setting that is not a size such as 0, 512M or 2G.
    """
    text = os.environ.get("HFFT_STREAM_ABOVE", "").strip().upper()
    if not text:
        return _DEFAULT_LIMIT
    scale = _SUFFIXES.get(text[-1], 1)
    digits = text[:-1] if text[-1] in _SUFFIXES else text
    if not digits.isdigit():
        raise ValueError(f"HFFT_STREAM_ABOVE must be a size such as 0, 512M or 2G, not {text!r}.")
    return int(digits) * scale


def stream_workers() -> int:
    """DataLoader workers of a streamed data set (``HFFT_STREAM_WORKERS``, 0: the main process).

    Raises:
        ValueError: For a setting that is not a non-negative integer.
    """
    text = os.environ.get("HFFT_STREAM_WORKERS", "").strip()
    if not text:
        return min(4, max(1, (os.cpu_count() or 2) - 1))
    if not text.isdigit():
        raise ValueError(f"HFFT_STREAM_WORKERS must be a whole number, not {text!r}.")
    return int(text)


def should_stream(dataset: Any, first_input: Batchable) -> bool:
    """Whether ``dataset``'s inputs, at ``first_input``'s size each, exceed the resident limit."""
    per_sample = sum(t.numel() * t.element_size() for t in leaves(first_input))
    return per_sample * len(dataset) > resident_limit()


def _inputs(items: list[Any]) -> Batchable:
    """The inputs of ``(input, target)`` items, collated into a batch."""
    return default_collate([item[0] for item in items])


def _targets(items: list[Any]) -> Tensor:
    return torch.as_tensor(default_collate([item[1] for item in items]))


def _loader_generator() -> torch.Generator:
    """A DataLoader's own generator: iterating one then leaves torch's global one alone."""
    return torch.Generator().manual_seed(0)


def read_targets(dataset: Any) -> Tensor:
    """All targets of a map-style Dataset of ``(input, target)`` items.

    ``dataset.targets`` (torchvision's folders and sets) when it has one per
    item, no ``target_transform``, and agrees in value and dtype with the items
    at the ends and at 16 seeded places between; otherwise every item is read
    once, by the stream's workers.
    """
    listed = getattr(dataset, "targets", None)
    n = len(dataset)
    if listed is not None and getattr(dataset, "target_transform", None) is None:
        try:
            targets = torch.as_tensor(listed)
        except (TypeError, ValueError, RuntimeError):  # e.g. a list of tensors
            targets = None
        if targets is not None and targets.shape[:1] == (n,):
            spot = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:16]
            spot = torch.cat([torch.tensor([0, n - 1]), spot])
            items = _targets([dataset[int(i)] for i in spot])
            if items.dtype == targets.dtype and torch.equal(targets[spot], items):
                return targets
    loader = DataLoader(
        dataset,
        batch_size=256,
        num_workers=stream_workers(),
        collate_fn=_targets,
        generator=_loader_generator(),
    )
    return torch.cat(list(loader))


class _Positions:
    """A DataLoader's batch sampler: each draw of split indices as positions in the Dataset."""

    def __init__(self, positions: Tensor, draws: Iterable[Tensor]) -> None:
        self.positions, self.draws = positions, draws

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.draws:
            yield self.positions[idx.cpu()].tolist()


class StreamedInputs(LazyInputs):
    """A split's inputs left in a Dataset: batches are read when taken or streamed.

    Args:
        dataset: Map-style Dataset of ``(input, target)`` items.
        positions: The split's samples, as indices into ``dataset`` (CPU int64).
        device: Where batches are delivered.
        workers: DataLoader workers (default :func:`stream_workers`).
    """

    def __init__(
        self,
        dataset: Any,
        positions: Tensor,
        device: str | torch.device = "cpu",
        workers: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.positions = positions
        self.device = torch.device(device)
        self.workers = stream_workers() if workers is None else workers

    def __len__(self) -> int:
        return int(self.positions.numel())

    def __repr__(self) -> str:
        return f"StreamedInputs({type(self.dataset).__name__}, {len(self)} samples)"

    def _like(self, positions: Tensor, device: torch.device) -> StreamedInputs:
        return StreamedInputs(self.dataset, positions, device, self.workers)

    def subset(self, index: Tensor) -> StreamedInputs:
        return self._like(self.positions[index.cpu()], self.device)

    def on(self, device: str | torch.device) -> StreamedInputs:
        """The same samples, delivered to ``device``."""
        return self._like(self.positions, torch.device(device))

    def _deliver(self, batch: Batchable) -> Batchable:
        return map_tensors(lambda t: t.to(self.device, non_blocking=True), batch)

    def take(self, index: Tensor | slice) -> Batchable:
        """The samples ``index``, read here and now (no workers): for one-off batches."""
        chosen = self.positions[index if isinstance(index, slice) else index.cpu()]
        return self._deliver(_inputs([self.dataset[i] for i in chosen.tolist()]))

    def stream(self, draws: Iterable[Tensor]) -> Iterator[Batchable]:
        """The batches of ``draws`` (split indices), in order, read ahead by the workers.

        The workers start here, so a caller that creates the stream before its
        clock starts does not time their start-up.
        """
        loader = DataLoader(
            self.dataset,
            batch_sampler=_Positions(self.positions, draws),
            num_workers=self.workers,
            collate_fn=_inputs,
            pin_memory=self.device.type == "cuda",
            generator=_loader_generator(),
        )
        return map(self._deliver, iter(loader))

    def pieces(self, size: int, most: int | None = None) -> Iterator[Batchable]:
        """The first ``most`` (default all) consecutive batches of ``size`` samples, read
        ahead; a caller reads them to the end, and the workers then exit."""
        n = len(self)
        starts = range(0, n, size)[:most]
        return self.stream(torch.arange(s, min(s + size, n)) for s in starts)
