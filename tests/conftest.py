"""Shared fixtures (the helpers are in cases.py and hfft.diagnostics.dense)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A short hfft training run on digits: run.json and two checkpoints."""
    from hfft.experiment.run.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    train(
        TrainConfig(
            model="mlp",
            data="digits",
            out=str(out),
            epochs=4,
            lr=0.05,
            batch_size=64,
            momentum=0.9,
            weight_decay=1e-4,
            checkpoints=2,
            seed=1,
            model_args={"width": 32},
        )
    )
    return out


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # tiny tensors: one thread is faster and immune to oversubscribed cores
    torch.set_num_threads(1)
