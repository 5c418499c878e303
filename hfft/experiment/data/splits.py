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

The built-in image sets are float32 NCHW, normalised per channel with the
mean and standard deviation of the *train* split; the statistics are recorded
(:attr:`DataSplits.normalization`, and in every checkpoint's metadata) and a
later load of the same checkpoint applies the recorded ones, so every load
agrees. Augmentation (:func:`hfft.experiment.data.sampling.augment_batch`) pads
with zeros in that normalised space, i.e. with the channel mean.

A user's data (``path/to/file.py:factory`` or ``package.module:factory``,
see :func:`hfft.experiment.data.user_data.load_user_data`) is used exactly as the
factory returns it: any shape, never normalised or augmented. Its validation
split is the factory's when it returns ``(train, valid, test)``; from
``(train, test)`` a fraction of the training set is held out only when asked
(``valid_fraction``; ``hfft train`` holds out 10 % and records it, so runs
from its checkpoints validate on data they never saw), and otherwise there is
none (:attr:`DataSplits.valid_source` says which).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfft.experiment.data.datasets import DATASETS, AugmentSpec, DataError, default_root

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from hfft.experiment.data.user_data import UserData
    from hfft.optim.batches import Batchable

__all__ = ["DataSplits", "SplitIndices", "load_data", "split_indices"]


VALID_SOURCES = ("held out", "given", "held out of the checkpoint's training data", "none")
"""Where the validation split comes from: held out by hfft before training, returned by the
user's factory, held out of data the checkpoint was trained on (``--valid-fraction`` on a
foreign checkpoint: ``best`` then chooses on seen data), or nowhere."""


@dataclass(frozen=True, kw_only=True)
class DataSplits:
    """A data set's splits, as tensors on one device.

    Attributes:
        name: Data set name (or the user's factory spec).
        train_x, train_y: Training split (inputs a tensor or a nest of them).
        valid_x, valid_y: Validation split (possibly empty, see ``valid_source``).
        train_eval_x, train_eval_y: Subset of the training split for
            measuring the training loss.
        test_x, test_y: Test split.
        num_classes: Classes (integer targets) or outputs per sample (float targets).
        input_shape: The shape of one input sample (``()`` for a nest of tensors).
        augment: Augmentation for training batches; ``None`` for none.
        normalization: The per-channel ``mean`` and ``std`` applied to a
            built-in image set (``None``: the data is as given).
        seed: The seed of the split.
        valid_source: One of :data:`VALID_SOURCES`.
        notes: What was adapted to what the user meant, one line each (integer
            labels widened, inputs cast to the model's precision).
    """

    name: str
    train_x: Batchable
    train_y: Tensor
    valid_x: Batchable
    valid_y: Tensor
    train_eval_x: Batchable
    train_eval_y: Tensor
    test_x: Batchable
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    augment: AugmentSpec | None
    normalization: dict[str, list[float]] | None
    seed: int
    valid_source: str = "held out"
    notes: tuple[str, ...] = ()

    @property
    def num_train(self) -> int:
        """Size of the training split."""
        return int(self.train_y.shape[0])

    @property
    def in_channels(self) -> int:
        """Channels of an image or a 1-D signal (``input_shape[0]``), else 1."""
        return self.input_shape[0] if len(self.input_shape) >= 2 else 1

    @property
    def input_size(self) -> int:
        """The last dimension of an input sample (an image's side, a signal's length)."""
        return self.input_shape[-1] if self.input_shape else 0

    def cast_inputs(self, dtype: torch.dtype) -> DataSplits:
        """These splits with their floating-point inputs cast to the model's ``dtype``.

        The model's precision is known only once it is built, after its data,
        so this is the one change made to the data after loading; it happens
        before any work, and a note in :attr:`notes` says it; values change
        only by rounding (float64 to float32). Integer inputs (token ids) are
        left as they are, and so is every split when one is streamed (read per
        batch, its precision is the Dataset's: the first forward pass says so
        if it does not fit). Returns ``self`` when nothing needs a cast.
        """
        from hfft.optim.batches import LazyInputs, leaves, map_tensors

        names = ("train_x", "valid_x", "train_eval_x", "test_x")
        splits = [getattr(self, name) for name in names]
        if any(isinstance(x, LazyInputs) for x in splits):
            return self
        found = {
            t.dtype for x in splits for t in leaves(x) if t.is_floating_point() and t.dtype != dtype
        }
        if not found:
            return self
        cast = {
            name: map_tensors(lambda t: t.to(dtype) if t.is_floating_point() else t, x)
            for name, x in zip(names, splits, strict=True)
        }
        was = ", ".join(sorted(str(d).removeprefix("torch.") for d in found))
        to = str(dtype).removeprefix("torch.")
        if any(not bool(t.isfinite().all()) for x in cast.values() for t in leaves(x)):
            raise DataError(  # the inputs were finite before: the cast overflowed
                f"the data's {was} inputs hold values beyond the range of the model's {to}, "
                f"which the cast to {to} would make infinite; scale them, or build the model "
                f"in the data's precision"
            )
        note = f"the data's {was} inputs were cast to the model's {to}"
        return dataclasses.replace(self, **cast, notes=(*self.notes, note))

    def data_args(self) -> dict[str, Any]:
        """What a model factory may take from the data: outputs and input shape."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "input_shape": self.input_shape,
        }


# --- splits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitIndices:
    """Indices into the official training set (sorted).

    Attributes:
        train: The training split.
        valid: The validation split (disjoint from ``train``; may be empty).
        train_eval: Positions *within the training split* of the train-eval subset.
    """

    train: Tensor
    valid: Tensor
    train_eval: Tensor


def split_indices(
    n_train: int, n_test: int, seed: int, valid_fraction: float | None = None
) -> SplitIndices:
    """Seeded validation hold-out and train-eval subset.

    Args:
        n_train: Size of the official training set.
        n_test: Size of the test set.
        seed: Seed of the split.
        valid_fraction: Hold out this fraction of the training set (0: none);
            ``None``: DeepOBS's rule (as many as the test set, or 10 % when
            the test set exceeds a fifth of the training set).

    Returns:
        The :class:`SplitIndices`, CPU int64 tensors.

    Raises:
        DataError: If the training set is too small to hold out a validation set.
    """
    import torch

    if valid_fraction is None:
        n_valid = n_test if n_test <= n_train // 5 else round(0.1 * n_train)
    else:
        n_valid = round(valid_fraction * n_train)
    if (valid_fraction != 0 and n_valid < 1) or n_train - n_valid < 1:
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
    normalization: dict[str, list[float]] | None = None,
    valid_fraction: float | None = None,
    valid_seen: bool = False,
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
        augment: Whether training batches may be augmented (built-in images).
        normalization: Built-in images: the recorded ``mean`` and ``std`` to
            apply (a checkpoint's), instead of computing them.
        valid_fraction: A user's ``(train, test)``: hold out this fraction of
            train for validation (``None`` or 0: no validation split).
        valid_seen: The held-out part was in the checkpoint's training data.

    Returns:
        The :class:`DataSplits`.

    Raises:
        DataError: For an unknown name, a missing or unreadable data set, or
            user data of the wrong form.
    """
    from hfft.experiment.data.datasets import LOADERS, builtin_data
    from hfft.experiment.data.user_data import load_user_data

    root_path = Path(root).expanduser() if root is not None else default_root()
    builtin = builtin_data(name)
    if builtin is not None:
        base, options = builtin
        raw = LOADERS[base](root_path, download, **options)
        return _builtin_splits(name, base, raw, device, seed, augment, normalization)
    if ":" in name:
        user = load_user_data(name, root_path, download)
        return _user_splits(name, user, device, seed, valid_fraction, valid_seen)
    raise DataError(
        f"Unknown data set {name!r}; use one of {', '.join(DATASETS)} "
        "or path/to/file.py:factory or package.module:factory."
    )


def _builtin_splits(
    name: str,
    base: str,
    raw: tuple[Tensor, Tensor, Tensor, Tensor],
    device: str | torch.device,
    seed: int,
    augment: bool,
    normalization: dict[str, list[float]] | None,
) -> DataSplits:
    """A built-in set's DeepOBS splits; images normalised per channel (recorded)."""
    import torch

    all_x, all_y, test_x, test_y = raw
    info = DATASETS[base]
    idx = split_indices(all_x.shape[0], test_x.shape[0], seed)
    dev = torch.device(device)
    # uint8 images travel to the device before conversion: 4× less to copy
    all_x, all_y = all_x.to(dev), all_y.to(dev)
    train, valid, train_eval = idx.train.to(dev), idx.valid.to(dev), idx.train_eval.to(dev)
    train_raw = all_x[train]
    computed = normalization is None and info.normalize
    if computed:
        mean, std = _channel_stats(train_raw)
        normalization = {"mean": mean.tolist(), "std": std.tolist()}
    if normalization is None:  # a set used as generated (MNIST-1D)
        mean = torch.zeros(all_x.shape[1], dtype=torch.float64)
        std = torch.ones(all_x.shape[1], dtype=torch.float64)
    else:
        mean = torch.tensor(normalization["mean"], dtype=torch.float64)
        std = torch.tensor(normalization["std"], dtype=torch.float64)
        if len(mean) != all_x.shape[1]:
            raise DataError(
                f"The recorded normalisation has {len(mean)} channels but {name!r} inputs "
                f"have {all_x.shape[1]}; the checkpoint's metadata is broken."
            )
    recorded = normalization is not None and not computed
    train_x, train_y = _normalise(train_raw, mean, std), all_y[train]
    del train_raw
    valid_x, test_x = _normalise(all_x[valid], mean, std), _normalise(test_x.to(dev), mean, std)
    if recorded:  # each statistic is in range, but (x - mean) / std may still overflow
        _check_finite(name, train_x, valid_x, test_x)
    return DataSplits(
        name=name,
        train_x=train_x,
        train_y=train_y,
        valid_x=valid_x,
        valid_y=all_y[valid],
        train_eval_x=train_x[train_eval],
        train_eval_y=train_y[train_eval],
        test_x=test_x,
        test_y=test_y.to(dev),
        num_classes=info.num_classes,
        input_shape=tuple(train_x.shape[1:]),
        augment=info.augment if augment else None,
        normalization=normalization,
        seed=seed,
    )


def _user_splits(
    name: str,
    user: UserData,
    device: str | torch.device,
    seed: int,
    valid_fraction: float | None,
    valid_seen: bool,
) -> DataSplits:
    """A user's splits, as given: the factory's validation set, or a hold-out only if asked."""
    import torch

    from hfft.experiment.data.streaming import StreamedInputs
    from hfft.optim import distributed
    from hfft.optim.batches import map_tensors, subset, take

    dev = torch.device(device)

    def moved(part: tuple[Any, Tensor]) -> tuple[Any, Tensor]:
        x, y = part
        if not isinstance(x, StreamedInputs):
            return map_tensors(lambda t: t.to(dev), x), y.to(dev)
        if distributed.is_distributed():
            raise DataError(
                f"Data {name!r} is streamed (larger than HFFT_STREAM_ABOVE), which distributed "
                "runs do not support; raise HFFT_STREAM_ABOVE to hold it in memory."
            )
        return x.on(dev), y.to(dev)

    (all_x, all_y), (test_x, test_y) = moved(user.train), moved(user.test)
    n_test = int(test_y.shape[0])
    if user.valid is not None:
        (valid_x, valid_y), source = moved(user.valid), "given"
        idx = split_indices(int(all_y.shape[0]), n_test, seed, valid_fraction=0)
    else:
        idx = split_indices(int(all_y.shape[0]), n_test, seed, valid_fraction or 0)
        valid_x, valid_y = subset(all_x, idx.valid.to(dev)), all_y[idx.valid.to(dev)]
        source = "none" if not idx.valid.numel() else "held out"
        if source == "held out" and valid_seen:
            source = "held out of the checkpoint's training data"
    train = idx.train.to(dev)
    train_x, train_y = subset(all_x, train), all_y[train]
    first = take(all_x, slice(0, 1))
    return DataSplits(
        name=name,
        train_x=train_x,
        train_y=train_y,
        valid_x=valid_x,
        valid_y=valid_y,
        train_eval_x=subset(train_x, idx.train_eval.to(dev)),
        train_eval_y=train_y[idx.train_eval.to(dev)],
        test_x=test_x,
        test_y=test_y,
        num_classes=_outputs(all_y, test_y),
        input_shape=tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else (),
        augment=None,  # whether crops or flips preserve a user's labels is unknown
        normalization=None,
        seed=seed,
        valid_source=source,
        notes=user.notes,
    )


def _outputs(*targets: Tensor) -> int:
    """Classes of integer labels (the largest + 1, ignored positions aside), else outputs."""
    import math

    y = targets[0]
    if y.is_floating_point():
        return max(1, math.prod(y.shape[1:]))
    top = max(int(t[t != -100].max()) if bool((t != -100).any()) else 0 for t in targets)
    return top + 1


def _check_finite(name: str, *xs: Tensor) -> None:
    import torch

    if not all(bool(torch.isfinite(x).all()) for x in xs):
        raise DataError(
            f"The recorded normalisation makes {name!r} inputs infinite in float32 "
            "((x - mean) / std overflows); the checkpoint's metadata is broken."
        )


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

    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = mean.to(x.device, torch.float32).view(shape)
    s = std.to(x.device, torch.float32).view(shape)
    return ((x.to(torch.float32) - m) / s).contiguous()
