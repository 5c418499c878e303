"""The three DeepOBS image-classification problems of the paper.

Architectures follow the TensorFlow definitions of DeepOBS (Schneider, Balles
& Hennig 2019), including TensorFlow's (possibly asymmetric) "same" padding:

- ``3c3d`` (CIFAR-10): three conv / max-pool stages and three dense layers,
  895,210 parameters at 3×32×32 input and 10 classes.
- ``allcnnc`` (CIFAR-100): All-CNN-C (Springenberg et al. 2015), 1,387,108
  parameters at 3×32×32 input and 100 classes.
- ``wrn164`` (SVHN): Wide ResNet 16-4 (Zagoruyko & Komodakis 2016) with
  pre-activation units, 2,748,890 parameters at 10 classes.

Every factory takes ``num_classes``, ``in_channels`` and ``input_size`` (the
side of a square image) so that the model follows the data; the defaults are
those of the problem's data set.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import (
    Conv2dSame,
    GlobalAvgPool2d,
    MaxPool2dSame,
    same_output_size,
    valid_output_size,
)

__all__ = ["WideResNet", "allcnnc", "three_c_three_d", "wrn164"]


def _check_input_size(name: str, input_size: int, minimum: int) -> None:
    if input_size < minimum:
        raise ValueError(
            f"{name} needs images of at least {minimum}×{minimum} pixels, got {input_size}."
        )


def three_c_three_d(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """DeepOBS ``3c3d``: conv5×5·64 valid → pool → conv3×3·96 valid → pool →
    conv3×3·128 same → pool → dense 512 → dense 256 → dense ``num_classes``.

    ReLU follows every layer but the last; the max-pools are 3×3, stride 2,
    "same". Conv weights are Xavier-normal, dense weights Xavier-uniform,
    biases zero.

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        input_size: Side of the square input images.

    Returns:
        The network, mapping (N, C, H, W) images to (N, num_classes) logits.

    Raises:
        ValueError: If the images are too small for the two valid convolutions.
    """
    _check_input_size("3c3d", input_size, 7)
    side = valid_output_size(input_size, 5)
    side = same_output_size(side, 2)
    side = valid_output_size(side, 3)
    side = same_output_size(side, 2)
    side = same_output_size(side, 2)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 64, 5),
        nn.ReLU(),
        MaxPool2dSame(3, 2),
        nn.Conv2d(64, 96, 3),
        nn.ReLU(),
        MaxPool2dSame(3, 2),
        Conv2dSame(96, 128, 3),
        nn.ReLU(),
        MaxPool2dSame(3, 2),
        nn.Flatten(),
        nn.Linear(128 * side * side, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def allcnnc(num_classes: int = 100, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """DeepOBS ``allcnnc`` (All-CNN-C).

    dropout 0.2 → conv3×3·96 ×2 → conv3×3·96 stride 2 → dropout 0.5 →
    conv3×3·192 ×2 → conv3×3·192 stride 2 → dropout 0.5 → conv3×3·192 valid →
    conv1×1·192 → conv1×1·``num_classes`` → global average pool. Every conv is
    followed by a ReLU (the last one too, as in DeepOBS) and, unless marked
    valid, pads "same" like TensorFlow. Weights are Xavier-normal, biases 0.1.

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        input_size: Side of the square input images.

    Returns:
        The network, mapping (N, C, H, W) images to (N, num_classes) logits.

    Raises:
        ValueError: If the images are too small for the valid convolution.
    """
    _check_input_size("allcnnc", input_size, 9)

    def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
        return [Conv2dSame(c_in, c_out, kernel, stride), nn.ReLU()]

    model = nn.Sequential(
        nn.Dropout(0.2),
        *conv(in_channels, 96, 3),
        *conv(96, 96, 3),
        *conv(96, 96, 3, stride=2),
        nn.Dropout(0.5),
        *conv(96, 192, 3),
        *conv(192, 192, 3),
        *conv(192, 192, 3, stride=2),
        nn.Dropout(0.5),
        nn.Conv2d(192, 192, 3),
        nn.ReLU(),
        *conv(192, 192, 1),
        *conv(192, num_classes, 1),
        GlobalAvgPool2d(),
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0.1)
    return model


class _PreActUnit(nn.Module):
    """Pre-activation residual unit: BN → ReLU → conv3×3 → BN → ReLU → conv3×3.

    When the shape changes (stride or width), the shortcut is a 1×1 "same"
    convolution of the *activated* input, as in DeepOBS; otherwise it is the
    raw input.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, bn_momentum: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5, momentum=bn_momentum)
        self.conv1 = Conv2dSame(c_in, c_out, 3, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5, momentum=bn_momentum)
        self.conv2 = Conv2dSame(c_out, c_out, 3, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if c_in != c_out or stride != 1:
            self.shortcut = Conv2dSame(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(x).relu()
        skip = x if self.shortcut is None else self.shortcut(h)
        h = self.conv1(h)
        h = self.conv2(self.bn2(h).relu())
        return h + skip


class WideResNet(nn.Module):
    """Wide ResNet of DeepOBS (pre-activation units, TensorFlow "same" padding).

    conv3×3·16 → three groups of ``units`` residual units with widths
    16k, 32k, 64k and strides 1, 2, 2 → BN → ReLU → global average pool →
    dense ``num_classes``. Convolutions have no bias; conv and dense weights
    are Xavier-uniform, the dense bias is zero, BatchNorm starts at γ = 1,
    β = 0.

    Args:
        units: Residual units per group (depth = 6·units + 4).
        widen: Widening factor k.
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        bn_momentum: PyTorch BatchNorm momentum (weight of the *new* batch
            statistics). DeepOBS' TensorFlow momentum 0.9 (weight of the old
            running value) is PyTorch's 0.1.
    """

    def __init__(
        self,
        units: int,
        widen: int,
        num_classes: int,
        in_channels: int,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = Conv2dSame(in_channels, 16, 3, bias=False)
        layers: list[nn.Module] = []
        c_in = 16
        for width, stride in zip(widths, [1, 2, 2], strict=True):
            for i in range(units):
                layers.append(_PreActUnit(c_in, width, stride if i == 0 else 1, bn_momentum))
                c_in = width
        self.units = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in, eps=1e-5, momentum=bn_momentum)
        self.pool = GlobalAvgPool2d()
        self.fc = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.units(self.stem(x))
        return self.fc(self.pool(self.bn(h).relu()))


def wrn164(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    bn_momentum: float = 0.1,
) -> nn.Module:
    """DeepOBS ``wrn164``: Wide ResNet 16-4 (2 units per group, widths 64/128/256).

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        input_size: Side of the square input images; unused, global
            pooling makes the network independent of it.
        bn_momentum: PyTorch BatchNorm momentum; 0.1 equals DeepOBS'
            TensorFlow momentum 0.9.

    Returns:
        The network, mapping (N, C, H, W) images to (N, num_classes) logits.
    """
    del input_size
    return WideResNet(2, 4, num_classes, in_channels, bn_momentum)
