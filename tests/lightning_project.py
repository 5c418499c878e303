"""A user's PyTorch Lightning project, as hfft meets it: a LightningModule with object
hyperparameters, trained by a ``Trainer`` that writes the ``.ckpt``.

Nothing here uses hfft. The module keeps its network under ``self.net`` and saves
its hyperparameters — an OmegaConf config, an ``argparse.Namespace`` and a
``pathlib`` path, as real projects do — into the checkpoint. hfft builds the network
with :func:`network` (``--model tests/lightning_project.py:network``), strips the
``net.`` prefix, and with ``--export lightning`` writes the fine-tuned weights back
into a copy of the ``.ckpt`` that :meth:`WineModule.load_from_checkpoint` loads.

``python tests/lightning_project.py FOLDER`` trains it and writes ``FOLDER/wine.ckpt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

SEED = 0


def data():
    """The wine data, standardised, split 75/25 (the user's own)."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x, y = (x - x.mean(0)) / x.std(0), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    test, train = perm[:44], perm[44:]
    return (x[train], y[train]), (x[test], y[test])


def network(width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(13, width), nn.Tanh(), nn.Linear(width, 3))


def module_class():
    """The LightningModule (defined when first asked for: importing this file needs no
    Lightning)."""
    import lightning.pytorch as pl

    class WineModule(pl.LightningModule):
        def __init__(self, config, run: argparse.Namespace, logs: Path, lr: float = 0.02):
            super().__init__()
            self.save_hyperparameters()
            self.net = network(config.width)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    WineModule.__qualname__ = WineModule.__name__ = "WineModule"
    return WineModule


def train(folder) -> Path:
    """Two epochs of the user's Trainer; the checkpoint it saves."""
    import lightning.pytorch as pl
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(SEED)
    config = OmegaConf.create({"width": 32, "optimizer": {"name": "sgd", "momentum": 0.9}})
    run = argparse.Namespace(seed=SEED, tags=["wine", "baseline"])
    module = module_class()(config, run, Path(folder) / "logs")
    (x, y), _ = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    path = Path(folder) / "wine.ckpt"
    trainer.save_checkpoint(path)
    return path


@torch.no_grad()
def own_evaluation(module) -> tuple[float, float]:
    """The user's test loss and accuracy of a loaded module."""
    _, (x, y) = data()
    module.eval()
    logits = module(x)
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float((logits.argmax(1) == y).float().mean())


if __name__ == "__main__":
    import sys

    print(train(sys.argv[1] if len(sys.argv) > 1 else "lightning-checkpoints"))
