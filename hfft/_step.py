"""Plumbing of one HF step: the model's mode during the step, and its wall clock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["Timer", "step_mode"]


@contextlib.contextmanager
def step_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """The model's mode during an HF step; every module's own mode is restored after.

    ``"eval"``/``"train"`` switch the whole model, ``"keep"`` leaves it. A step
    must not change the model's state, so BatchNorm layers in training mode use
    the batch statistics without updating their running averages (their
    ``track_running_stats`` is off for the step).
    """
    modes = {m: m.training for m in model.modules()}
    if mode != "keep":
        model.train(mode == "train")
    paused = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for bn in paused:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn in paused:
            bn.track_running_stats = True
        for module, training in modes.items():
            module.training = training


class Timer:
    """Wall-clock laps; synchronises CUDA only at lap boundaries."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start = self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        out, self.last = now - self.last, now
        return out

    def total(self) -> float:
        return self._now() - self.start
