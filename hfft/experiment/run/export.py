"""``--export lightning``: the fine-tuned weights written back into a copy of the user's ``.ckpt``.

PyTorch Lightning's ``Module.load_from_checkpoint`` rebuilds the module from
the checkpoint's ``hyper_parameters`` and loads its ``state_dict``, whose keys
carry the module's attribute prefix (``model.``) that hfft strips when it loads
the weights into the user's network. The export reads the input again (with the
same ``weights_only`` rules: :func:`hfft.experiment.run.checkpoint.read_torch`),
puts the final weights under the same keys in the same dtypes, and leaves every
other entry as it was — hyperparameters, loop and callback states, and the
optimizer state of the weights it started from (which a resumed training would
take up). The input itself is never written.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from hfft._text import short_list
from hfft.experiment.run.checkpoint import NESTED_KEYS, CheckpointError, read_torch

__all__ = ["check_exportable", "write_lightning"]


def check_exportable(path: Path, key: str | None) -> None:
    """Refuse, before any work, an input that ``--export lightning`` cannot write back into.

    Raises:
        ValueError: For a folder, a safetensors file, or a ``torch.save`` file without
            a state dict under ``key`` (or ``"state_dict"``, ``"model"``,
            ``"model_state_dict"``).
    """
    if path.is_dir() or path.suffix == ".safetensors":
        raise ValueError(
            f"--export lightning writes the weights back into a copy of a Lightning .ckpt; "
            f"{path} is not a torch.save file"
        )
    _entry(path, read_torch(path), key)


def write_lightning(path: Path, key: str | None, state: Mapping[str, Tensor], dest: Path) -> None:
    """Write ``dest``: the checkpoint ``path`` with ``state`` in place of its weights.

    Args:
        path: The user's ``torch.save`` checkpoint (a Lightning ``.ckpt``).
        key: The entry holding the weights (``--checkpoint-key``), else the first of
            ``"model"``, ``"state_dict"`` and ``"model_state_dict"``.
        state: The fine-tuned weights under the model's own names.
        dest: The file to write (atomically).

    Raises:
        CheckpointError: If the checkpoint's weights have no common prefix under which
            every one of ``state``'s names is found.
    """
    import torch

    from hfft._io import atomic_write_bytes

    obj = read_torch(path)
    entry = _entry(path, obj, key)
    weights = obj[entry]
    prefix = _prefix(path, weights, state)
    merged = dict(weights)
    for name, value in state.items():
        merged[prefix + name] = value.to(weights[prefix + name].dtype)
    buffer = io.BytesIO()
    torch.save({**obj, entry: merged}, buffer)
    atomic_write_bytes(dest, buffer.getvalue())


def _entry(path: Path, obj: Any, key: str | None) -> str:
    keys = [key] if key else list(NESTED_KEYS)
    held = obj if isinstance(obj, dict) else {}  # a plain dict, as checkpoint.py reads one
    entry = next((k for k in keys if isinstance(held.get(k), dict)), None)
    if entry is None:
        raise ValueError(
            f"--export lightning writes the weights back into a copy of a Lightning .ckpt; "
            f"{path} holds no state dict under {short_list(keys, quoted=True)}"
        )
    return entry


def _prefix(path: Path, weights: Mapping[str, Any], state: Mapping[str, Tensor]) -> str:
    """The prefix (``""``, ``model.``, …) under which the checkpoint holds every weight."""
    candidates = {""} | {
        ".".join(k.split(".")[:n]) + "." for k in weights for n in (1, 2) if k.count(".") >= n
    }
    for prefix in sorted(candidates, key=len):
        if all(prefix + name in weights for name in state):
            return prefix
    raise CheckpointError(
        f"The weights in '{path}' are not the model's under one prefix; hfft cannot write the "
        "fine-tuned weights back into it (they are in final.safetensors)."
    )
