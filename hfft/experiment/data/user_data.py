"""A user's data: their ``file.py:factory`` called, and what it returns checked.

:func:`load_user_data` calls the factory (``path/to/file.py:factory`` or
``package.module:factory``) and turns its splits into :class:`UserData`:
tensors on the CPU (or inputs left in a large Dataset to be streamed), used
as returned. Every failure is a :class:`~hfft.experiment.data.datasets.DataError`
of one sentence.

Importing this module does not import torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfft._text import clipped
from hfft.experiment.data.datasets import DataError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["UserData", "load_user_data"]


@dataclass(frozen=True)
class UserData:
    """A user's data as returned by their factory, materialised as tensors on the CPU.

    Attributes:
        train: ``(inputs, targets)``; inputs a tensor or a dict or tuple of them.
        valid: The validation split when the factory returned three, else ``None``.
        test: ``(inputs, targets)``.
        notes: What was adapted to what the user meant (one line each).
    """

    train: tuple[Any, Tensor]
    valid: tuple[Any, Tensor] | None
    test: tuple[Any, Tensor]
    notes: tuple[str, ...] = ()


def load_user_data(spec: str, root: Path, download: bool) -> UserData:
    """Call a user's data factory and check what it returns; the data is used as it is.

    The factory returns ``(train, test)`` or ``(train, valid, test)``, each a
    pair ``(inputs, targets)`` of tensors (or arrays), a ``TensorDataset``, or
    any map-style ``Dataset`` whose items are ``(input, target)`` (read once,
    here). Inputs may be of any shape ``(N, …)`` or a dict or tuple of such
    tensors; targets ``(N, …)``. Nothing is normalised or augmented; NumPy
    arrays become tensors, and integer class labels narrower than int64 (NumPy's
    int32 on some platforms) are widened to int64, which PyTorch's losses need,
    with a note: values are used as returned.

    Raises:
        UserCodeError: For a factory that fails (``sys.exit`` included).
        DataError: For a factory that returns something else, splits of
            different sample shapes, empty splits, or NaN/Inf in them.
    """
    from hfft.experiment.data.factories import ModelSpecError, load_factory
    from hfft.experiment.data.user_code import calling

    target = spec.rpartition(":")[0]
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file and not Path(target).expanduser().is_file():
        raise DataError(f"Data file '{target}' does not exist.")
    try:
        factory = load_factory(spec)
    except ModelSpecError as err:
        # from err: --debug shows the traceback of a file that failed on import
        raise DataError(f"Data {spec!r} cannot be loaded: {str(err).rstrip('.')}.") from err
    try:
        named = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        named = set()
    kwargs = {k: v for k, v in (("root", root), ("download", download)) if k in named}
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    with calling(
        f"Data factory {spec!r} failed: hfft called it as {spec.rpartition(':')[2]}({call})",
        "Make it return (train, test) or (train, valid, test), each a pair (inputs, targets) "
        "or a Dataset",
    ):
        result = factory(**kwargs)
    if not isinstance(result, tuple | list) or len(result) not in (2, 3):
        raise DataError(f"Data factory {spec!r} must return (train, test) or (train, valid, test).")
    names = ("train", "test") if len(result) == 2 else ("train", "valid", "test")
    parts = {name: _as_tensors(spec, name, part) for name, part in zip(names, result, strict=True)}
    _check_alike(spec, parts)
    parts, notes = _widened_labels(parts)
    return UserData(parts["train"], parts.get("valid"), parts["test"], notes)


def _widened_labels(
    parts: dict[str, tuple[Any, Tensor]],
) -> tuple[dict[str, tuple[Any, Tensor]], tuple[str, ...]]:
    """Integer targets narrower than int64 as int64 (bool targets stay: their task is open)."""
    import torch

    def narrow(y: Tensor) -> bool:
        return not (y.is_floating_point() or y.is_complex()) and y.dtype not in wide

    wide = (torch.int64, torch.bool)
    found = sorted({str(y.dtype).removeprefix("torch.") for _, y in parts.values() if narrow(y)})
    if not found:
        return parts, ()
    widened = {name: (x, y.to(torch.int64) if narrow(y) else y) for name, (x, y) in parts.items()}
    return widened, (f"the data's {', '.join(found)} class labels were widened to int64",)


def _check_alike(spec: str, parts: dict[str, tuple[Any, Tensor]]) -> None:
    from hfft.optim.batches import leaves, take

    shapes = {
        n: [tuple(t.shape[1:]) for t in leaves(take(x, slice(0, 1)))] + [tuple(y.shape[1:])]
        for n, (x, y) in parts.items()
    }
    if len({tuple(v) for v in shapes.values()}) > 1:
        found = "; ".join(f"{n} {v}" for n, v in shapes.items())
        raise DataError(
            f"Data factory {spec!r} returned splits whose samples differ in shape ({found})."
        )


def _as_tensors(spec: str, split: str, data: Any) -> tuple[Any, Tensor]:
    """A user's split as ``(inputs, targets)``: tensors with the samples along dimension 0
    (inputs left in a large Dataset are streamed, :mod:`hfft.experiment.data.streaming`)."""
    import torch
    from torch.utils.data import Dataset, TensorDataset

    from hfft.optim.batches import LazyInputs, batch_size, leaves, map_tensors, take

    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
    elif isinstance(data, tuple | list) and len(data) == 2 and not isinstance(data, Dataset):
        try:  # NumPy arrays (and nests of them) become tensors, values as they are
            x, y = map_tensors(torch.as_tensor, _tensors(data[0])), torch.as_tensor(data[1])
        except (TypeError, RuntimeError, ValueError) as err:
            raise DataError(
                f"Data factory {spec!r} returned {split} data that are not tensors or arrays "
                f"of numbers ({clipped(str(err))})."
            ) from None
    elif isinstance(data, Dataset):
        x, y = _read_dataset(spec, split, data)
    else:
        raise DataError(
            f"Data factory {spec!r} returned a {type(data).__name__} as its {split} set, "
            "not a Dataset or a pair (inputs, targets)."
        )
    if y.ndim == 0 or batch_size(x) != y.shape[0]:
        raise DataError(
            f"Data factory {spec!r} returned {split} inputs of {batch_size(x)} samples but "
            f"targets of shape {tuple(y.shape)}."
        )
    if y.shape[0] == 0:
        raise DataError(f"Data factory {spec!r} returned an empty {split} set.")
    # streamed inputs: only the first sample is checked (the rest is never all in memory)
    checked = leaves(take(x, slice(0, 1)) if isinstance(x, LazyInputs) else x)
    for t in [*checked, y]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(f"The {split} data of {spec!r} contain NaN or infinite values.")
    return x, y


def _tensors(x: Any) -> Any:
    """Array-likes become tensors; dicts and tuples of them stay dicts and tuples."""
    import torch

    if isinstance(x, dict):
        return {k: _tensors(v) for k, v in x.items()}
    if isinstance(x, tuple | list) and x and not isinstance(x[0], (int, float)):
        return type(x)(_tensors(v) for v in x)
    return torch.as_tensor(x)


def _read_dataset(spec: str, split: str, data: Any) -> tuple[Any, Tensor]:
    """A map-style Dataset's items collated into tensors (read once, in batches), or its
    inputs left in it to be streamed when they are too large to hold."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    from hfft.experiment.data.streaming import StreamedInputs, read_targets, should_stream

    if len(data) == 0:
        raise DataError(f"Data factory {spec!r} returned an empty {split} set.")
    first = data[0]
    if not isinstance(first, tuple | list) or len(first) != 2:
        raise DataError(
            f"Data factory {spec!r} returned a {split} Dataset whose items are "
            f"{type(first).__name__}s, not (input, target) pairs."
        )
    try:
        streamed = should_stream(data, default_collate([first[0]]))
    except ValueError as err:  # a bad HFFT_STREAM_ABOVE
        raise DataError(str(err)) from None
    except TypeError as err:  # e.g. a PIL image: no transform to a tensor
        raise DataError(
            f"Data factory {spec!r} returned a {split} Dataset whose inputs are not tensors "
            f"or arrays ({err}); add a transform such as torchvision's ToTensor()."
        ) from None
    if streamed:
        try:
            return StreamedInputs(data, torch.arange(len(data))), read_targets(data)
        except ValueError as err:  # a bad HFFT_STREAM_WORKERS
            raise DataError(str(err)) from None
    xs, ys = [], []
    # its own generator: reading the data leaves torch's global random state alone
    for xb, yb in DataLoader(data, batch_size=512, generator=torch.Generator().manual_seed(0)):
        xs.append(xb)
        ys.append(torch.as_tensor(yb))
    return _cat_nests(xs), torch.cat(ys)


def _cat_nests(xs: list[Any]) -> Any:
    """Concatenate batches that are tensors or dicts or tuples of them."""
    import torch

    if isinstance(xs[0], dict):
        return {k: _cat_nests([x[k] for x in xs]) for k in xs[0]}
    if isinstance(xs[0], tuple | list):
        return type(xs[0])(_cat_nests(list(col)) for col in zip(*xs, strict=True))
    return torch.cat(xs)
