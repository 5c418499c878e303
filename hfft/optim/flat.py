"""Plumbing between a model's parameters and the flat vectors CG works on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FlatSpace", "ModelState", "flatten", "weight_decay_vector"]


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """The tensors' values concatenated into one 1-D tensor (a detached copy)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def weight_decay_vector(groups: Iterable[Mapping[str, Any]]) -> Tensor:
    """Each optimised entry's L2 factor, flat in the groups' order: the ``weight_decay`` of
    its parameter group, for the parameters that require gradients."""
    return torch.cat([
        torch.full((p.numel(),), float(g["weight_decay"]), dtype=p.dtype, device=p.device)
        for g in groups for p in g["params"] if p.requires_grad
    ])  # fmt: skip


class FlatSpace:
    """Maps a list of parameter-shaped tensors to one flat vector and back.

    Args:
        params: The tensors whose shapes define the space.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        self.dim = sum(self.numels)

    def flatten(self, tensors: Iterable[Tensor]) -> Tensor:
        """Concatenate tensors into one 1-D tensor (a copy); see :func:`flatten`."""
        return flatten(tensors)

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a 1-D tensor into views shaped like the parameters."""
        return [
            chunk.view(shape)
            for chunk, shape in zip(torch.split(flat, self.numels), self.shapes, strict=True)
        ]


class ModelState:
    """Names and values of a model's tensors, split into optimised and held fixed.

    Args:
        model: The network.
        params: The parameters that are optimised (a subset of the model's).

    Raises:
        ValueError: If a parameter does not belong to the model.
    """

    def __init__(self, model: nn.Module, params: Sequence[Tensor]) -> None:
        by_id = {id(p): name for name, p in model.named_parameters()}
        missing = [i for i, p in enumerate(params) if id(p) not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} optimised parameter(s) do not belong to the model passed to step()"
            )
        self.param_names = [by_id[id(p)] for p in params]
        chosen = {id(p) for p in params}
        self.other_names: list[str] = []
        self.others: list[Tensor] = []
        for name, p in model.named_parameters():
            if id(p) not in chosen:
                self.other_names.append(name)
                self.others.append(p.detach())
        for name, b in model.named_buffers():
            self.other_names.append(name)
            self.others.append(b.detach())

    def state(self, params: Sequence[Tensor]) -> dict[str, Tensor]:
        """The full ``functional_call`` state with ``params`` as the optimised values."""
        out = dict(zip(self.param_names, params, strict=True))
        out.update(zip(self.other_names, self.others, strict=True))
        return out
