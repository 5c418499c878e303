"""Batches from the splits: sampling, gathering, augmentation.

A batch is an index gather on the device; augmentation is one padded gather
for the whole batch, with no per-sample Python work. From a streamed split
(:mod:`hfft.experiment.data.streaming`) :class:`BatchStream` reads the same batches
ahead of time through DataLoader workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from hfft.experiment.data.datasets import AugmentSpec
    from hfft.optim.batches import Batchable

__all__ = ["BatchSampler", "BatchStream", "augment_batch", "gather_batch"]


def augment_batch(x: Tensor, spec: AugmentSpec, generator: torch.Generator) -> Tensor:
    """Random crops with zero padding and optional horizontal flips, per sample.

    Each image is padded by ``p = spec.crop_padding`` zeros on every side and
    cropped back to its size at a random offset in ``[0, 2p]²``; with
    ``spec.flip`` it is also mirrored with probability 1/2. Vectorised: one
    pad and one gather for the batch. Random numbers are drawn on the
    generator's device (offsets, then flips) and moved to ``x``'s device.

    Args:
        x: Images ``(N, C, H, W)``.
        spec: The augmentation.
        generator: Source of randomness.

    Returns:
        The augmented images, same shape and device as ``x``.
    """
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    p = spec.crop_padding
    gdev = generator.device
    offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=gdev).to(x.device)
    flips = torch.rand(n, generator=generator, device=gdev).to(x.device) < 0.5
    padded = F.pad(x, (p, p, p, p)) if p > 0 else x
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if spec.flip:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    cols = offsets[1, :, None] + cols  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def gather_batch(
    x: Batchable,
    y: Tensor,
    idx: Tensor,
    augment: AugmentSpec | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Batchable, Tensor]:
    """The samples ``idx`` of ``(x, y)``, augmented if ``augment`` is given.

    Args:
        x: Inputs on some device (a tensor, or a dict or tuple of them).
        y: Targets on the same device.
        idx: Indices (moved to ``y``'s device).
        augment: Augmentation of images ``(N, C, H, W)``, or ``None``.
        generator: Randomness of the augmentation (required with ``augment``).

    Raises:
        ValueError: If ``augment`` is given without a generator, or for inputs
            that are not images.
    """
    from hfft.optim.batches import take

    idx = idx.to(y.device)
    xb, yb = take(x, idx), y[idx]
    if augment is not None:
        if not (hasattr(xb, "ndim") and xb.ndim == 4):
            raise ValueError("only images (N, C, H, W) can be augmented")
        if generator is None:
            raise ValueError("gather_batch needs a generator to augment a batch")
        xb = augment_batch(xb, augment, generator)
    return xb, yb


class BatchSampler:
    """Seeded, epoch-wise random mini-batch indices of a training set.

    Each epoch is a fresh random permutation; :meth:`next_batch` takes the
    next ``m`` indices of it. A batch never straddles two epochs: when fewer
    than ``m`` indices are left, they are skipped and a new permutation
    starts (like ``drop_last``), so every batch holds distinct samples.

    Args:
        n: Size of the training set.
        seed: Seed of the sampler's own generator.
        device: Device of the returned indices (drawn on the CPU).
    """

    def __init__(self, n: int, seed: int = 0, device: str | torch.device = "cpu") -> None:
        import torch

        if n < 1:
            raise ValueError(f"BatchSampler needs a non-empty training set, got n={n}")
        self.n = n
        self.device = torch.device(device)
        self._gen = torch.Generator().manual_seed(seed)
        self._perm = torch.randperm(n, generator=self._gen)
        self._pos = 0

    def _check(self, m: int) -> None:
        if not 1 <= m <= self.n:
            raise ValueError(f"batch size must be between 1 and {self.n}, got {m}")

    def next_batch(self, m: int) -> Tensor:
        """The next ``m`` indices of the running permutation."""
        import torch

        self._check(m)
        if self._pos + m > self.n:
            self._perm = torch.randperm(self.n, generator=self._gen)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + m]
        self._pos += m
        return idx.to(self.device)

    def disjoint_pair(self, m: int, m_bar: int) -> tuple[Tensor, Tensor]:
        """Two disjoint batches: ``B`` (``m``) and ``B̄`` (``m_bar``).

        ``B`` is :meth:`next_batch`'s (it advances the epoch); ``B̄`` is a fresh
        uniform draw from the samples not in ``B`` (it does not).

        Raises:
            ValueError: If ``m + m_bar`` exceeds the training set.
        """
        import torch

        self._check(m)
        if m_bar < 1:
            raise ValueError(f"the size of B̄ must be positive, got {m_bar}")
        if m + m_bar > self.n:
            raise ValueError(
                f"disjoint batches of {m} and {m_bar} samples need {m + m_bar} samples, "
                f"but the training set has {self.n}"
            )
        b = self.next_batch(m)
        rest = torch.ones(self.n, dtype=torch.bool)
        rest[b.cpu()] = False
        candidates = rest.nonzero().squeeze(1)
        b_bar = candidates[torch.randperm(candidates.numel(), generator=self._gen)[:m_bar]]
        return b, b_bar.to(self.device)


class BatchStream:
    """The batches of a sequence of index draws: gathered from resident inputs, or streamed.

    ``draw()`` gives the next batch's indices (e.g. a :class:`BatchSampler`'s).
    From resident inputs :meth:`next` draws and gathers; from
    :class:`hfft.experiment.data.streaming.StreamedInputs` the workers read the
    draws ahead (the draws are made in the same order, so the batches are the
    same) and the targets are gathered from the resident ones.

    Args:
        x: A split's inputs.
        y: Its targets (resident).
        draw: The indices of the next batch.
        augment: Augmentation (resident images only).
        generator: Randomness of the augmentation.
    """

    def __init__(
        self,
        x: Batchable,
        y: Tensor,
        draw: Callable[[], Tensor],
        augment: AugmentSpec | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        from hfft.experiment.data.streaming import StreamedInputs

        self.x, self.y, self._draw = x, y, draw
        self.augment, self.generator = augment, generator
        self._pending: deque[Tensor] = deque()
        self._closed = [False]
        self._read: Iterator[Batchable] | None = None
        if isinstance(x, StreamedInputs):
            if augment is not None:
                raise ValueError("streamed inputs are not augmented")
            self._read = x.stream(_drawn(draw, self._pending, self._closed))

    def next(self) -> tuple[Batchable, Tensor]:
        """The next batch ``(inputs, targets)``."""
        if self._read is None:
            return gather_batch(self.x, self.y, self._draw(), self.augment, self.generator)
        try:
            xb = next(self._read)
        finally:  # a batch that failed to read takes its indices with it
            idx = self._pending.popleft()
        return xb, self.y[idx.to(self.y.device)]

    def close(self) -> None:
        """Stop drawing. The batches read ahead are read out first, so that the workers
        exit at once (a DataLoader dropped mid-stream waits seconds for each)."""
        if self._read is not None and not self._closed[0]:
            self._closed[0] = True
            for _ in self._read:
                pass
        self._read = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the workers go with the process
            pass


def _drawn(
    draw: Callable[[], Tensor], pending: deque[Tensor], closed: list[bool]
) -> Iterator[Tensor]:
    """``draw()``'s indices until ``closed[0]``, each also queued in ``pending``.

    A function of its parts, not a method: a generator holding its stream would
    make a reference cycle, and the garbage collector could then drop the
    DataLoader before the stream has read it out.
    """
    while not closed[0]:
        idx = draw()
        pending.append(idx)
        yield idx
