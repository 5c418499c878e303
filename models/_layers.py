"""Layers that reproduce TensorFlow's "same" padding, and small shape helpers.

TensorFlow pads "same" convolutions and poolings so that the output has
``ceil(in / stride)`` positions per spatial axis. The total padding is split
with the smaller half *before* and the larger half *after*, so a stride-2
3×3 window on an even input pads 0 before and 1 after — something PyTorch's
symmetric ``padding=`` cannot express. DeepOBS defines its problems in
TensorFlow, so reproducing them exactly needs these layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2dSame",
    "GlobalAvgPool2d",
    "MaxPool2dSame",
    "same_output_size",
    "tf_same_padding",
    "valid_output_size",
]


def tf_same_padding(in_size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Padding (before, after) of one spatial axis under TensorFlow's "same".

    pad_total = max((⌈in / stride⌉ − 1) · stride + kernel − in, 0),
    pad_before = ⌊pad_total / 2⌋, pad_after = pad_total − pad_before.

    Args:
        in_size: Input length along the axis.
        kernel_size: Window length along the axis.
        stride: Stride along the axis.

    Returns:
        The number of positions to pad before and after.
    """
    out_size = math.ceil(in_size / stride)
    total = max((out_size - 1) * stride + kernel_size - in_size, 0)
    return total // 2, total - total // 2


def same_output_size(in_size: int, stride: int) -> int:
    """Output length of a "same" window: ⌈in / stride⌉."""
    return math.ceil(in_size / stride)


def valid_output_size(in_size: int, kernel_size: int, stride: int = 1) -> int:
    """Output length of a "valid" (unpadded) window: ⌊(in − k) / stride⌋ + 1."""
    return (in_size - kernel_size) // stride + 1


def _pad_same(
    x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], value: float
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` (N, C, H, W) like TensorFlow's "same".

    Symmetric padding is returned as (pad_h, pad_w) for the layer to apply
    itself (no copy); only asymmetric padding is materialised with ``F.pad``.
    """
    top, bottom = tf_same_padding(x.shape[-2], kernel_size[0], stride[0])
    left, right = tf_same_padding(x.shape[-1], kernel_size[1], stride[1])
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom), value=value), (0, 0)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding, computed from the input size.

    Takes the arguments of ``nn.Conv2d`` except ``padding`` (and ``dilation``,
    ``padding_mode``, which TensorFlow's "same" here does not combine with).
    Being a subclass, it is an ``nn.Conv2d`` for ``isinstance`` checks and has
    the same parameter names (``weight``, ``bias``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad_same(x, _pair(self.kernel_size), _pair(self.stride), 0.0)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, 1, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TensorFlow "same" padding.

    TensorFlow ignores padded positions when taking the maximum, so they are
    padded with −∞ (``nn.MaxPool2d``'s own padding behaves the same way).
    """

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__(kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = _pair(self.kernel_size)
        stride = _pair(self.stride)
        x, padding = _pad_same(x, kernel, stride, -math.inf)
        return F.max_pool2d(x, kernel, stride, padding)


class GlobalAvgPool2d(nn.Module):
    """Mean over the spatial axes: (N, C, H, W) → (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return value[0], value[1]
