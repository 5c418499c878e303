"""Splits: sizes, seeds and disjointness, the built-in data sets as device-resident splits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from hfft.experiment.data.datasets import AugmentSpec, DataError
from hfft.experiment.data.splits import DataSplits, load_data, split_indices


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


def test_unknown_name() -> None:
    with pytest.raises(DataError, match=r"Unknown data set 'imagenet'.*digits"):
        load_data("imagenet")


def test_cast_inputs_casts_floating_inputs_only_and_says_so(tmp_path) -> None:
    path = tmp_path / "tokens.py"
    path.write_text(
        "import torch\n"
        "def make():\n"
        "    def part(n):\n"
        "        x = {'ids': torch.arange(n * 4).view(n, 4), 'w': torch.rand(n, 4).double()}\n"
        "        return x, torch.arange(n) % 3\n"
        "    return part(20), part(10)\n"
    )
    loaded = load_data(f"{path}:make")
    splits = loaded.cast_inputs(torch.float32)
    for x in (splits.train_x, splits.valid_x, splits.train_eval_x, splits.test_x):
        assert x["ids"].dtype == torch.int64 and x["w"].dtype == torch.float32
    assert splits.notes == ("the data's float64 inputs were cast to the model's float32",)
    assert loaded.train_x["w"].dtype == torch.float64 and not loaded.notes  # a new value
    assert splits.cast_inputs(torch.float32) is splits  # nothing left to cast or to say


def test_recorded_normalisation_must_have_the_datas_channels() -> None:
    with pytest.raises(DataError, match="has 2 channels but 'digits' inputs have 1"):
        load_data("digits", normalization={"mean": [0.0, 0.0], "std": [1.0, 1.0]})
