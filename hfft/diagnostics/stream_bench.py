"""What streaming costs: one SGD epoch and one HF step, streamed against resident data.

Run ``python -m hfft.diagnostics.stream_bench`` (``--help`` for the options).
It writes a folder of generated PNG images (``--images``, 3×32×32), loads it
twice as a user's ``ImageFolder`` (read into memory, and streamed with
``HFFT_STREAM_ABOVE=0``), and times hfft's own SGD and HF runners on both,
interleaved round by round (:func:`hfft.diagnostics.instruments.interleaved_medians`),
so that the ratio streamed / resident is measured side by side in one run.
The workers read ahead, as in a run: an HF step's next batches are read while
it (or, here, another timed operation) computes, so the HF ratio shows what
streaming adds to a step, not what reading costs; ``hf draw read`` is that
cost, one HF draw read in the main process.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hfft.diagnostics.instruments import interleaved_medians
from hfft.experiment.data.splits import DataSplits, load_data
from hfft.experiment.data.task import Task
from hfft.experiment.strategies.make import make_runner
from hfft.experiment.strategies.registry import Strategy

__all__ = ["bench_streaming", "image_folder", "write_image_folder"]


def write_image_folder(
    root: Path, per_class: int, classes: int = 3, size: int = 16, seed: int = 0
) -> None:
    """PNG images 3×size×size in ``root/{train,test}/class_k/``: a colour per class, plus
    noise; a third as many test images as training images."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, 1, 1, generator=g)
    for split, count in (("train", per_class), ("test", max(1, per_class // 3))):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = torch.randn(3, size, size, generator=g)
                img = (colours[k] + 0.35 * noise).clamp(0, 1)
                pixels = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def image_folder(root: str) -> tuple[Any, Any]:
    """A data factory: the ``train`` and ``test`` ImageFolders below ``root``, as tensors."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    return tuple(ImageFolder(f"{root}/{part}", transform=ToTensor()) for part in ("train", "test"))


def _cnn(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def _splits(root: Path, limit: str) -> DataSplits:
    os.environ["HFFT_STREAM_ABOVE"] = limit
    spec = "hfft.diagnostics.stream_bench:image_folder"
    return load_data(spec, root=root, seed=0, valid_fraction=0.1)


def _runner(strategy: Strategy, model: nn.Module, splits: DataSplits, batch_size: int) -> Any:
    return make_runner(
        strategy,
        model,
        splits,
        loss_fn=Task().loss(),
        lr=0.01,
        batch_size=batch_size,
        momentum=0.9,
        weight_decay=0.0,
        eval_batch_size=None,
        evaluations=1,
        seed=0,
    )


def _steps(runner: Any, n: int) -> None:
    for _ in range(n):
        runner.step(0.0)


def bench_streaming(
    root: Path, batch_size: int = 128, m: int = 512, rounds: int = 3
) -> dict[str, Any]:
    """Seconds of one SGD epoch and one HF step on resident and on streamed data, and ratios."""
    before = os.environ.get("HFFT_STREAM_ABOVE")
    try:
        data = {"resident": _splits(root, "1000G"), "streamed": _splits(root, "0")}
    finally:
        os.environ.pop("HFFT_STREAM_ABOVE", None)
        if before is not None:
            os.environ["HFFT_STREAM_ABOVE"] = before
    torch.manual_seed(0)
    model = _cnn(data["resident"].num_classes)
    fns: dict[str, Callable[[], Any]] = {}
    for kind, splits in data.items():
        sgd = _runner(Strategy("sgd"), copy.deepcopy(model), splits, batch_size)
        hf_strategy = Strategy("hf", {"m": m, "cg_max_iter": 10})
        hf = _runner(hf_strategy, copy.deepcopy(model), splits, batch_size)
        steps = splits.num_train // batch_size
        fns[f"sgd epoch {kind}"] = functools.partial(_steps, sgd, steps)
        fns[f"hf step {kind}"] = functools.partial(_steps, hf, 1)
    # what reading one HF draw (B and B̄) costs in the main process, without workers
    streamed = data["streamed"].train_x
    draw = torch.arange(min(len(streamed), m + min(1024, len(streamed) - m)))
    fns["hf draw read"] = functools.partial(streamed.take, draw)
    seconds = interleaved_medians(fns, cuda=False, rounds=rounds)
    return {
        "train_images": data["resident"].num_train,
        "batch_size": batch_size,
        "m": m,
        "workers": getattr(data["streamed"].train_x, "workers", 0),
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "sgd_epoch_ratio": seconds["sgd epoch streamed"] / seconds["sgd epoch resident"],
        "hf_step_ratio": seconds["hf step streamed"] / seconds["hf step resident"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="training images (3 classes)")
    parser.add_argument("--size", type=int, default=32, help="side of the images")
    parser.add_argument("--batch-size", type=int, default=128, help="SGD's batch")
    parser.add_argument("--m", type=int, default=512, help="HF's batch B")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (medians)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_image_folder(Path(tmp), per_class=args.images // 3, size=args.size)
        print(json.dumps(bench_streaming(Path(tmp), args.batch_size, args.m, args.rounds)))


if __name__ == "__main__":
    main()
