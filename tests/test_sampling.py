"""Batches: augmentation, gathering, sampling."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hfft.experiment.data.datasets import AugmentSpec
from hfft.experiment.data.sampling import BatchSampler, augment_batch, gather_batch
from hfft.experiment.data.splits import DataSplits, load_data


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits")


# --- augmentation --------------------------------------------------------------------------


def images(n: int = 64, c: int = 2, s: int = 5) -> Tensor:
    """Images whose pixels are all distinct (and nonzero), so every crop is identifiable."""
    return torch.arange(1, n * c * s * s + 1, dtype=torch.float32).view(n, c, s, s)


def explicit_views(x: Tensor, p: int, flip: bool) -> list[Tensor]:
    """Every crop (and mirror) of one image, by explicit slicing."""
    _, h, w = x.shape
    padded = F.pad(x, (p, p, p, p))
    views = []
    for i, j in itertools.product(range(2 * p + 1), repeat=2):
        crop = padded[:, i : i + h, j : j + w]
        views += [crop, crop.flip(-1)] if flip else [crop]
    return views


@pytest.mark.parametrize("flip", [False, True], ids=["crop", "crop+flip"])
def test_augment_batch_is_crop_and_flip(flip: bool) -> None:
    x = images()
    out = augment_batch(x, AugmentSpec(2, flip), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    chosen = set()
    for k in range(x.shape[0]):
        views = explicit_views(x[k], 2, flip)
        matches = [v for v, view in enumerate(views) if torch.equal(out[k], view)]
        assert len(matches) == 1, k
        chosen.add(matches[0])
    assert len(chosen) > 10  # offsets (and flips) vary across the batch


def test_augment_batch_without_padding_or_flip_is_identity() -> None:
    x = images()
    out = augment_batch(x, AugmentSpec(0, False), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_augment_batch_flip_only() -> None:
    x = images(n=200)
    out = augment_batch(x, AugmentSpec(0, True), torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all())
    assert 60 < int(flipped.sum()) < 140


def test_augment_batch_is_seeded() -> None:
    x, spec = images(), AugmentSpec(1, True)
    a = augment_batch(x, spec, torch.Generator().manual_seed(5))
    b = augment_batch(x, spec, torch.Generator().manual_seed(5))
    c = augment_batch(x, spec, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gather_batch(digits: DataSplits) -> None:
    idx = torch.tensor([5, 0, 7])
    xb, yb = gather_batch(digits.train_x, digits.train_y, idx)
    assert torch.equal(xb, digits.train_x[idx]) and torch.equal(yb, digits.train_y[idx])
    gen = torch.Generator().manual_seed(0)
    xa, ya = gather_batch(digits.train_x, digits.train_y, idx, digits.augment, gen)
    assert xa.shape == xb.shape and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="generator"):
        gather_batch(digits.train_x, digits.train_y, idx, digits.augment)


# --- batch sampling ------------------------------------------------------------------------


def test_sampler_epochs_never_straddle() -> None:
    sampler = BatchSampler(10, seed=0)
    first = [sampler.next_batch(3) for _ in range(3)]
    assert torch.cat(first).unique().numel() == 9  # one permutation, distinct samples
    fourth = sampler.next_batch(3)  # one sample left: a new permutation starts
    assert fourth.unique().numel() == 3


def test_sampler_covers_each_epoch() -> None:
    sampler = BatchSampler(12, seed=1)
    for _ in range(3):
        epoch = torch.cat([sampler.next_batch(4) for _ in range(3)])
        assert torch.equal(epoch.sort().values, torch.arange(12))


def test_sampler_disjoint_pair() -> None:
    sampler = BatchSampler(50, seed=0)
    for _ in range(20):
        b, b_bar = sampler.disjoint_pair(20, 30)
        assert b.numel() == 20 and b_bar.numel() == 30
        assert torch.cat([b, b_bar]).unique().numel() == 50
    # only B advances the epoch: 20 samples a pair, a fresh permutation every second pair
    assert sampler._pos == 40
    with pytest.raises(ValueError, match="need 51 samples"):
        sampler.disjoint_pair(20, 31)


def test_sampler_is_seeded() -> None:
    a, b = BatchSampler(30, seed=4), BatchSampler(30, seed=4)
    assert all(torch.equal(a.next_batch(7), b.next_batch(7)) for _ in range(6))
    for (b1, bb1), (b2, bb2) in zip(
        [a.disjoint_pair(7, 5) for _ in range(5)],
        [b.disjoint_pair(7, 5) for _ in range(5)],
        strict=True,
    ):
        assert torch.equal(b1, b2) and torch.equal(bb1, bb2)
    assert not torch.equal(BatchSampler(30, seed=5).next_batch(7), a.next_batch(7))


@pytest.mark.parametrize("m", [0, 11])
def test_sampler_bad_batch_size(m: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 10"):
        BatchSampler(10).next_batch(m)
