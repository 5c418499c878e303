"""Checkpoint files: safetensors with JSON metadata, and plain PyTorch state dicts.

``hfft`` writes checkpoints as safetensors files whose header carries the
whole metadata dict as JSON under the key ``"hfft"`` (model name and
arguments, data set, epoch, elapsed training seconds, hfft version,
hyperparameters), written atomically.

It reads those, any other safetensors file, and PyTorch files made with
``torch.save``: a plain ``state_dict`` or a dict holding one under
``"model"``, ``"state_dict"`` or ``"model_state_dict"`` (PyTorch Lightning's
``.ckpt`` files are such dicts). A checkpoint is untrusted input, so PyTorch
files are **always** read with ``torch.load(weights_only=True)``, which
refuses pickles that would import or call arbitrary Python code. Beside
tensors and containers it reads, as inert data, the few plain objects that
training scripts store next to the weights (:data:`INERT_GLOBALS`: timm's
``args`` are an ``argparse.Namespace``, and scripts keep ``pathlib`` paths),
and OmegaConf configs (Lightning's ``hyper_parameters``; :data:`CONFIG_GLOBALS`,
with ``omegaconf`` installed); every other global is refused by name, before
anything is unpickled, a user's ``Enum`` or dataclass too: the file is data,
and hfft never imports the code it names.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hfft._io import atomic_write_bytes, json_ready
from hfft._text import clipped, quoted, short_list

__all__ = [
    "METADATA_KEY",
    "NESTED_KEYS",
    "Checkpoint",
    "CheckpointError",
    "apply_state_dict",
    "check_fit",
    "load_checkpoint",
    "read_torch",
    "save_checkpoint",
]

#: Header key of the JSON metadata in safetensors files written by hfft.
METADATA_KEY = "hfft"

FORMAT_METADATA = {"format": "pt"}
"""Header metadata every safetensors file hfft writes carries beside its own: the key that
``transformers``' and ``timm``'s loaders require of a PyTorch safetensors file."""

INERT_GLOBALS: tuple[type, ...] = (
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
)
"""Classes a ``torch.save`` file may hold beside tensors, read as data under
``weights_only`` (torch's ``safe_globals``): building one sets attributes or joins
path parts, and calls nothing else. hfft never uses them; they only no longer
make a real-world checkpoint unreadable."""

CONFIG_GLOBALS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
)
"""The classes an OmegaConf ``DictConfig`` or ``ListConfig`` of plain values pickles into
(what Lightning's ``save_hyperparameters()`` stores): containers and their metadata, rebuilt
by setting attributes. They are read, with the types their metadata names
(:func:`_config_globals`), only when the file names them and ``omegaconf`` is installed. A
structured config names its dataclass and an enum value its ``Enum`` class: user code,
refused by name."""

#: Entries of a ``torch.save``'d dict that may hold the state dict, in order of preference.
NESTED_KEYS = ("model", "state_dict", "model_state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: The file it was read from.
        state_dict: Parameter and buffer tensors by name, on the CPU.
        metadata: The hfft metadata of a safetensors file written by hfft;
            ``None`` for other files.
        format: ``"safetensors"`` or ``"torch"``.
        optimizer_state: A PyTorch file's saved optimizer ``state_dict`` (under
            ``"optimizer"``, ``"optimizer_state_dict"`` or Lightning's first
            ``"optimizer_states"``), only ever read as data; else ``None``.
    """

    path: Path
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any] | None
    format: str
    optimizer_state: dict[str, Any] | None = None
    note: str | None = None
    """Which of several state dicts in the file was taken, when it holds several."""


def save_checkpoint(
    path: str | Path, state_dict: Mapping[str, Tensor], metadata: Mapping[str, Any]
) -> None:
    """Write a safetensors checkpoint with JSON metadata, atomically.

    Tensors are copied to contiguous CPU tensors first, so tied or otherwise
    shared tensors and non-contiguous views are fine; integer buffers such as
    BatchNorm's ``num_batches_tracked`` keep their dtype.

    Args:
        path: Destination file (conventionally ``*.safetensors``); its
            directory must exist.
        state_dict: Tensors by name, e.g. ``model.state_dict()``.
        metadata: JSON-serialisable metadata, stored under the header key
            ``"hfft"``, beside ``"format": "pt"`` (which ``from_pretrained`` requires).

    Raises:
        CheckpointError: If an entry is not a tensor or the metadata is not
            JSON-serialisable; nothing is written then.
    """
    from safetensors.torch import save

    try:
        header = json.dumps(json_ready(dict(metadata)), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"Checkpoint metadata must be JSON-serialisable: {err}.") from None
    tensors: dict[str, Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"State dict entry {name!r} is a {type(value).__name__}, not a tensor."
            )
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    atomic_write_bytes(path, save(tensors, metadata={**FORMAT_METADATA, METADATA_KEY: header}))


def load_checkpoint(path: str | Path, key: str | None = None) -> Checkpoint:
    """Read a checkpoint: safetensors, or a PyTorch file read with ``weights_only=True``.

    A file is read as safetensors if its name ends in ``.safetensors`` or its
    contents start like a safetensors file; anything else goes to
    ``torch.load(path, map_location="cpu", weights_only=True)``, which accepts
    a plain state dict or a dict holding one under ``"model"``,
    ``"state_dict"`` or ``"model_state_dict"`` (other entries, such as an
    optimizer state or Lightning's loop state, are ignored).

    Args:
        path: The checkpoint file.
        key: The entry of a ``torch.save``'d dict that holds the state dict to take
            (``state_dict_ema``, ``model_ema``); by default the first of ``"model"``,
            ``"state_dict"`` and ``"model_state_dict"``, with a note when the file
            holds other state dicts too.

    Returns:
        The :class:`Checkpoint`, tensors on the CPU.

    Raises:
        CheckpointError: If the file is missing, unreadable or corrupt,
            contains Python objects that loading would have to execute, or
            holds no state dict of tensors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"Checkpoint file '{path}' does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint path '{path}' is not a file.")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        if key is not None:
            raise CheckpointError(
                f"--checkpoint-key picks a state dict inside a torch.save file; '{path}' is a "
                "safetensors file, which holds one"
            )
        return _load_safetensors(path)
    return _load_torch(path, key)


def _looks_like_safetensors(path: Path) -> bool:
    # layout: 8-byte little-endian header length, then the JSON header
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= path.stat().st_size - 8


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state_dict = load_file(path, device="cpu")
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad files
        raise CheckpointError(
            f"Checkpoint '{path}' is not a valid safetensors file (corrupt or truncated?): {err}."
        ) from None
    metadata = None
    if METADATA_KEY in header:
        try:
            metadata = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(
                f"Checkpoint '{path}' has unreadable hfft metadata in its header."
            ) from None
        if not isinstance(metadata, dict):
            raise CheckpointError(f"Checkpoint '{path}' has hfft metadata that is not a dict.")
    return Checkpoint(path, state_dict, metadata, "safetensors")


def _load_torch(path: Path, key: str | None = None) -> Checkpoint:
    obj = read_torch(path)
    state_dict, note = _extract_state_dict(path, obj, key)
    return Checkpoint(path, state_dict, None, "torch", _optimizer_state(obj), note)


def read_torch(path: Path) -> Any:
    """The whole object of a ``torch.save`` file, read under ``weights_only`` with the
    inert classes of :data:`INERT_GLOBALS` and :data:`CONFIG_GLOBALS` (``--export
    lightning`` writes it back with the fine-tuned weights in place).

    Raises:
        CheckpointError: As :func:`load_checkpoint` does for a file it cannot read.
    """
    _check_expansion(path)
    named = _named_globals(path)
    allowed = INERT_GLOBALS + _config_globals(path, named)
    try:
        with warnings.catch_warnings():
            # protocol ≥ 3 pickles: the load below fails with a clear error anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # sparse and quantized entries: refused by name below, not as a corrupt file
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            with torch.serialization.safe_globals(list(allowed)):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # untrusted bytes: any failure is the file's fault
        unsafe = _unsafe_globals(named, allowed)
        raise CheckpointError(_torch_load_message(path, err, unsafe)) from None
    return obj


def _config_globals(path: Path, named: list[str]) -> tuple[Any, ...]:
    """OmegaConf's container classes of :data:`CONFIG_GLOBALS` and the types their metadata
    names (``typing.Any``, ``dict``, ``list``, ``int``; ``defaultdict(dict)`` for its
    resolver cache), when the file names one; else none.

    Raises:
        CheckpointError: When the file names them and ``omegaconf`` is not installed.
    """
    if not any(g in CONFIG_GLOBALS for g in named):
        return ()
    try:
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode
    except ImportError:
        raise CheckpointError(
            f"Checkpoint '{path}' holds OmegaConf configs (Lightning's hyper_parameters), which "
            "hfft reads only with omegaconf installed: pip install 'hfft[lightning]'."
        ) from None
    classes = (DictConfig, ListConfig, AnyNode, ContainerMetadata, Metadata)
    return (*classes, typing.Any, collections.defaultdict, dict, list, int)


def _optimizer_state(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    lightning = obj.get("optimizer_states")
    candidates = [obj.get("optimizer"), obj.get("optimizer_state_dict")]
    if isinstance(lightning, list) and lightning:
        candidates.append(lightning[0])
    return next((dict(c) for c in candidates if isinstance(c, dict) and "state" in c), None)


#: How much larger than its file a ``torch.save`` archive may be once read into memory.
#: ``torch.save`` stores its records uncompressed, so a legitimate file expands by its
#: small pickle and zip overheads only; a compressed record could expand a few
#: megabytes into gigabytes before any check could see its contents.
EXPANSION_LIMIT = 1.5
_EXPANSION_SLACK = 1 << 20


def _check_expansion(path: Path) -> None:
    """Refuse a zip archive whose records would expand far beyond the file's size."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # legacy torch.save format: read as stored, no expansion
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # torch.load reports the damage below
    size = path.stat().st_size
    if expanded > EXPANSION_LIMIT * size + _EXPANSION_SLACK:
        raise CheckpointError(
            f"Checkpoint '{path}' is a {size / 2**20:.1f} MiB file whose compressed records "
            f"would expand to {expanded / 2**20:,.0f} MiB in memory; hfft reads only "
            "uncompressed torch.save files (save the state dict again with torch.save)."
        )


def _named_globals(path: Path) -> list[str]:
    """The globals a ``torch.save`` file names beyond torch's own, found by reading its
    pickle's opcodes (nothing is unpickled); empty when it cannot tell."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip archive of torch.save, or damaged: the load says so
        return []


def _unsafe_globals(named: list[str], allowed: tuple[Any, ...]) -> list[str]:
    """The ``named`` globals that are not ``allowed``."""
    inert = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    return [g for g in named if g not in inert]


def _torch_load_message(path: Path, err: Exception, unsafe: list[str]) -> str:
    text = str(err)
    found = re.search(r"GLOBAL (\S+)", text)  # "unsupported GLOBAL posix.system …"
    if not unsafe and found is not None:  # e.g. a legacy (non-zip) torch.save file
        unsafe = [found.group(1)]
    if unsafe:
        names = short_list(unsafe)
        return (
            f"Checkpoint '{path}' contains Python objects ({names}) that would import or "
            "execute code when loaded; hfft reads tensors and plain data only (of objects, "
            "argparse.Namespace, pathlib paths and OmegaConf configs): save it again with "
            "plain values in their place (an enum's .value, a dataclass as a dict)."
        )
    if "Weights only load failed" in text:
        return (
            f"Checkpoint '{path}' is neither a safetensors file nor a PyTorch file of plain "
            "tensors (it is corrupt, or holds Python objects hfft refuses to unpickle)."
        )
    return (
        f"Checkpoint '{path}' is neither a safetensors file nor a readable PyTorch file "
        "(corrupt, truncated or another format)."
    )


def _state_dicts(obj: Mapping[Any, Any]) -> list[str]:
    """The entries of a ``torch.save``'d dict that hold tensors by name (state dicts).

    Only ``dict``s (``OrderedDict`` too) count, here and wherever a loaded file is looked
    into: an OmegaConf ``DictConfig`` is a ``Mapping`` whose values, once read, resolve
    interpolations (``${oc.env:…}``) and raise for a missing one (``???``).
    """
    return [
        k
        for k, v in obj.items()
        if isinstance(k, str)
        and isinstance(v, dict)
        and any(isinstance(t, Tensor) for t in v.values())
    ]


def _extract_state_dict(
    path: Path, obj: Any, key: str | None = None
) -> tuple[dict[str, Tensor], str | None]:
    """The state dict of a loaded ``torch.save`` object, and a note on which was taken when
    there were several (see :func:`load_checkpoint`)."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint '{path}' holds a {type(obj).__name__}, not a state dict of tensors."
        )
    found = _state_dicts(obj)
    note = None
    if key is not None:
        if key not in found:
            held = short_list(found, quoted=True) if found else "none"
            raise CheckpointError(
                f"Checkpoint '{path}' has no state dict under --checkpoint-key {key!r}; "
                f"the ones it holds: {held}"
            )
        obj, where = obj[key], f" under {key!r}"
    else:
        for nested in NESTED_KEYS:
            if isinstance(obj.get(nested), dict):
                obj, where = obj[nested], f" under {nested!r}"
                others = [k for k in found if k != nested]
                if others:
                    note = (
                        f"{path.name} holds state dicts under {short_list(found, quoted=True)}; "
                        f"using {nested!r} (--checkpoint-key picks another)"
                    )
                break
        else:
            where = ""
    if not obj or not any(isinstance(v, Tensor) for v in obj.values()):
        hint = f"; it has one under {found[0]!r}: pass --checkpoint-key {found[0]}" if found else ""
        raise CheckpointError(
            f"Checkpoint '{path}' holds no tensors{where}; expected a state dict or a dict "
            f"with one under 'model', 'state_dict' or 'model_state_dict'{hint}."
        )
    for name, value in obj.items():
        _check_entry(path, where, name, value)
    return {name: value.detach() for name, value in obj.items()}, note


def _check_entry(path: Path, where: str, name: Any, value: Any) -> None:
    """A state dict entry is a parameter name and a tensor of plain (strided) values."""
    if not isinstance(name, str):
        raise CheckpointError(
            f"Checkpoint '{path}' has the key {quoted(name)} ({type(name).__name__}){where}, "
            "not a parameter name; the keys of a state dict are strings."
        )
    entry = f"Checkpoint '{path}' entry {quoted(name)}{where} is"
    if not isinstance(value, Tensor):
        raise CheckpointError(f"{entry} a {type(value).__name__}, not a tensor.")
    if value.layout != torch.strided:
        layout = str(value.layout).removeprefix("torch.")
        raise CheckpointError(
            f"{entry} a sparse tensor (layout {layout}); hfft loads dense tensors only "
            "(save it with .to_dense())."
        )
    if value.is_quantized:
        raise CheckpointError(
            f"{entry} a quantized tensor; hfft trains floating-point weights only "
            "(save it with .dequantize())."
        )
    if value.is_meta or value.device.type != "cpu":
        raise CheckpointError(f"{entry} a {value.device.type} tensor, which holds no values.")


def apply_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load a state dict into a model strictly, with a readable error on mismatch.

    When the keys do not match the model's as they are, a prefix of one or
    two dotted components is looked for whose keys, stripped of it, are
    exactly the model's: ``module.`` (``DataParallel``/DDP), ``_orig_mod.``
    (``torch.compile``), or the attribute of a PyTorch Lightning module
    (``model.``); entries outside it (a loss's buffers, an EMA copy) are left
    out. A note says which prefix was stripped; when several would fit, the
    checkpoint is refused rather than guessed. Floating-point tensors of
    another precision (float16, float64, …) are cast to the model's, with a
    note; a tensor whose kind differs from the model's (integer weights for a
    float parameter) and non-finite values (NaN, ±inf) are refused, except
    an ±inf the freshly built model holds at the same place (a causal
    attention mask as a buffer).

    Args:
        model: The model to load into (in place).
        state_dict: Tensors by name.

    Returns:
        Notes of one sentence each on what was adapted (prefix, casts), for the user.

    Raises:
        CheckpointError: If keys are missing or unexpected, shapes or kinds
            differ, values are not finite, or the prefix is ambiguous; the
            message names them (the first few of each kind). The model is
            unchanged then.
    """
    expected = model.state_dict()
    state_dict, notes = _fitted(state_dict, expected)
    notes += _check_values(state_dict, expected)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # e.g. a module's own load hook refusing a value
        raise CheckpointError(f"The checkpoint does not fit the model: {err}.") from None
    return notes


def check_fit(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Whether a state dict's keys and shapes fit a model, without loading a value.

    The model may live on the ``meta`` device (shapes without memory), so that
    a model described by a checkpoint's metadata is checked against the
    checkpoint before it takes any memory.

    Raises:
        CheckpointError: As :func:`apply_state_dict` does for keys and shapes.
    """
    _fitted(state_dict, model.state_dict())


def _fitted(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[Mapping[str, Tensor], list[str]]:
    """The state dict with its wrapper's prefix stripped, and a note; or the mismatch."""
    state_dict, notes = _strip_prefix(state_dict, expected)
    missing = [clipped(k) for k in expected if k not in state_dict]
    unexpected = [clipped(k) for k in state_dict if k not in expected]
    misshaped = [
        f"{clipped(k)} (checkpoint {_shape(state_dict[k])}, model {_shape(expected[k])})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} {short_list(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            "The checkpoint does not fit the model (wrong model or model arguments?): "
            + "; ".join(problems)
            + "."
        )
    return state_dict, notes


def _check_values(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> list[str]:
    """Refuse tensors of the wrong kind or with non-finite values; note precision casts."""
    wrong_kind = [
        f"{clipped(k)} ({state_dict[k].dtype}, model {expected[k].dtype})"
        for k in expected
        if state_dict[k].is_floating_point() != expected[k].is_floating_point()
        or state_dict[k].is_complex() != expected[k].is_complex()
    ]
    if wrong_kind:
        raise CheckpointError(
            "The checkpoint holds tensors of another kind than the model's: "
            f"{short_list(wrong_kind)}; hfft casts between floating-point precisions only."
        )
    not_finite = [clipped(k) for k, v in state_dict.items() if not _finite_as_built(v, expected[k])]
    if not_finite:
        raise CheckpointError(
            f"The checkpoint holds NaN or infinite values in {short_list(not_finite)}."
        )
    # finite as stored is not enough: 1e300 in float64 is infinite in the model's float32
    beyond = [
        (k, v.dtype, expected[k].dtype)
        for k, v in state_dict.items()
        if v.dtype != expected[k].dtype
        and not _finite_as_built(v.to(expected[k].dtype), expected[k])
    ]
    if beyond:
        stored, model = (str(d).removeprefix("torch.") for d in beyond[0][1:])
        raise CheckpointError(
            f"The checkpoint holds {stored} values beyond the range of the model's {model} in "
            f"{short_list([clipped(k) for k, *_ in beyond])}, which casting would make infinite."
        )
    casts = sorted(
        {
            f"{state_dict[k].dtype} to {expected[k].dtype}".replace("torch.", "")
            for k in expected
            if state_dict[k].is_floating_point() and state_dict[k].dtype != expected[k].dtype
        }
    )
    return [f"the checkpoint's {c} tensors were cast to the model's precision" for c in casts]


def _finite_as_built(value: Tensor, built: Tensor) -> bool:
    """Finite, except where the freshly built model has the same ±inf (an attention mask)."""
    if not (value.is_floating_point() or value.is_complex()):
        return True
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return True
    same = (value == built.to(value.dtype)) & torch.isinf(built.to(value.dtype))
    return bool((finite | same).all())


def _strip_prefix(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[Mapping[str, Tensor], list[str]]:
    """The entries under the one prefix whose stripped keys are the model's, and a note."""
    if set(state_dict) == set(expected):
        return state_dict, []
    prefixes: set[str] = set()
    for key in state_dict:
        parts = key.split(".")
        prefixes.update(".".join(parts[:k]) + "." for k in (1, 2) if len(parts) > k)
    fits = sorted(
        p for p in prefixes if {k[len(p) :] for k in state_dict if k.startswith(p)} == set(expected)
    )
    if not fits:
        return state_dict, []  # the mismatch is reported by the caller
    if len(fits) > 1:
        raise CheckpointError(
            f"The checkpoint holds the model's weights under several prefixes "
            f"({', '.join(repr(p) for p in fits)}); save the one you mean as a plain state dict."
        )
    prefix = fits[0]
    left = sum(not k.startswith(prefix) for k in state_dict)
    note = f"stripped prefix {prefix!r} from the checkpoint's keys"
    if left:
        note += f" and left out {left} {'entry' if left == 1 else 'entries'} outside it"
    stripped = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return stripped, [note + "."]


def _shape(t: Tensor) -> str:
    return "×".join(str(s) for s in t.shape) if t.dim() else "scalar"
