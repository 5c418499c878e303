"""SGD training from scratch with evenly spaced checkpoints (paper §3.1, step 1).

The training clock runs only while the optimizer works (batch gathering,
augmentation, forward, backward, update); the per-epoch evaluation of
train-eval, validation and test metrics is paused out of it. The run manifest
``run.json`` records the total training seconds and each checkpoint's elapsed
seconds — what makes a budget of "10 % of the training time" possible later.
It is rewritten atomically after every epoch, so an interrupted run leaves a
valid manifest (status ``"interrupted"``) and valid checkpoints.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfft._io import atomic_write_json
from hfft._version import __version__
from hfft.checkpoint import save_checkpoint
from hfft.evaluation import evaluate_splits

if TYPE_CHECKING:
    from hfft.data import DataSplits
    from hfft.sampling import BatchSampler

__all__ = ["TrainConfig", "TrainResult", "checkpoint_epochs", "sgd_epoch", "train", "versions"]

MANIFEST = "run.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run."""

    model: str
    data: str
    out: str
    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    model_args: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    download: bool = False
    checkpoints: int = 10
    seed: int = 0
    device: str = "cpu"
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ValueError("weight decay and momentum must be non-negative")


@dataclass(frozen=True)
class TrainResult:
    """Where the run's files are and how it ended."""

    manifest: Path
    checkpoints: list[Path]
    train_seconds: float
    final_metrics: dict[str, float]
    status: str


def checkpoint_epochs(epochs: int, count: int) -> list[int]:
    """``count`` evenly spaced epochs in ``1..epochs``, the last one at the end.

    Epoch ``round(k · epochs / count)`` for ``k = 1..count`` (deduplicated when
    ``count > epochs``).
    """
    return sorted({max(1, round(k * epochs / count)) for k in range(1, count + 1)})


def versions() -> dict[str, str]:
    """Versions of the libraries that determine the numbers."""
    import numpy

    return {
        "hfft": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sgd_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    splits: DataSplits,
    sampler: BatchSampler,
    batch_size: int,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """One epoch of SGD over the training split; returns the sum of batch losses.

    Batches are index gathers on the device (no per-sample Python), augmented
    when the splits allow it. The loss sum stays on the device: no host
    synchronisation inside the epoch.
    """
    from hfft.sampling import augment_batch

    model.train()
    n = splits.train_x.shape[0]
    loss_sum = torch.zeros((), device=splits.train_x.device)
    for step in range(max(1, n // batch_size)):  # full batches only, like drop_last
        idx = sampler.next_batch(batch_size)
        x, y = splits.train_x[idx], splits.train_y[idx]
        if splits.augment is not None:
            x = augment_batch(x, splits.augment, generator)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
        if on_step is not None:
            on_step(step + 1)
    return loss_sum


def _step_hook(
    on_step: Callable[[int, int, int], None] | None, epoch: int, steps: int
) -> Callable[[int], None] | None:
    if on_step is None:
        return None

    def hook(step: int) -> None:
        on_step(epoch, step, steps)

    return hook


def train(
    config: TrainConfig,
    on_step: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a model with SGD and write checkpoints and the run manifest.

    Args:
        config: The run's configuration.
        on_step: Called as ``on_step(epoch, step, steps_per_epoch)`` after
            every optimizer step (for progress bars).
        on_epoch: Called with each epoch's record after its evaluation.

    Returns:
        The :class:`TrainResult`; on ``KeyboardInterrupt`` the manifest is
        marked ``"interrupted"`` and the interrupt is re-raised.
    """
    from hfft.data import load_data
    from hfft.models import param_groups
    from hfft.modelspec import build_model
    from hfft.sampling import BatchSampler

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    splits = load_data(
        config.data,
        root=config.data_root,
        download=config.download,
        device=device,
        seed=config.seed,
        augment=config.augment,
    )
    model = build_model(
        config.model,
        config.model_args,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        input_size=splits.input_size,
    ).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(
        param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum
    )
    sampler = BatchSampler(splits.train_x.shape[0], seed=config.seed, device=device)
    gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    n_train = splits.train_x.shape[0]
    steps_per_epoch = max(1, n_train // config.batch_size)
    save_at = set(checkpoint_epochs(config.epochs, config.checkpoints))

    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "hfft-train",
        "status": "running",
        "config": asdict(config),
        "data": {
            "name": splits.name,
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "input_size": splits.input_size,
            "train_size": n_train,
        },
        "device": str(device),
        "versions": versions(),
        "train_seconds": 0.0,
        "checkpoints": [],
        "epochs": [],
    }
    meta_base = {
        "model": config.model,
        "model_args": config.model_args,
        "data": config.data,
        "num_classes": splits.num_classes,
        "in_channels": splits.in_channels,
        "input_size": splits.input_size,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "epochs_total": config.epochs,
        "seed": config.seed,
        # the data split follows this seed: runs from this checkpoint must reuse it
        "data_seed": config.seed,
        "augment": config.augment,
        "hfft_version": __version__,
    }
    elapsed = 0.0
    written: list[Path] = []
    metrics: dict[str, float] = {}
    manifest_path = out / MANIFEST
    atomic_write_json(manifest_path, manifest)
    try:
        for epoch in range(1, config.epochs + 1):
            _sync(device)
            start = time.perf_counter()
            loss_sum = sgd_epoch(
                model,
                opt,
                loss_fn,
                splits,
                sampler,
                config.batch_size,
                gen,
                _step_hook(on_step, epoch, steps_per_epoch),
            )
            _sync(device)
            elapsed += time.perf_counter() - start
            # evaluation is outside the training clock
            metrics = evaluate_splits(model, splits, loss_fn)
            record = {
                "epoch": epoch,
                "elapsed_seconds": elapsed,
                "train_batch_loss": float(loss_sum) / steps_per_epoch,
                **metrics,
            }
            manifest["epochs"].append(record)
            manifest["train_seconds"] = elapsed
            if epoch in save_at:
                path = out / f"ckpt-{len(written) + 1:02d}.safetensors"
                save_checkpoint(
                    path,
                    model.state_dict(),
                    {**meta_base, "epoch": epoch, "elapsed_seconds": elapsed, "metrics": metrics},
                )
                written.append(path)
                manifest["checkpoints"].append(
                    {"path": path.name, "epoch": epoch, "elapsed_seconds": elapsed}
                )
            atomic_write_json(manifest_path, manifest)
            if on_epoch is not None:
                on_epoch(record)
    except KeyboardInterrupt:
        manifest["status"] = "interrupted"
        manifest["train_seconds"] = elapsed
        atomic_write_json(manifest_path, manifest)
        raise
    manifest["status"] = "completed"
    atomic_write_json(manifest_path, manifest)
    return TrainResult(manifest_path, written, elapsed, metrics, "completed")
