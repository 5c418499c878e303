"""The data sets hfft knows and where their raw data comes from.

:data:`DATASETS` is the registry of named data sets (digits, synthetic and
the torchvision sets) with their classes, image shape and augmentation.
Each source returns ``(train_x, train_y, test_x, test_y)`` on the CPU: images
(N, C, H, W) as stored (uint8 or float32) and int64 labels. :data:`LOADERS`
maps the registered names to their source: scikit-learn's bundled digits
(test set: a fixed 20 % hold-out), a seeded synthetic set, and the
torchvision sets from a local folder; a user's ``file.py:factory`` is called
and checked in :mod:`hfft.experiment.data.user_data`. Every failure is a
:class:`DataError` of one sentence. :mod:`hfft.experiment.data.splits` turns the
raw data into device-resident splits.

Importing this module does not import torch (command-line help lists the
data sets cheaply).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfft._io import folders_to_create
from hfft._text import clipped, quoted

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DATASETS",
    "LOADERS",
    "AugmentSpec",
    "DataError",
    "DataOption",
    "DatasetInfo",
    "builtin_data",
    "default_root",
]


class DataError(ValueError):
    """A data set that cannot be found or loaded, or user data of the wrong form."""


@dataclass(frozen=True)
class AugmentSpec:
    """How training batches may be augmented.

    Attributes:
        crop_padding: Zero padding on each side before a random crop back to
            the original size (0: no crop).
        flip: Random horizontal flips with probability 1/2.
    """

    crop_padding: int
    flip: bool


@dataclass(frozen=True)
class DataOption:
    """An option a data set's name may carry (``mnist1d:samples=50000``): an integer in a range.

    The range is checked before any data is made, whether the name comes from the
    command line or from a checkpoint's metadata.

    Attributes:
        name: The option's name.
        default: Its value when the name does not give one.
        least: The smallest value accepted.
        most: The largest value accepted.
        why: Why the range ends where it does, for the message.
    """

    name: str
    default: int
    least: int
    most: int
    why: str


#: MNIST-1D's generator makes 10 classes of templates; fewer than 10 samples leave a class
#: empty and fail inside it.
MNIST1D_MIN_SAMPLES = 10

#: Generating MNIST-1D takes about 0.2 ms a sample on one CPU core after a 1.5 s start
#: (measured: 5,000 in 3 s, 60,000 in 12 s, 200,000 in 43 s and 0.85 GB peak memory), so
#: this bound keeps a data set's generation under a minute; the paper's study uses 60,000.
MNIST1D_MAX_SAMPLES = 200_000

_MNIST1D_SAMPLES = DataOption(
    "samples",
    5000,
    MNIST1D_MIN_SAMPLES,
    MNIST1D_MAX_SAMPLES,
    "generating 200,000 takes about 45 s",
)


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """A registered data set.

    Attributes:
        name: Registry name.
        num_classes: Number of classes.
        in_channels: Image channels.
        input_size: Side of the square images.
        augment: Default augmentation of training batches.
        folder: Where torchvision expects it below ``root``; empty for the
            built-in sets.
        normalize: Standardise per channel (images); the recorded statistics
            are reapplied on every load.
        options: The options its name may carry (``mnist1d:samples=50000``),
            with their defaults and ranges.
    """

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    augment: AugmentSpec | None
    folder: str = ""
    normalize: bool = True
    options: tuple[DataOption, ...] = ()

    @property
    def needs_files(self) -> bool:
        """Whether it is read from a data root (torchvision) rather than built in."""
        return bool(self.folder)


_CROP_FLIP = AugmentSpec(crop_padding=4, flip=True)
_CROP_32 = AugmentSpec(crop_padding=4, flip=False)
_CROP_28 = AugmentSpec(crop_padding=2, flip=False)
_CROP_8 = AugmentSpec(crop_padding=1, flip=False)

#: The registered data sets by name.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        # scikit-learn's 8×8 handwritten digits (1,797 images, built in)
        DatasetInfo(
            name="digits",
            num_classes=10,
            in_channels=1,
            input_size=8,
            augment=_CROP_8,
        ),
        # seeded Gaussian blobs as 1×8×8 images (for tests)
        DatasetInfo(
            name="synthetic",
            num_classes=10,
            in_channels=1,
            input_size=8,
            augment=_CROP_8,
        ),
        # MNIST-1D (Greydanus & Kobak): 1-D signals of length 40, generated offline from
        # the templates in the mnist1d package; already standardised by its generator
        DatasetInfo(
            name="mnist1d",
            num_classes=10,
            in_channels=1,
            input_size=40,
            augment=None,
            normalize=False,
            options=(_MNIST1D_SAMPLES,),
        ),
        # CIFAR-10 (torchvision)
        DatasetInfo(
            name="cifar10",
            num_classes=10,
            in_channels=3,
            input_size=32,
            augment=_CROP_FLIP,
            folder="cifar-10-batches-py",
        ),
        # CIFAR-100 (torchvision)
        DatasetInfo(
            name="cifar100",
            num_classes=100,
            in_channels=3,
            input_size=32,
            augment=_CROP_FLIP,
            folder="cifar-100-python",
        ),
        # SVHN digits, train and test splits (torchvision)
        DatasetInfo(
            name="svhn",
            num_classes=10,
            in_channels=3,
            input_size=32,
            augment=_CROP_32,
            folder="train_32x32.mat and test_32x32.mat",
        ),
        # MNIST (torchvision)
        DatasetInfo(
            name="mnist",
            num_classes=10,
            in_channels=1,
            input_size=28,
            augment=_CROP_28,
            folder="MNIST/raw",
        ),
        # Fashion-MNIST (torchvision)
        DatasetInfo(
            name="fashion-mnist",
            num_classes=10,
            in_channels=1,
            input_size=28,
            augment=_CROP_28,
            folder="FashionMNIST/raw",
        ),
    )
}


def builtin_data(name: str) -> tuple[str, dict[str, int]] | None:
    """A built-in data set's name and options (``mnist1d:samples=50000``), else ``None``.

    Every option is an integer within its :class:`DataOption` range, checked
    here, before any data is made.

    Raises:
        DataError: For options the set does not have, values that are not
            integers, or values out of their range.
    """
    base, sep, given = name.partition(":")
    info = DATASETS.get(base)
    if info is None or (sep and not info.options and "=" not in given):
        return None  # a user's factory spec such as module:function
    known = {option.name: option for option in info.options}
    options = {option.name: option.default for option in info.options}
    for item in filter(None, given.split(",")):
        key, _, value = item.partition("=")
        option = known.get(key)
        if option is None or not re.fullmatch(r"[0-9]+", value):
            names = ", ".join(f"{k}=N" for k in known) or "none"
            raise DataError(f"Data set {base!r} takes the options {names}, not {quoted(item)}.")
        number = int(value) if len(value) <= 18 else option.most + 1  # no 4,300-digit int()
        if not option.least <= number <= option.most:
            raise DataError(
                f"Data set {base!r} takes {key} from {option.least} to {option.most} "
                f"({option.why}), not {clipped(value.lstrip('0') or '0', 20)}."
            )
        options[key] = number
    return base, options


def default_root() -> Path:
    """Where torchvision data sets are looked for without ``root``.

    ``$HFFT_DATA_ROOT`` if set, else ``~/.cache/hfft/data``.
    """
    return Path(os.environ.get("HFFT_DATA_ROOT", "~/.cache/hfft/data")).expanduser()


#: Seed of the digits test hold-out: fixed, so the test set never depends on the run.
_DIGITS_TEST_SEED = 20_100_101
_SYNTHETIC_SEED = 1_234

_Raw = tuple["Tensor", "Tensor", "Tensor", "Tensor"]  # train_x, train_y, test_x, test_y


def _digits(root: Path, download: bool) -> _Raw:
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    n_test = len(y) - int(0.8 * len(y))  # 360 of 1,797
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(_DIGITS_TEST_SEED))
    test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
    return x[train], y[train], x[test], y[test]


def _synthetic(root: Path, download: bool) -> _Raw:
    """Ten Gaussian blobs around random 8×8 prototypes; 3,000 training and 600 test images."""
    import torch

    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    prototypes = torch.randn(10, 1, 8, 8, generator=gen)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, 10, (n,), generator=gen)
        return prototypes[y] + 2.5 * torch.randn(n, 1, 8, 8, generator=gen), y

    return *draw(3000), *draw(600)


#: Seed of the MNIST-1D generator: the published data set's.
_MNIST1D_SEED = 42


def _mnist1d(root: Path, download: bool, samples: int = 5000) -> _Raw:
    """MNIST-1D as published (4,000 train, 1,000 test of 5,000), or with ``samples`` in all.

    Generated from the templates built into the ``mnist1d`` package, never
    downloaded; inputs ``(N, 1, 40)`` float32. Generated once per process
    (60,000 samples take about 12 s, :data:`MNIST1D_MAX_SAMPLES` about 45 s)
    and copied for every caller.
    """
    return tuple(t.clone() for t in _generated_mnist1d(samples))  # type: ignore[return-value]


@functools.lru_cache(maxsize=2)
def _generated_mnist1d(samples: int) -> _Raw:
    import torch
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = samples, _MNIST1D_SEED
    made = make_dataset(args)

    def signals(key: str) -> Tensor:
        return torch.as_tensor(made[key], dtype=torch.float32).unsqueeze(1).contiguous()

    y, y_test = (torch.as_tensor(made[k], dtype=torch.int64) for k in ("y", "y_test"))
    return signals("x"), y, signals("x_test"), y_test


def _torchvision(name: str) -> Callable[[Path, bool], _Raw]:
    def load(root: Path, download: bool) -> _Raw:
        import torch
        from torchvision import datasets

        cls = _TORCHVISION_CLASSES[name]

        def open_split(train: bool) -> Any:
            if name == "svhn":
                return datasets.SVHN(root, split="train" if train else "test", download=download)
            return getattr(datasets, cls)(root, train=train, download=download)

        created = folders_to_create(root) if download else []
        if download:
            root.mkdir(parents=True, exist_ok=True)
        try:
            splits = [open_split(True), open_split(False)]
        except Exception as err:  # "Dataset not found or corrupted", a failed download, ...
            if created:  # a download that did not happen leaves no folder behind
                shutil.rmtree(created[-1], ignore_errors=True)
            raise DataError(_torchvision_message(name, root, download, err)) from None
        out: list[Tensor] = []
        for ds in splits:
            x = torch.as_tensor(ds.data)  # uint8, converted once for the whole set
            if x.dim() == 3:  # MNIST-like (N, H, W)
                x = x.unsqueeze(1)
            elif name.startswith("cifar"):  # (N, H, W, C) → NCHW
                x = x.permute(0, 3, 1, 2)
            labels = ds.labels if name == "svhn" else ds.targets
            out += [x.contiguous(), torch.as_tensor(labels, dtype=torch.int64)]
        return out[0], out[1], out[2], out[3]

    return load


_TORCHVISION_CLASSES = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
}


def _damaged_files(name: str, root: Path) -> list[str] | None:
    """The files of a torchvision set that are there but fail its integrity check.

    ``None`` when the set's folder (or files) are not there at all, or the set
    has no checksums to test.
    """
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    cls = getattr(datasets, _TORCHVISION_CLASSES[name])
    if name.startswith("cifar"):
        folder = root / cls.base_folder
        if not folder.is_dir():
            return None
        files = [(folder / f, md5) for f, md5 in (*cls.train_list, *cls.test_list)]
    elif name == "svhn":
        files = [(root / cls.split_list[s][1], cls.split_list[s][2]) for s in ("train", "test")]
        if not any(path.exists() for path, _ in files):
            return None
    else:
        folder = root / DATASETS[name].folder
        return [] if folder.is_dir() else None
    return [str(path.relative_to(root)) for path, md5 in files if not check_integrity(path, md5)]


def _torchvision_message(name: str, root: Path, download: bool, err: Exception) -> str:
    if download:
        return f"Data set {name!r} could not be downloaded into '{root}': {err}"
    damaged = _damaged_files(name, root)
    if damaged is None:
        return (
            f"Data set {name!r} was not found in '{root}' (expected {DATASETS[name].folder} "
            "there); pass --data-root DIR pointing at an existing copy or add --download."
        )
    which = f" ({', '.join(damaged)} fail torchvision's checksum)" if damaged else ""
    return (
        f"Data set {name!r} is in '{root}' but its files are corrupt or incomplete{which}; "
        "replace them, or --download it into an empty --data-root."
    )


LOADERS: dict[str, Callable[..., _Raw]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "mnist1d": _mnist1d,
    **{name: _torchvision(name) for name, info in DATASETS.items() if info.needs_files},
}
