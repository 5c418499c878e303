"""Small models that train in seconds on a CPU (the digits demo and the tests).

Both are deterministic functions of (parameters, input) — no BatchNorm, no
dropout — so curvature tests can use them as they are.
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["ACTIVATIONS", "cnn", "cnn1d", "mlp"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        known = ", ".join(ACTIVATIONS)
        raise ValueError(f"Unknown activation {name!r}; choose one of: {known}.") from None


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value}.")


def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 8,
    width: int = 128,
    depth: int = 2,
    activation: str = "relu",
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Multi-layer perceptron on flattened inputs (images, signals, tabular features).

    flatten → ``depth`` × (dense ``width`` → activation) → dense ``num_classes``.
    PyTorch's default initialisation.

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        input_size: Side of the square input images (the input has
            ``in_channels · input_size²`` features).
        width: Units per hidden layer.
        depth: Number of hidden layers.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        input_shape: The shape of one input sample, e.g. ``(30,)`` for
            tabular data or ``(1, 40)`` for a signal (overrides
            ``in_channels`` and ``input_size``; the data passes it).

    Returns:
        The network, mapping (N, …) inputs to (N, num_classes) logits.

    Raises:
        ValueError: For a non-positive size or an unknown activation.
    """
    if input_shape:
        features = math.prod(input_shape)
    else:
        _check_positive(input_size=input_size)
        features = in_channels * input_size * input_size
    _check_positive(width=width, depth=depth, features=features)
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(features, width), _activation(activation)]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 8,
    width: int = 16,
    hidden: int = 64,
    activation: str = "relu",
) -> nn.Module:
    """Small CNN: two 3×3 convolutions, each followed by a 2×2 max-pool, and
    one hidden dense layer.

    conv3×3·``width`` (pad 1) → act → maxpool2 → conv3×3·2``width`` (pad 1) →
    act → maxpool2 → dense ``hidden`` → act → dense ``num_classes``.
    PyTorch's default initialisation.

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        input_size: Side of the square input images (at least 4).
        width: Channels of the first convolution (the second has twice as many).
        hidden: Units of the hidden dense layer.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.

    Returns:
        The network, mapping (N, C, H, W) images to (N, num_classes) logits.

    Raises:
        ValueError: For a non-positive size, images smaller than 4×4 or an
            unknown activation.
    """
    _check_positive(width=width, hidden=hidden)
    if input_size < 4:
        raise ValueError(f"cnn needs images of at least 4×4 pixels, got {input_size}.")
    side = input_size // 2 // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        _activation(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        _activation(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * side * side, hidden),
        _activation(activation),
        nn.Linear(hidden, num_classes),
    )


def cnn1d(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 40,
    width: int = 32,
    activation: str = "relu",
) -> nn.Module:
    """1-D CNN for signals such as MNIST-1D: three strided convolutions and a dense layer.

    conv5·``width`` (stride 2, pad 2) → act → conv3·``width`` (stride 2, pad 1)
    → act → conv3·``width`` (stride 2, pad 1) → act → flatten → dense
    ``num_classes``. Each convolution halves the length (40 → 20 → 10 → 5).
    PyTorch's default initialisation; no normalisation layers, so curvature
    products are deterministic as it is.

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input signal ``(N, C, L)``.
        input_size: Length ``L`` of the signal (at least 8).
        width: Channels of every convolution.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.

    Returns:
        The network, mapping (N, C, L) signals to (N, num_classes) logits.

    Raises:
        ValueError: For a non-positive width, a signal shorter than 8 or an
            unknown activation.
    """
    _check_positive(width=width)
    if input_size < 8:
        raise ValueError(f"cnn1d needs signals of at least 8 samples, got {input_size}.")
    length = input_size
    for kernel, pad in ((5, 2), (3, 1), (3, 1)):
        length = (length + 2 * pad - kernel) // 2 + 1
    return nn.Sequential(
        nn.Conv1d(in_channels, width, 5, stride=2, padding=2),
        _activation(activation),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        _activation(activation),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        _activation(activation),
        nn.Flatten(),
        nn.Linear(width * length, num_classes),
    )
