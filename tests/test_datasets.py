"""Data sources: torchvision folders (missing, corrupt, layouts), user factories, checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from hfft.experiment.data.datasets import DATASETS, DataError
from hfft.experiment.data.splits import load_data


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
    assert splits.normalization["mean"] == pytest.approx([50 * c + 3.5 for c in range(channels)])
    assert torch.equal(splits.train_x[..., 0], splits.train_x[..., 7])  # W is the last axis
    assert splits.train_y.dtype == torch.int64


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
    # (train, test): the training set is the checkpoint's, so nothing is held out unasked
    assert splits.train_x.shape == (100, 2, 6, 6) and splits.valid_y.shape[0] == 0
    assert splits.valid_source == "none"
    assert splits.test_x.shape == (20, 2, 6, 6) and splits.train_eval_x.shape[0] == 20
    assert splits.augment is None and splits.normalization is None


def test_a_hold_out_only_when_asked_and_said_if_seen(user_file: Path) -> None:
    fresh = load_data(f"{user_file}:as_datasets", valid_fraction=0.2)
    assert fresh.train_x.shape[0] == 80 and fresh.valid_x.shape[0] == 20
    assert fresh.valid_source == "held out"
    seen = load_data(f"{user_file}:as_datasets", valid_fraction=0.2, valid_seen=True)
    assert seen.valid_source == "held out of the checkpoint's training data"
    assert torch.equal(seen.valid_x, fresh.valid_x)  # the same seeded hold-out


def test_user_tensor_factory_data_is_used_as_returned(user_file: Path, tmp_path: Path) -> None:
    splits = load_data(f"{user_file}:as_tensors", root=tmp_path)
    assert splits.num_classes == 3 and splits.input_shape == (5, 5)
    assert splits.train_x.dtype == torch.uint8  # never converted, never normalised
    assert splits.test_x.shape == (10, 5, 5)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        pytest.param(
            "not_a_pair", r"must return \(train, test\) or \(train, valid", id="not-a-pair"
        ),
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
    with pytest.raises(DataError, match=f"The {split} data of .* contain NaN or infinite"):
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
