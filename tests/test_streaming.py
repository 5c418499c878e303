"""Streamed data: a user's ImageFolder read batch by batch gives the resident data's numbers.

The images are generated PNGs in a temporary folder (``tests/user_problems.py``);
``HFFT_STREAM_ABOVE=0`` streams them, a large limit reads them into memory, and
everything hfft computes from the two must agree exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tests.user_problems as up
from hfft.cli import app
from hfft.experiment.data.datasets import DataError
from hfft.experiment.data.sampling import BatchSampler, BatchStream
from hfft.experiment.data.splits import load_data
from hfft.experiment.data.streaming import StreamedInputs, resident_limit, stream_workers
from hfft.experiment.data.task import Task
from hfft.experiment.run.evaluation import evaluate
from hfft.optim.batches import batch_size, take

FILE = Path(up.__file__).resolve()
runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    up.write_image_folder(root, per_class=60)  # 180 training and 60 test images
    return root


def load(folder: Path, monkeypatch: pytest.MonkeyPatch, *, streamed: bool):
    monkeypatch.setenv("HFFT_STREAM_ABOVE", "0" if streamed else "1G")
    return load_data(f"{FILE}:image_folder", root=folder, seed=3, valid_fraction=0.2)


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFFT_STREAM_ABOVE", "512M")
    monkeypatch.setenv("HFFT_STREAM_WORKERS", "3")
    assert resident_limit() == 512 << 20 and stream_workers() == 3
    monkeypatch.delenv("HFFT_STREAM_ABOVE")
    assert resident_limit() == 2 << 30


def test_a_large_dataset_is_streamed_and_its_splits_are_the_resident_ones(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resident = load(folder, monkeypatch, streamed=False)
    streamed = load(folder, monkeypatch, streamed=True)
    assert isinstance(resident.train_x, torch.Tensor)
    assert isinstance(streamed.train_x, StreamedInputs)
    assert streamed.input_shape == resident.input_shape == (3, 16, 16)
    assert streamed.num_classes == resident.num_classes == 3
    for name in ("train", "valid", "train_eval", "test"):
        xs, xr = getattr(streamed, f"{name}_x"), getattr(resident, f"{name}_x")
        assert batch_size(xs) == xr.shape[0] > 0
        assert torch.equal(take(xs, torch.arange(len(xs))), xr), name
        assert torch.equal(getattr(streamed, f"{name}_y"), getattr(resident, f"{name}_y"))


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_resident_batches(
    folder: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setenv("HFFT_STREAM_WORKERS", str(workers))
    splits = {s: load(folder, monkeypatch, streamed=s) for s in (False, True)}
    streams = {}
    for s, data in splits.items():
        sampler = BatchSampler(data.num_train, seed=5)
        streams[s] = BatchStream(data.train_x, data.train_y, lambda sp=sampler: sp.next_batch(40))
    for _ in range(7):  # 144 training images: batches of 40 cross epochs
        (xr, yr), (xs, ys) = streams[False].next(), streams[True].next()
        assert torch.equal(xr, xs) and torch.equal(yr, ys)


def test_evaluating_streamed_data_gives_the_resident_numbers(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = up.small_cnn()
    task = Task()
    found = [
        evaluate(model, d.test_x, d.test_y, task, task.loss(), batch=25)
        for d in (
            load(folder, monkeypatch, streamed=False),
            load(folder, monkeypatch, streamed=True),
        )
    ]
    assert found[0] == found[1] and set(found[0]) == {"loss", "accuracy"}


def test_pil_images_and_bad_settings_are_refused_in_one_sentence(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match="ToTensor"):
        load_data(f"{FILE}:image_folder_without_transform", root=folder)
    monkeypatch.setenv("HFFT_STREAM_ABOVE", "lots")
    with pytest.raises(DataError, match="HFFT_STREAM_ABOVE must be a size"):
        load_data(f"{FILE}:image_folder", root=folder)


def _finetune(ckpt: Path, folder: Path, out: Path, strategy: str) -> dict:
    args = [
        "finetune", ckpt, "--model", f"{FILE}:small_cnn", "--data", f"{FILE}:image_folder",
        "--data-root", folder, "--valid-fraction", "0.2", "--strategy", strategy,
        "--budget", "4steps", "--eval-points", "2", "--out", out, "--json", "--device", "cpu",
    ]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy", ["sgd:lr=0.05,batch_size=32", "hf:m=48,cg_max_iter=5"], ids=["sgd", "hf"]
)
def test_finetune_on_a_streamed_image_folder_equals_the_resident_run(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "cnn.pt"
    torch.save(up.small_cnn().state_dict(), ckpt)
    runs = {}
    for limit in ("1G", "0"):
        monkeypatch.setenv("HFFT_STREAM_ABOVE", limit)
        runs[limit] = _finetune(ckpt, folder, tmp_path / f"out{limit}", strategy)
    assert runs["0"]["steps"] == runs["1G"]["steps"] == 4
    for when in ("initial", "final"):
        numbers = [{k: v for k, v in r[when].items() if "seconds" not in k} for r in runs.values()]
        assert numbers[0] == numbers[1] and "test_loss" in numbers[0]


def test_the_streaming_benchmark_times_both_pipelines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfft.diagnostics.stream_bench import bench_streaming

    monkeypatch.setenv("HFFT_STREAM_ABOVE", "3G")
    up.write_image_folder(tmp_path, per_class=20, size=8)
    result = bench_streaming(tmp_path, batch_size=16, m=16, rounds=1)
    assert result["train_images"] == 54 and set(result["seconds"]) == {
        f"{op} {kind}" for op in ("sgd epoch", "hf step") for kind in ("resident", "streamed")
    } | {"hf draw read"}
    assert result["sgd_epoch_ratio"] == pytest.approx(
        result["seconds"]["sgd epoch streamed"] / result["seconds"]["sgd epoch resident"]
    )
    assert os.environ["HFFT_STREAM_ABOVE"] == "3G"  # the benchmark leaves the setting as it was


def test_streaming_leaves_the_global_random_state_alone(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a model with dropout, or hfft train's initial weights, must not depend on how data is read
    model = up.small_cnn()
    for streamed in (False, True):
        torch.manual_seed(7)
        before = torch.random.get_rng_state()
        data = load(folder, monkeypatch, streamed=streamed)
        evaluate(model, data.test_x, data.test_y, Task(), Task().loss(), batch=25)
        stream = BatchStream(data.train_x, data.train_y, lambda: torch.arange(8))
        stream.next()
        stream.close()
        assert torch.equal(torch.random.get_rng_state(), before), streamed


class _Remapped(torch.utils.data.Dataset):
    """A Dataset whose ``targets`` list is not what its items say (labels remapped)."""

    def __init__(self) -> None:
        self.targets = [i % 3 for i in range(30)]

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int):
        label = self.targets[i] if i in (0, 29) else (self.targets[i] + 1) % 3
        return torch.full((2,), float(i)), label


def test_a_targets_list_that_disagrees_with_the_items_is_not_trusted() -> None:
    from hfft.experiment.data.streaming import read_targets

    data = _Remapped()
    expected = torch.tensor([int(data[i][1]) for i in range(30)])
    assert torch.equal(read_targets(data), expected)
