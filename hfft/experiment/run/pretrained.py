"""``transformers`` model folders (``save_pretrained``): read as a checkpoint, written as one.

A folder with ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) is a checkpoint. Without ``--model`` the
model is built from its config by the class it names under
``architectures`` — only a class that ``transformers`` itself ships, with
remote code off: a config that asks for code of its own (``auto_map``) is
refused, because a checkpoint is data, never code. It is loaded with
``from_pretrained`` (in float32), as its user loads it, so that hfft's
evaluation is theirs; weights the folder lacks or that do not fit are refused,
not initialised at random.

The fine-tuned weights go back the same way: :func:`write_folder` makes
``final/`` and ``best/`` complete model folders — the config, tokenizer and
generation files copied, the weights in the input's layout (one file or the
same shards and index) — that ``from_pretrained`` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hfft._text import clipped, quoted, short_list
from hfft.experiment.run.checkpoint import Checkpoint, CheckpointError

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "EXTRA",
    "PretrainedFolder",
    "build_pretrained",
    "read_folder",
    "tied_entries",
    "write_folder",
]

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
EXTRA = "transformers models need the hf extra: pip install 'hfft[hf]'"

_SHARD = re.compile(r"[A-Za-z0-9_.-]+\.safetensors\Z")


@dataclass(frozen=True)
class PretrainedFolder:
    """A ``save_pretrained`` folder, as read (nothing is built).

    Attributes:
        path: The folder.
        config: Its ``config.json``.
        layout: Each weight file's tensor names, in the folder's order.
        index: The shard index as read (``None`` for one ``model.safetensors``).
    """

    path: Path
    config: dict[str, Any]
    layout: dict[str, tuple[str, ...]]
    index: dict[str, Any] | None = None

    @property
    def architecture(self) -> str | None:
        """The model class its config names (``architectures[0]``), if one."""
        names = self.config.get("architectures")
        if isinstance(names, list) and names and isinstance(names[0], str):
            return names[0]
        return None

    def sha256(self) -> str:
        """One digest of the config and the weight files (names and contents)."""
        from hfft._io import sha256_file

        digest = hashlib.sha256()
        for name in (CONFIG, *sorted(self.layout)):
            digest.update(f"{name}\0{sha256_file(self.path / name)}\n".encode())
        return digest.hexdigest()

    def checkpoint(self, weights: bool = True) -> Checkpoint:
        """The weights of every file, read as hfft reads a safetensors checkpoint, with the
        metadata hfft wrote into them when it wrote the folder (``final/``, ``best/``).

        Args:
            weights: Read the tensors (for a model the user's factory builds); without
                them only the metadata is read (``from_pretrained`` reads the weights,
                and a large model is not held twice).
        """
        from hfft.experiment.run.checkpoint import load_checkpoint

        if not weights:
            return Checkpoint(
                self.path, {}, _hfft_metadata(self.path / next(iter(self.layout))), "transformers"
            )
        state: dict[str, Tensor] = {}
        metadata = None
        for name in self.layout:
            read = load_checkpoint(self.path / name)
            state.update(read.state_dict)
            metadata = metadata or read.metadata
        return Checkpoint(self.path, state, metadata, "transformers")

    def companions(self) -> list[Path]:
        """The config, generation and tokenizer files to copy beside fine-tuned weights."""
        from hfft.experiment.run.ownership import COMPANIONS

        return sorted(
            p for p in self.path.iterdir() if p.is_file() and re.fullmatch(COMPANIONS, p.name)
        )


def read_folder(path: Path) -> PretrainedFolder:
    """Read a ``save_pretrained`` folder's config and weight layout.

    Raises:
        CheckpointError: For a folder without ``config.json``, a config that is
            not a JSON object or that needs remote code, weights only as
            ``pytorch_model.bin``, or an index naming files outside the folder
            or missing.
    """
    if not (path / CONFIG).is_file():
        raise CheckpointError(
            f"Checkpoint '{path}' is a folder without {CONFIG}; hfft reads a folder written by "
            "save_pretrained (config.json and model.safetensors) or a checkpoint file."
        )
    config = _json_object(path / CONFIG)
    if "auto_map" in config:
        raise CheckpointError(
            f"'{path / CONFIG}' names model code of its own (auto_map), which only "
            "trust_remote_code would run; hfft never runs code a checkpoint names: pass "
            "--model file.py:factory to build the model with code you trust."
        )
    _refuse_code(path / CONFIG, config)
    if (path / SINGLE).is_file():  # before the index, as from_pretrained takes them
        return PretrainedFolder(path, config, {SINGLE: _names_in(path / SINGLE)})
    if (path / INDEX).is_file():
        index = _json_object(path / INDEX)
        return PretrainedFolder(path, config, _sharded_layout(path, index), index)
    pickled = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    held = f" ({short_list(pickled)})" if pickled else ""
    raise CheckpointError(
        f"Checkpoint folder '{path}' holds no {SINGLE} nor {INDEX}{held}; hfft reads the "
        "safetensors weights save_pretrained writes by default."
    )


_ATTENTION = ("eager", "sdpa")


def _refuse_code(path: Path, config: Any) -> None:
    """Refuse a config (or a sub-config in it) that makes transformers fetch or run code
    beyond its own classes: a kernel named by repository (``attn_implementation``,
    ``experts_implementation`` other than eager or sdpa) or a quantization back-end."""
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        named = key.endswith("_implementation") and value is not None
        if named and value not in _ATTENTION:
            raise CheckpointError(
                f"'{path}' asks for {key} {quoted(value, 60)}, which transformers may fetch "
                "and run as code; hfft builds a folder's model with eager or sdpa only: "
                "pass --model file.py:factory to build it with code you trust."
            )
        if key == "quantization_config" and value:
            raise CheckpointError(
                f"'{path}' describes a quantized model; hfft fine-tunes floating-point "
                "weights only."
            )
        _refuse_code(path, value)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"'{path}' is not readable JSON: {clipped(str(err), 120)}.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' holds a JSON {type(data).__name__}, not an object.")
    return data


def _sharded_layout(path: Path, index: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """``{shard file: its tensor names}`` from the index's ``weight_map``, checked."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"'{path / INDEX}' has no weight_map of tensor names to files.")
    layout: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not _SHARD.fullmatch(name) or name.startswith("."):
            raise CheckpointError(
                f"'{path / INDEX}' maps {quoted(key)} to {quoted(name)}, which is not a "
                ".safetensors file name inside the folder."
            )
        layout.setdefault(name, []).append(key)
    missing = [name for name in layout if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"'{path}' lacks the shards {short_list(missing)} its index lists.")
    return {name: tuple(keys) for name, keys in layout.items()}


def _names_in(path: Path) -> tuple[str, ...]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return tuple(f.keys())
    except Exception as err:  # safetensors raises its own error types for bad files
        raise CheckpointError(
            f"Checkpoint '{path}' is not a valid safetensors file (corrupt or truncated?): {err}."
        ) from None


def build_pretrained(folder: PretrainedFolder) -> tuple[nn.Module, list[str]]:
    """The model of a folder, by the ``transformers`` class its config names, loaded in float32.

    Returns:
        The model, and lines saying what was built and what was adapted.

    Raises:
        CheckpointError: When transformers is missing, the config names no class or one
            transformers does not ship, ``from_pretrained`` fails, or the folder lacks
            weights of the model or holds ones of another shape.
    """
    import torch

    from hfft.experiment.data.user_code import calling

    transformers = _transformers(folder.path)
    arch = folder.architecture
    if arch is None:
        raise CheckpointError(
            f"'{folder.path / CONFIG}' names no model class under architectures; pass "
            "--model file.py:factory to build the model."
        )
    cls = getattr(transformers, arch, None) if arch.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(
            f"'{folder.path / CONFIG}' names the model class {quoted(arch)}, which transformers "
            f"{transformers.__version__} does not ship; pass --model file.py:factory to build "
            "it with code you trust."
        )
    with (
        _quiet(transformers),
        calling(
            f"Building the model of '{folder.path}' failed: hfft called transformers' "
            f"{arch}.from_pretrained on it (float32, local files only, no remote code)",
            "Check that the folder loads with from_pretrained in your own code",
            "transformers",
            error=CheckpointError,
        ),
    ):
        model, info = cast(Any, cls).from_pretrained(
            folder.path,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=torch.float32,
            output_loading_info=True,
        )
    notes = [f"built {arch} from {CONFIG} with transformers {transformers.__version__}"]
    return model, notes + _loading_notes(folder, info)


def _transformers(path: Path) -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"'{path}' is a transformers model folder; {EXTRA}.") from None
    return transformers


def _loading_notes(folder: PretrainedFolder, info: Mapping[str, Any]) -> list[str]:
    """Refuse weights the folder lacks or holds in another shape; say what was adapted."""
    missing = sorted(map(str, info.get("missing_keys") or ()))
    misshaped = sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ()
    )
    if missing or misshaped:
        what = "; ".join(
            f"{label} {short_list([clipped(k) for k in keys])}"
            for label, keys in (("missing", missing), ("of another shape", misshaped))
            if keys
        )
        raise CheckpointError(
            f"The weights in '{folder.path}' do not fit the model its config describes ({what}); "
            "hfft fine-tunes a trained model and never initialises weights at random."
        )
    notes = []
    unused = info.get("unexpected_keys") or ()
    if unused:
        notes.append(f"left out {len(unused)} tensors of the folder that the model does not have")
    dtype = folder.config.get("dtype", folder.config.get("torch_dtype"))
    if isinstance(dtype, str) and dtype != "float32":
        notes.append(f"the folder's {dtype} weights were cast to float32, in which hfft steps")
    return notes


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' progress bars and advice off while hfft loads (hfft says what it did)."""
    log = transformers.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def tied_entries(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` with the entries of tied parameters that the folder stores once.

    ``save_pretrained`` writes a tensor shared by two names (the input embedding and
    the output layer of a language model) under one of them; a model built by the
    user's factory has both names, and the missing one takes its twin's values.
    """
    names_of: dict[int, list[str]] = {}
    full = model.state_dict(keep_vars=True)
    for name, tensor in full.items():
        names_of.setdefault(id(tensor), []).append(name)
    filled = dict(state_dict)
    for name, tensor in full.items():
        twin = next((n for n in names_of[id(tensor)] if n in state_dict), None)
        if name not in filled and twin is not None:
            filled[name] = state_dict[twin]
    return filled


def write_folder(
    folder: PretrainedFolder, dest: Path, state: Mapping[str, Tensor], metadata: Mapping[str, Any]
) -> list[str]:
    """Write ``state`` as a model folder like ``folder``: its companions, its weight layout.

    Each weight file holds the same tensor names as the input's (a tied name the input
    left out stays out) with hfft's metadata beside ``"format": "pt"``; a sharded
    input's index is written with its ``weight_map`` and the new ``total_size``. A
    config whose ``dtype`` is not float32 is written saying float32, as the weights are.

    A tensor of the input the model does not have (a stale buffer from_pretrained left
    out) is left out, and so is a shard left empty.

    Returns:
        The names written in ``dest``.
    """
    from hfft._io import atomic_write_bytes, atomic_write_json
    from hfft.experiment.run.checkpoint import save_checkpoint

    layout = {
        name: kept
        for name, keys in folder.layout.items()
        if (kept := tuple(k for k in keys if k in state))
    }
    dest.mkdir(exist_ok=True)
    written = []
    config = _float32_config(folder.config)
    for src in folder.companions():
        if src.name == CONFIG and config != folder.config:
            atomic_write_json(dest / CONFIG, config)
        else:
            atomic_write_bytes(dest / src.name, src.read_bytes())
        written.append(src.name)
    for name, keys in layout.items():
        save_checkpoint(dest / name, {k: state[k] for k in keys}, metadata)
        written.append(name)
    if folder.index is not None:
        total = sum(
            state[k].numel() * state[k].element_size() for ks in layout.values() for k in ks
        )
        weight_map = {k: name for name, keys in layout.items() for k in keys}
        meta = {**(folder.index.get("metadata") or {}), "total_size": total}
        atomic_write_json(
            dest / INDEX, {**folder.index, "metadata": meta, "weight_map": weight_map}
        )
        written.append(INDEX)
    return written


def _float32_config(config: Any) -> Any:
    """The config with every ``dtype`` (of sub-configs too) saying float32."""
    if not isinstance(config, dict):
        return config
    return {
        k: (
            "float32"
            if k in ("dtype", "torch_dtype") and isinstance(v, str)
            else _float32_config(v)
        )
        for k, v in config.items()
    }


def _hfft_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata hfft wrote into a weight file's header, without reading its tensors."""
    from safetensors import safe_open

    from hfft.experiment.run.checkpoint import METADATA_KEY

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            data = json.loads((f.metadata() or {}).get(METADATA_KEY) or "null")
    except Exception as err:  # safetensors' own errors, and unreadable JSON
        raise CheckpointError(
            f"Checkpoint '{path}' is not a valid safetensors file with readable metadata: {err}."
        ) from None
    return data if isinstance(data, dict) else None
