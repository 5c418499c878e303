"""The model zoo: a registry of named problems and their training defaults.

This folder is ``models/`` at the top of the repository (the project's fixed
layout) but is installed and imported as ``hfft.models``: ``pyproject.toml``
maps it into the ``hfft`` namespace (``package-dir``), so that no top-level
package called ``models`` is installed to collide with other projects'. Code
imports it as ``from hfft.models import PROBLEMS``; there is no
``hfft/models/`` folder.

Importing this package does not import torch: each registered factory is
resolved on first use, so command-line help can list the problems cheaply.

Every factory takes ``num_classes``, ``in_channels`` and ``input_size`` (the
side of a square image) so that the model follows the data, plus its own
keyword arguments (e.g. ``width``)::

    from hfft.models import get_problem, param_groups

    problem = get_problem("3c3d")
    model = problem.build(num_classes=10, in_channels=3, input_size=32)
    opt = torch.optim.SGD(param_groups(model, problem.defaults.weight_decay),
                          lr=problem.defaults.lr)

``TrainDefaults`` is the single source of truth for each problem's training
hyperparameters (DeepOBS values for the paper's problems).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PROBLEMS",
    "LazyFactory",
    "Problem",
    "TrainDefaults",
    "get_problem",
    "l2_mask",
    "param_groups",
]


@dataclass(frozen=True, kw_only=True)
class TrainDefaults:
    """Training hyperparameters of a problem (SGD; plain unless ``momentum``).

    Attributes:
        dataset: Name of the data set the problem trains on.
        lr: Learning rate.
        batch_size: Mini-batch size.
        epochs: Number of training epochs.
        weight_decay: L2 factor on the weights (see :func:`l2_mask`).
        momentum: SGD momentum (0 for the DeepOBS problems).
    """

    dataset: str
    lr: float
    batch_size: int
    epochs: int
    weight_decay: float
    momentum: float = 0.0


class _FactorySignature:
    """Descriptor: an instance's signature is its factory's; the class keeps its own."""

    def __get__(self, obj: LazyFactory | None, objtype: type | None = None) -> Any:
        return None if obj is None else inspect.signature(obj.resolve())


@dataclass(frozen=True)
class LazyFactory:
    """A model factory imported on first call (keeps torch out of ``import``).

    Calling it forwards to ``hfft.models.<module>.<attr>``;
    ``inspect.signature`` reports the signature of that function.

    Attributes:
        module: Submodule of ``hfft.models`` holding the factory.
        attr: Name of the factory in that submodule.
    """

    module: str
    attr: str

    def resolve(self) -> Callable[..., nn.Module]:
        """Import and return the factory function."""
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.attr)

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        return self.resolve()(*args, **kwargs)

    __signature__ = _FactorySignature()


@dataclass(frozen=True)
class Problem:
    """A registered problem: a model factory and its training defaults.

    Attributes:
        name: Registry key (``hfft train NAME``).
        build: Factory ``(num_classes, in_channels, input_size, **model_args)``
            returning the ``nn.Module``.
        defaults: Training hyperparameters.
    """

    name: str
    build: Callable[..., nn.Module]
    defaults: TrainDefaults


PROBLEMS: dict[str, Problem] = {
    problem.name: problem
    for problem in [
        # DeepOBS 3c3d: three conv and three dense layers on CIFAR-10.
        Problem(
            name="3c3d",
            build=LazyFactory("deepobs", "three_c_three_d"),
            defaults=TrainDefaults(
                dataset="cifar10", lr=0.067966, batch_size=128, epochs=100, weight_decay=0.002
            ),
        ),
        # DeepOBS All-CNN-C on CIFAR-100 (with dropout).
        Problem(
            name="allcnnc",
            build=LazyFactory("deepobs", "allcnnc"),
            defaults=TrainDefaults(
                dataset="cifar100", lr=0.171234, batch_size=256, epochs=350, weight_decay=5e-4
            ),
        ),
        # DeepOBS Wide ResNet 16-4 on SVHN (with BatchNorm).
        Problem(
            name="wrn164",
            build=LazyFactory("deepobs", "wrn164"),
            defaults=TrainDefaults(
                dataset="svhn", lr=0.025378, batch_size=128, epochs=160, weight_decay=5e-4
            ),
        ),
        # Small MLP for the 8×8 digits; trains in seconds on a CPU.
        Problem(
            name="mlp",
            build=LazyFactory("small", "mlp"),
            defaults=TrainDefaults(
                dataset="digits",
                lr=0.05,
                batch_size=128,
                epochs=40,
                weight_decay=1e-4,
                momentum=0.9,
            ),
        ),
        # Small CNN for the 8×8 digits; trains in seconds on a CPU.
        Problem(
            name="cnn",
            build=LazyFactory("small", "cnn"),
            defaults=TrainDefaults(
                dataset="digits",
                lr=0.05,
                batch_size=128,
                epochs=30,
                weight_decay=1e-4,
                momentum=0.9,
            ),
        ),
        # 1-D CNN for MNIST-1D (published reference: about 94 % test accuracy for a CNN).
        Problem(
            name="cnn1d",
            build=LazyFactory("small", "cnn1d"),
            defaults=TrainDefaults(
                dataset="mnist1d",
                lr=0.02,
                batch_size=32,
                epochs=100,
                weight_decay=1e-3,
                momentum=0.9,
            ),
        ),
        # The MLP on MNIST-1D (published reference: about 68 % for an MLP).
        Problem(
            name="mlp1d",
            build=LazyFactory("small", "mlp"),
            defaults=TrainDefaults(
                dataset="mnist1d",
                lr=0.05,
                batch_size=128,
                epochs=100,
                weight_decay=1e-4,
                momentum=0.9,
            ),
        ),
    ]
}


def get_problem(name: str) -> Problem:
    """Look up a registered problem.

    Args:
        name: Registry key, e.g. ``"3c3d"``.

    Returns:
        The problem.

    Raises:
        ValueError: If no problem has that name.
    """
    try:
        return PROBLEMS[name]
    except KeyError:
        known = ", ".join(PROBLEMS)
        raise ValueError(f"Unknown model {name!r}; known models are: {known}.") from None


def l2_mask(model: nn.Module) -> dict[str, bool]:
    """Which parameters carry the L2 penalty (weight decay).

    Weights of convolutions and dense layers do; biases and normalisation
    parameters (BatchNorm, LayerNorm, GroupNorm, …) do not. A parameter of
    any other module decays if it has at least two dimensions (a weight
    matrix or kernel), the usual convention.

    Args:
        model: The network.

    Returns:
        ``{name: decays}`` over ``model.named_parameters()`` (shared
        parameters once, under their first name), in that order.
    """
    from torch import nn

    norm_names = ("LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm")
    norms = (
        nn.modules.batchnorm._NormBase,
        *(getattr(nn, n) for n in norm_names if hasattr(nn, n)),
    )
    mask: dict[str, bool] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                decays = param_name == "weight"
            elif isinstance(module, norms):
                decays = False
            else:
                decays = param.ndim >= 2
            mask[f"{module_name}.{param_name}" if module_name else param_name] = decays
    return mask


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``torch.optim`` parameter groups that apply weight decay per :func:`l2_mask`.

    Args:
        model: The network.
        weight_decay: L2 factor of the decaying group.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay},
        {"params": [...], "weight_decay": 0.0}]``, leaving out an empty group.
    """
    mask = l2_mask(model)
    params = dict(model.named_parameters())
    decay = [params[name] for name, decays in mask.items() if decays]
    no_decay = [params[name] for name, decays in mask.items() if not decays]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
