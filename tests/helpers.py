"""Small helpers the tests share (fixtures are in conftest.py, problems in cases.py)."""

from __future__ import annotations

from torch import Tensor, nn

from hfft.optim.flat import flatten


def flat_params(model: nn.Module) -> Tensor:
    """The model's parameters as one flat vector (a detached copy)."""
    return flatten(model.parameters())
