"""Data: splits, registered and user data sets, augmentation, batch sampling."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor

from hfft.experiment.datasets import DATASETS, AugmentSpec, DataError
from hfft.experiment.splits import DataSplits, load_data, split_indices


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits")


@pytest.fixture(scope="module")
def synthetic() -> DataSplits:
    return load_data("synthetic")


def row_set(x: Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(x.shape[0], -1)}


# --- splits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_train", "n_test", "n_valid", "n_eval"),
    [
        pytest.param(50_000, 10_000, 10_000, 10_000, id="cifar10"),
        pytest.param(60_000, 10_000, 10_000, 10_000, id="mnist"),
        pytest.param(73_257, 26_032, 7_326, 26_032, id="svhn"),
        pytest.param(1_437, 360, 144, 360, id="digits"),
        pytest.param(20, 30, 2, 18, id="tiny"),
    ],
)
def test_split_sizes_and_disjointness(n_train: int, n_test: int, n_valid: int, n_eval: int) -> None:
    idx = split_indices(n_train, n_test, seed=3)
    assert idx.valid.numel() == n_valid
    assert idx.train.numel() == n_train - n_valid
    assert idx.train_eval.numel() == n_eval
    both = torch.cat([idx.train, idx.valid])
    assert torch.equal(both.sort().values, torch.arange(n_train))  # disjoint and complete
    assert idx.train_eval.unique().numel() == n_eval
    assert 0 <= int(idx.train_eval.min()) and int(idx.train_eval.max()) < idx.train.numel()


def test_split_is_seeded() -> None:
    a, b, c = (split_indices(1000, 100, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.valid, b.valid) and torch.equal(a.train_eval, b.train_eval)
    assert not torch.equal(a.valid, c.valid)


def test_split_too_small() -> None:
    with pytest.raises(DataError, match="too small"):
        split_indices(1, 1, seed=0)


# --- registered data sets ------------------------------------------------------------------


def test_digits(digits: DataSplits) -> None:
    sizes = [t.shape[0] for t in (digits.train_x, digits.valid_x, digits.train_eval_x)]
    assert sizes == [1293, 144, 360]
    assert digits.test_x.shape == (360, 1, 8, 8)
    assert digits.num_train == 1293
    assert (digits.num_classes, digits.in_channels, digits.input_size) == (10, 1, 8)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert set(digits.train_y.tolist()) == set(range(10))
    assert digits.augment == AugmentSpec(crop_padding=1, flip=False)
    # normalised with the training split's statistics
    assert abs(float(digits.train_x.mean())) < 1e-5
    assert float(digits.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.name = "x"  # type: ignore[misc]


def test_digits_reproducible_and_test_set_fixed(digits: DataSplits) -> None:
    again = load_data("digits", augment=False)
    assert again.augment is None
    for field in ("train_x", "train_y", "valid_y", "train_eval_x", "test_x", "test_y"):
        assert torch.equal(getattr(again, field), getattr(digits, field)), field
    other = load_data("digits", seed=1)
    assert not torch.equal(other.valid_y, digits.valid_y)
    assert torch.equal(other.test_y, digits.test_y)  # the test hold-out ignores the seed


def test_splits_disjoint_by_value(synthetic: DataSplits) -> None:
    train, valid, test = (
        row_set(x) for x in (synthetic.train_x, synthetic.valid_x, synthetic.test_x)
    )
    assert len(train) == synthetic.num_train  # continuous data: rows identify samples
    assert train.isdisjoint(valid) and train.isdisjoint(test) and valid.isdisjoint(test)
    assert row_set(synthetic.train_eval_x) <= train


def test_synthetic_is_learnable(synthetic: DataSplits) -> None:
    sizes = [t.shape[0] for t in (synthetic.train_x, synthetic.valid_x, synthetic.test_x)]
    assert sizes == [2400, 600, 600]
    assert synthetic.num_classes == 10
    # nearest class mean: far above chance, far from perfect
    flat = synthetic.train_x.flatten(1)
    means = torch.stack([flat[synthetic.train_y == c].mean(0) for c in range(10)])
    pred = torch.cdist(synthetic.test_x.flatten(1), means).argmin(1)
    assert 0.5 < float((pred == synthetic.test_y).float().mean()) < 1.0


@pytest.mark.parametrize("name", [n for n, info in DATASETS.items() if info.needs_files])
def test_missing_torchvision_data(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError) as info:
        load_data(name, root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "--data-root" in msg and "--download" in msg
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


class _FakeVision:
    """Stands in for a torchvision data set: arrays laid out as torchvision keeps them."""

    layout = "nhwc"

    def __init__(self, root, train=True, split=None, download=False) -> None:
        import numpy as np

        n = 30 if (train if split is None else split == "train") else 10
        h = np.arange(8, dtype=np.uint8)[None, :, None, None]  # varies along H only
        c = 50 * np.arange(self.channels, dtype=np.uint8)[None, None, None, :]
        nhwc = np.broadcast_to(h + c, (n, 8, 8, self.channels)).copy()
        labels = np.arange(n) % 10
        if self.layout == "nchw":  # SVHN
            self.data, self.labels = nhwc.transpose(0, 3, 1, 2), labels
        elif self.layout == "nhw":  # MNIST: a uint8 tensor
            self.data, self.targets = torch.from_numpy(nhwc[..., 0]), torch.from_numpy(labels)
        else:  # CIFAR: a numpy array and a list
            self.data, self.targets = nhwc, labels.tolist()


@pytest.mark.parametrize(
    ("name", "attr", "layout", "channels"),
    [
        pytest.param("cifar10", "CIFAR10", "nhwc", 3, id="cifar10"),
        pytest.param("svhn", "SVHN", "nchw", 3, id="svhn"),
        pytest.param("fashion-mnist", "FashionMNIST", "nhw", 1, id="fashion-mnist"),
    ],
)
def test_torchvision_layouts(monkeypatch, tmp_path: Path, name, attr, layout, channels) -> None:
    import torchvision.datasets

    fake = type(attr, (_FakeVision,), {"layout": layout, "channels": channels})
    monkeypatch.setattr(torchvision.datasets, attr, fake)
    splits = load_data(name, root=tmp_path)
    assert splits.train_x.shape == (27, channels, 8, 8) and splits.test_x.shape == (
        10,
        channels,
        8,
        8,
    )
    assert splits.mean == pytest.approx([50 * c + 3.5 for c in range(channels)])
    assert torch.equal(splits.train_x[..., 0], splits.train_x[..., 7])  # W is the last axis
    assert splits.train_y.dtype == torch.int64


def test_unknown_name() -> None:
    with pytest.raises(DataError, match=r"Unknown data set 'imagenet'.*digits"):
        load_data("imagenet")


# --- the user's own data -------------------------------------------------------------------

USER_DATA = """
import torch
from torch.utils.data import Dataset


class Squares(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 2, 6, 6, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def as_datasets():
    return Squares(100, 0), Squares(20, 1)


def as_tensors(root=None):
    assert root is not None
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 5, 5), generator=g, dtype=torch.uint8)
    y = torch.arange(100) % 3
    return (x, y), (x[:10], y[:10])


def not_a_pair():
    return 3
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mydata.py"
    path.write_text(textwrap.dedent(USER_DATA))
    return path


def test_user_dataset_factory(user_file: Path) -> None:
    splits = load_data(f"{user_file}:as_datasets")
    assert (splits.num_classes, splits.in_channels, splits.input_size) == (4, 2, 6)
    assert splits.train_x.shape == (80, 2, 6, 6) and splits.valid_x.shape == (20, 2, 6, 6)
    assert splits.test_x.shape == (20, 2, 6, 6) and splits.train_eval_x.shape[0] == 20
    assert splits.augment is None


def test_user_tensor_factory(user_file: Path, tmp_path: Path) -> None:
    splits = load_data(f"{user_file}:as_tensors", root=tmp_path)
    assert (splits.num_classes, splits.in_channels, splits.input_size) == (3, 1, 5)
    assert splits.train_x.dtype == torch.float32
    assert splits.test_x.shape == (10, 1, 5, 5)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        pytest.param("not_a_pair", "must return a pair", id="not-a-pair"),
        pytest.param("missing", "has no attribute", id="missing-attribute"),
    ],
)
def test_user_factory_errors(user_file: Path, factory: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_data(f"{user_file}:{factory}")


def test_user_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"{tmp_path / 'nope.py'}:f")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("split", ["train", "test"])
def test_non_finite_inputs_are_refused(tmp_path: Path, value: float, split: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(
        "import torch\n"
        "def make():\n"
        "    x, y = torch.randn(60, 1, 4, 4), torch.arange(60) % 3\n"
        f"    x[{0 if split == 'train' else 55}, 0, 1, 2] = float({str(value)!r})\n"
        "    return (x[:50], y[:50]), (x[50:], y[50:])\n"
    )
    words = "training" if split == "train" else "test"
    with pytest.raises(DataError, match=f"The {words} inputs of .* contain NaN or infinite"):
        load_data(f"{path}:make")


def test_corrupt_cifar_files_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError) as info:
        load_data("cifar10", root=tmp_path)
    msg = str(info.value)
    assert "is in" in msg and "corrupt or incomplete" in msg and "not found" not in msg
    assert "cifar-10-batches-py/data_batch_1" in msg and "cifar-10-batches-py/data_batch_5" in msg


def test_a_failed_download_leaves_no_folder(monkeypatch, tmp_path: Path) -> None:
    import torchvision.datasets

    class Offline(_FakeVision):
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("Error downloading cifar-10-python.tar.gz")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    root = tmp_path / "new" / "data"
    with pytest.raises(DataError, match="could not be downloaded"):
        load_data("cifar10", root=root, download=True)
    assert not (tmp_path / "new").exists()
