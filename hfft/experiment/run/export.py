"""The fine-tuned weights written the way the user's tools load them.

A transformers input gets ``final/`` and ``best/`` model folders
(:mod:`hfft.experiment.run.pretrained`). ``--export lightning`` writes the
fine-tuned weights back into a copy of the user's ``.ckpt``.

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
from typing import TYPE_CHECKING, Any

from torch import Tensor

from hfft._text import short_list
from hfft.experiment.run.checkpoint import NESTED_KEYS, CheckpointError, read_torch

if TYPE_CHECKING:
    from hfft.experiment.run.starting_point import StartingPoint

__all__ = ["check_exportable", "export_weights", "write_lightning"]


def export_weights(
    out: Path, saved: list[str], src: StartingPoint, export: str | None, key: str | None
) -> list[str]:
    """Write the saved weight files again as the user's tools load them.

    ``final/`` and ``best/`` model folders for a transformers input
    (:func:`hfft.experiment.run.pretrained.write_folder`), ``final.ckpt`` for
    ``--export lightning`` (:func:`write_lightning`).

    Args:
        out: The run's folder.
        saved: The weight files written there (``final.safetensors``, ``best.safetensors``).
        src: What the run started from.
        export: ``--export`` (``"lightning"`` or ``None``).
        key: ``--checkpoint-key``.

    Returns:
        The names written, relative to ``out``.
    """
    from hfft.experiment.run.checkpoint import load_checkpoint
    from hfft.experiment.run.pretrained import write_folder

    written = []
    for name in saved:
        weights = load_checkpoint(out / name)
        stem = name.removesuffix(".safetensors")
        if src.pretrained is not None:
            files = write_folder(
                src.pretrained, out / stem, weights.state_dict, weights.metadata or {}
            )
            written += [f"{stem}/{f}" for f in files]
        if export == "lightning" and stem == "final":
            write_lightning(src.path, key, weights.state_dict, out / "final.ckpt")
            written.append("final.ckpt")
    return written


def check_exportable(path: Path, key: str | None) -> str | None:
    """Refuse, before any work, an input that ``--export lightning`` cannot write back into.

    Returns:
        A line saying that ``final.ckpt`` keeps the checkpoint's lower precision, when its
        weights are float16 or bfloat16; else ``None``.

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
    import torch

    obj = read_torch(path)
    weights = obj[_entry(path, obj, key)]
    low = sorted(
        {
            str(t.dtype).removeprefix("torch.")
            for t in weights.values()
            if isinstance(t, Tensor) and t.dtype in (torch.float16, torch.bfloat16)
        }
    )
    if not low:
        return None
    return (
        f"final.ckpt keeps the checkpoint's {' and '.join(low)} weights: the fine-tuned "
        "float32 weights are rounded to them there (final.safetensors holds them whole)"
    )


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
