"""Which files in a folder hfft wrote: the records' own lists, and nothing else.

Every hfft run leaves a record that lists the files it writes, relative to its
folder: ``run.json`` (``hfft train``), ``metrics.json`` (a fine-tuning run),
``compare.json`` (a comparison, whose run folders each hold their own
``metrics.json``) and ``study.json`` (a study, whose ``train`` and ``runs``
folders hold theirs). hfft removes or replaces only what such a record lists
(:func:`remove_owned`), and refuses a folder that holds anything else
(:func:`first_foreign`): a user's notes, another program's files, an empty
folder the user made. Sub-folders holding another hfft run are the user's
results: left alone, never removed with the run around them.

A listed name is taken only as a plain relative path inside the folder (no
``..``, not absolute), so a hand-edited record cannot point hfft at a file
elsewhere. Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from hfft.experiment.records import COMPARE_KIND, FINETUNE_KIND, STUDY_KIND, TRAIN_KIND

__all__ = [
    "RECORDS",
    "Owned",
    "first_foreign",
    "hfft_record",
    "is_scratch",
    "owned",
    "read_record",
    "remove_owned",
    "slug",
]

RECORDS = ("run.json", "metrics.json", "compare.json", "study.json")
"""The record files of hfft's runs, each listing the files of its run."""

_SCRATCH = re.compile(r"\..+\.staging-(old-)?\d+|\.hfft\..+\.tmp")
"""hfft's scratch entries: a run's staging folder beside its ``--out`` and temporary files."""


def slug(text: str) -> str:
    """``text`` as one safe folder name: runs of other characters become ``_``.

    Letters, digits and ``.``, ``=``, ``-`` are kept, so a strategy label such as
    ``hf:m=2048,damping=0.5`` becomes ``hf_m=2048_damping=0.5``.
    """
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def is_scratch(name: str) -> bool:
    """Whether ``name`` is a staging folder or temporary file of an hfft run."""
    return _SCRATCH.fullmatch(name) is not None


def read_record(path: Path) -> dict[str, Any] | None:
    """A record as a dict, or ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


_KINDS = {
    "run.json": TRAIN_KIND,
    "metrics.json": FINETUNE_KIND,
    "compare.json": COMPARE_KIND,
    "study.json": STUDY_KIND,
}


def hfft_record(folder: Path, name: str) -> dict[str, Any] | None:
    """The record ``name`` in ``folder`` if hfft wrote it (its ``kind`` says so), else
    ``None``: a JSON file of the user's that happens to be called ``run.json`` is theirs."""
    record = read_record(folder / name)
    if record is None:
        return None
    kind = record.get("kind")
    if kind == _KINDS[name]:
        return record
    config = record.get("config")  # a compare.json written before it had a kind
    if name == "compare.json" and kind is None and isinstance(config, dict):
        return record if {"checkpoints", "budget"} <= config.keys() else None
    return None


@dataclass(frozen=True)
class Owned:
    """What the records of one folder list, relative to it.

    Attributes:
        files: Files (the records themselves included).
        folders: Folders the records list as a whole: a comparison's run
            folders, a study's ``train`` and ``runs``.
        runs: The comparisons' run folders among them: each holds one run's
            files and nothing else (a run replaces its folder whole).
    """

    files: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()
    runs: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.files or self.folders)

    def holds(self, rel: str) -> bool:
        """Whether the folder ``rel`` is listed or lies above something listed."""
        prefix = rel + "/"
        return rel in self.folders or any(p.startswith(prefix) for p in self.files | self.folders)


def _safe(name: Any) -> str | None:
    """``name`` as a normalised relative path inside the folder, else ``None``."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", ".", "") for part in path.parts):
        return None
    return path.as_posix()


def _names(values: Iterable[Any]) -> set[str]:
    return {n for n in map(_safe, values) if n is not None}


COMPANIONS = (
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens"
    r"|vocab|preprocessor_config|processor_config|chat_template)\.(json|txt|jinja)"
    r"|merges\.txt|[\w-]+\.model"
)
"""The files of a transformers model folder copied beside its weights: config, generation
config, tokenizer and processor files; never a trainer's results, states or other weights."""

MODEL_FOLDER_FILES = rf"{COMPANIONS}|[\w-]+\.safetensors|model\.safetensors\.index\.json"
"""What a model folder hfft writes (``final/``, ``best/``) holds."""

EXPORTED = rf"(final|best)/({MODEL_FOLDER_FILES})|final\.ckpt"
"""The files a fine-tuning run writes beside its weights for the user's tools: the model
folders of a transformers input (``final/model.safetensors``, …) and ``--export
lightning``'s ``final.ckpt``."""

_NAMES = {
    "run.json": (r"ckpt-\d+\.safetensors|evaluations\.csv", ""),
    "metrics.json": (rf"(final|best)\.safetensors|evaluations\.csv|{EXPORTED}", ""),
    "compare.json": (r"(curves|relative)-[^/]+\.png|evaluations\.csv", r"[^/]+/[^/]+/seed-\d+"),
    "study.json": (r"report\.md|figure[12][^/]*\.png|evaluations\.csv", r"train|runs"),
}
"""Per record, the names of the files and folders it may list: what that kind of run
writes. A record edited to list anything else (a user's file beside it) lists nothing
more than it would have."""


def _listed(name: str, record: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The files and folders one record lists (its own name included)."""
    file_pattern, folder_pattern = (re.compile(p) for p in _NAMES[name])
    files = _names(_strings(record.get("files")) + _earlier_files(name, record))
    folders = _names(_strings(record.get("folders")) + _earlier_folders(name, record))
    return (
        {name} | {f for f in files if file_pattern.fullmatch(f)},
        {f for f in folders if folder_pattern.pattern and folder_pattern.fullmatch(f)},
    )


def _strings(listed: Any) -> list[Any]:
    """A list as it is; an object's keys (``metrics.json``'s files with their hashes)."""
    if isinstance(listed, dict):
        return list(listed)
    return listed if isinstance(listed, list) else []


def _earlier_files(name: str, record: Mapping[str, Any]) -> list[Any]:
    """What records written before they had ``files`` list otherwise: a training's
    checkpoints, a comparison's plots."""
    if name == "run.json":
        return [e.get("path") for e in _strings(record.get("checkpoints")) if isinstance(e, dict)]
    if name == "compare.json":
        return [PurePosixPath(p).name for p in _strings(record.get("plots")) if isinstance(p, str)]
    return []


def _earlier_folders(name: str, record: Mapping[str, Any]) -> list[Any]:
    """A comparison's run folders from its ``runs`` (before it had ``folders``)."""
    if name != "compare.json":
        return []
    return [
        f"{r.get('checkpoint')}/{slug(str(r.get('strategy')))}/seed-{r.get('seed')}"
        for r in _strings(record.get("runs"))
        if isinstance(r, dict)
    ]


RUN_FILES = ("metrics.json", "final.safetensors", "best.safetensors", "evaluations.csv")
"""What a fine-tuning run writes: a comparison's run folder owns these names even when
the run's own ``metrics.json`` is unreadable or damaged, so that the comparison can run
it again."""


def _exported_in(run: Path) -> frozenset[str]:
    """The files of a run's ``final/`` and ``best/`` model folders that are there, by the
    names a run writes (:data:`EXPORTED`), owned like :data:`RUN_FILES` when the run's
    ``metrics.json`` is damaged."""
    found = [
        f"{stem}/{p.name}"
        for stem in ("final", "best")
        if (run / stem).is_dir() and not (run / stem).is_symlink()
        for p in (run / stem).iterdir()
    ]
    return frozenset(f for f in found if re.fullmatch(EXPORTED, f))


def owned(folder: Path, pending: Mapping[str, Mapping[str, Any]] | None = None) -> Owned:
    """Everything the records in ``folder`` list, with the files of the run folders they
    list (each read from its own record).

    Args:
        folder: The folder.
        pending: Records a run is about to write there, by name (a comparison's
            ``compare.json`` with its run folders). Only their folders count, and
            of those only what the records inside them list: a file in the way
            of one of the run's names is not the run's before it wrote it.

    Returns an empty :class:`Owned` when ``folder`` holds no record.
    """
    files: set[str] = set()
    folders: dict[str, str] = {}  # listed folder → the record that lists it
    for name in RECORDS:
        record = hfft_record(folder, name)
        if record is not None:
            more_files, more_folders = _listed(name, record)
            files |= more_files
            folders.update(dict.fromkeys(more_folders - folders.keys(), name))
    for name, planned in (pending or {}).items():
        more_folders = _listed(name, planned)[1]
        folders.update(dict.fromkeys(more_folders - folders.keys(), f"pending {name}"))
    nested: set[str] = set()
    runs: set[str] = set()
    for sub, lister in sorted(folders.items()):
        path = folder / sub
        if not _plain(folder, sub):  # listed through a link: nothing of it is hfft's
            continue
        inner = owned(path) if path.is_dir() else Owned()
        if lister == "compare.json":  # a comparison's run folder holds a run's files
            run_files = frozenset(RUN_FILES) | _exported_in(path)
            inner = Owned(inner.files | run_files, inner.folders, inner.runs)
        if lister.endswith("compare.json"):
            runs.add(sub)
        files |= {f"{sub}/{f}" for f in inner.files}
        nested |= {f"{sub}/{f}" for f in inner.folders}
        runs |= {f"{sub}/{f}" for f in inner.runs}
    plain = {sub for sub in folders if _plain(folder, sub)}
    return Owned(frozenset(files), frozenset(plain | nested), frozenset(runs))


def first_foreign(
    folder: Path,
    nested_runs: bool = True,
    pending: Mapping[str, Mapping[str, Any]] | None = None,
    runs_whole: bool = False,
) -> str | None:
    """The first entry of ``folder`` (a relative path) that no record there lists, else
    ``None``.

    Entries listed by the folder's records are hfft's; so are its scratch
    entries. With ``nested_runs``, a sub-folder that holds a record of its
    own is another hfft run (checked against that record); without it, such
    a folder counts as foreign too (a command that replaces the folder whole
    would take it along). ``pending`` records count as written (:func:`owned`).
    With ``runs_whole``, a comparison's run folders count as replaced whole (by
    ``--overwrite``): another run inside one is foreign too.
    """
    if not folder.is_dir():
        return None
    own = owned(folder, pending)
    return _walk(folder, "", own if runs_whole else replace(own, runs=frozenset()), nested_runs)


def _walk(folder: Path, base: str, own: Owned, nested_runs: bool) -> str | None:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if is_scratch(entry.name):
            continue
        rel = f"{base}{entry.name}"
        directory = entry.is_dir() and not entry.is_symlink()
        if not directory:
            if rel not in own.files:
                return rel
            continue
        if own.holds(rel):  # inside a run folder, another run would go with the folder
            found = _walk(entry, rel + "/", own, nested_runs and rel not in own.runs)
        elif nested_runs and (inner := owned(entry)):
            found = _walk(entry, "", inner, nested_runs)
            found = None if found is None else f"{rel}/{found}"
        else:
            return rel + "/"
        if found is not None:
            return found
    return None


def remove_owned(folder: Path, under: str | None = None) -> None:
    """Remove what the records in ``folder`` list, and the folders that leaves empty
    (with ``under``, only what lies in that listed sub-folder: one run of a comparison).

    Files are unlinked (a listed symbolic link is removed, never what it points
    to); listed folders and the folders above listed paths are removed only
    once empty, so a sub-folder holding anything else (another run, a file
    that appeared meanwhile) stays with everything in it. The records go
    after the files they list, so a run stopped halfway still lists what is
    left.
    """
    own = owned(folder)
    if under is not None:
        inside = [p for p in own.files | own.folders if p.startswith(under + "/")]
        own = Owned(own.files & set(inside), own.folders & set(inside))
    for rel in sorted(own.files, key=_removal_order):
        path = folder / rel
        if _plain(folder, str(PurePosixPath(rel).parent)) and (path.is_symlink() or path.is_file()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    above = {q for p in own.files | own.folders for q in PurePosixPath(p).parents}
    listed = {PurePosixPath(p) for p in own.folders}
    for sub in sorted((above | listed) - {PurePosixPath(".")}, key=lambda q: -len(q.parts)):
        if _plain(folder, str(sub)):
            with contextlib.suppress(OSError):
                (folder / sub).rmdir()


def _plain(folder: Path, rel: str) -> bool:
    """Whether no folder on the way from ``folder`` to ``rel`` (itself included) is a
    symbolic link: what hfft removes stays inside the folder."""
    path = folder
    for part in PurePosixPath(rel).parts:
        path = path / part
        if path.is_symlink():
            return False
    return True


def _removal_order(rel: str) -> tuple[bool, int, str]:
    """Records after the files they list; deeper paths first."""
    return (PurePosixPath(rel).name in RECORDS, -rel.count("/"), rel)
