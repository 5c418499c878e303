"""A data set's splits as device-resident tensors, DeepOBS-style.

:func:`load_data` returns :class:`DataSplits`: the whole data set converted
to tensors once and kept on the target device, so a batch is one index
gather with no per-sample Python work.

Splits (all seeded by ``seed``, reproducible, and independent of the device):

* **test**: the official test set. Digits has none; its test set is a
  20 % hold-out drawn with a *fixed* seed, so it is the same for every
  ``seed``. The synthetic set has a separately generated test set.
* **valid**: held out of the official training set; as large as the test
  set (DeepOBS: 10,000 for CIFAR and MNIST), or 10 % of the training set for
  small sets whose test set exceeds a fifth of the training set (digits,
  SVHN).
* **train**: the rest of the training set.
* **train-eval**: a seeded subset of *train*, as large as the test set (at
  most all of train), for measuring the training loss.

The split follows the data seed, so a run that continues from a checkpoint
must use the seed the checkpoint was trained with, or its validation set
would contain training images.

Images are float32 NCHW, normalised per channel with the mean and standard
deviation of the *train* split (recorded in :attr:`DataSplits.mean`/``std``).
Augmentation (:func:`hfft.experiment.sampling.augment_batch`) pads with zeros in that normalised
space, i.e. with the channel mean.

Besides the registered names (:data:`DATASETS`), ``name`` may be
``path/to/file.py:factory`` or ``package.module:factory``, naming a
function that returns ``(train, test)``, each either a
``torch.utils.data.Dataset`` of ``(x, y)`` pairs or a tuple of tensors
``(x, y)``. The registry and the sources are in :mod:`hfft.experiment.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfft.experiment.datasets import DATASETS, AugmentSpec, DataError, default_root

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["DataSplits", "SplitIndices", "load_data", "split_indices"]


@dataclass(frozen=True, kw_only=True)
class DataSplits:
    """A data set's splits, as tensors on one device.

    Attributes:
        name: Data set name (or the user's factory spec).
        train_x, train_y: Training split (images float32 NCHW, labels int64).
        valid_x, valid_y: Validation split, held out of the training set.
        train_eval_x, train_eval_y: Subset of the training split for
            measuring the training loss.
        test_x, test_y: Test split.
        num_classes: Number of classes.
        in_channels: Image channels.
        input_size: Side of the square images.
        augment: Augmentation for training batches; ``None`` for none.
        mean, std: Per-channel normalisation, computed on the training split.
        seed: The seed of the split.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    valid_x: Tensor
    valid_y: Tensor
    train_eval_x: Tensor
    train_eval_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int
    input_size: int
    augment: AugmentSpec | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int

    @property
    def num_train(self) -> int:
        """Size of the training split."""
        return int(self.train_x.shape[0])


# --- splits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitIndices:
    """Indices into the official training set (sorted).

    Attributes:
        train: The training split.
        valid: The validation split (disjoint from ``train``).
        train_eval: Positions *within the training split* of the train-eval subset.
    """

    train: Tensor
    valid: Tensor
    train_eval: Tensor


def split_indices(n_train: int, n_test: int, seed: int) -> SplitIndices:
    """Seeded validation hold-out and train-eval subset (see the module docstring).

    Args:
        n_train: Size of the official training set.
        n_test: Size of the test set.
        seed: Seed of the split.

    Returns:
        The :class:`SplitIndices`, CPU int64 tensors.

    Raises:
        DataError: If the training set is too small to hold out a validation set.
    """
    import torch

    n_valid = n_test if n_test <= n_train // 5 else round(0.1 * n_train)
    if n_valid < 1 or n_train - n_valid < 1:
        raise DataError(
            f"A training set of {n_train} samples is too small to hold out a validation set."
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_train, generator=gen)
    valid, train = perm[:n_valid].sort().values, perm[n_valid:].sort().values
    n_eval = min(n_test, train.numel())
    train_eval = torch.randperm(train.numel(), generator=gen)[:n_eval].sort().values
    return SplitIndices(train, valid, train_eval)


def load_data(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    augment: bool = True,
) -> DataSplits:
    """Load a data set's splits onto a device.

    Args:
        name: A name in :data:`DATASETS`, or ``path/to/file.py:factory`` /
            ``package.module:factory`` for the user's own data.
        root: Directory of the torchvision data sets (default:
            :func:`default_root`); passed to a user's factory that takes ``root``.
        download: Download a missing torchvision data set into ``root``.
        device: Device of the returned tensors.
        seed: Seed of the validation and train-eval splits.
        augment: Whether training batches may be augmented (the data set's
            :class:`AugmentSpec`); ``False`` gives ``augment=None``.

    Returns:
        The :class:`DataSplits`.

    Raises:
        DataError: For an unknown name, a missing or unreadable data set, or
            user data of the wrong form.
    """
    import torch

    root_path = Path(root).expanduser() if root is not None else default_root()
    (all_x, all_y, test_x, test_y), spec, num_classes = _raw(name, root_path, download)
    idx = split_indices(all_x.shape[0], test_x.shape[0], seed)
    dev = torch.device(device)
    # uint8 images travel to the device before conversion: 4× less to copy
    all_x, all_y = all_x.to(dev), all_y.to(dev)
    train, valid, train_eval = idx.train.to(dev), idx.valid.to(dev), idx.train_eval.to(dev)
    train_raw = all_x[train]
    mean, std = _channel_stats(train_raw)
    train_x, train_y = _normalise(train_raw, mean, std), all_y[train]
    del train_raw
    return DataSplits(
        name=name,
        train_x=train_x,
        train_y=train_y,
        valid_x=_normalise(all_x[valid], mean, std),
        valid_y=all_y[valid],
        train_eval_x=train_x[train_eval],
        train_eval_y=train_y[train_eval],
        test_x=_normalise(test_x.to(dev), mean, std),
        test_y=test_y.to(dev),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        input_size=int(train_x.shape[2]),
        augment=spec if augment else None,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        seed=seed,
    )


def _raw(name: str, root: Path, download: bool) -> tuple[Any, AugmentSpec | None, int]:
    """The raw tensors of a data set, its augmentation and its number of classes, checked."""
    import torch

    from hfft.experiment.datasets import LOADERS, load_user_data

    if name in DATASETS:
        info = DATASETS[name]
        raw, spec, num_classes = LOADERS[name](root, download), info.augment, info.num_classes
    elif ":" in name:
        raw = load_user_data(name, root, download)
        spec = None  # whether crops or flips preserve a user's labels is unknown
        num_classes = max(int(raw[1].max()), int(raw[3].max())) + 1
    else:
        raise DataError(
            f"Unknown data set {name!r}; use one of {', '.join(DATASETS)} "
            "or path/to/file.py:factory or package.module:factory."
        )
    for split, x in (("training", raw[0]), ("test", raw[2])):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"The {split} inputs of {name!r} contain NaN or infinite values.")
    return raw, spec, num_classes


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    import torch

    means, stds = [], []
    for c in range(x.shape[1]):  # one channel at a time in float64: exact and memory-light
        xc = x[:, c].to(torch.float64)
        means.append(xc.mean())
        stds.append(xc.std(correction=0))
    mean, std = torch.stack(means), torch.stack(stds)
    return mean, torch.where(std > 0, std, torch.ones_like(std))  # constant channel: no scaling


def _normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    import torch

    shape = (1, -1, 1, 1)
    m = mean.to(x.device, torch.float32).view(shape)
    s = std.to(x.device, torch.float32).view(shape)
    return ((x.to(torch.float32) - m) / s).contiguous()
