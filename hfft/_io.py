"""Atomic file output and file hashing.

Every file ``hfft`` writes goes through :func:`atomic_write_bytes`: the data
goes to a temporary file in the destination's directory, is flushed to disk
(``fsync``) and then renamed over the destination with :func:`os.replace`,
which is atomic on POSIX and Windows for paths on one file system. A reader
therefore sees either the old file or the complete new one, never a half
written file, even if the process is killed (or Ctrl-C is pressed) midway.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "folders_to_create",
    "json_ready",
    "number",
    "sha256_file",
    "to_json",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    The parent directory must exist. On any failure the temporary file is
    removed and an existing file at ``path`` is left untouched.

    Args:
        path: Destination file.
        data: The complete new contents.

    Raises:
        OSError: If the file cannot be written or renamed.
    """
    path = Path(path)
    # the name marks it as hfft's scratch (hfft.experiment.run.ownership.is_scratch)
    fd, tmp = tempfile.mkstemp(prefix=f".hfft.{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # also KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # makes the rename itself durable; not possible (nor needed) on every platform
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def number(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else ``None``.

    How hfft reads a number back from its JSON, where a non-finite or
    unmeasured value is ``null``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``, tuples as lists.

    JSON has no NaN: a number that could not be measured is ``null``.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Strict, indented JSON of ``obj`` (non-finite floats become ``null``).

    Raises:
        TypeError: If ``obj`` is not JSON-serialisable.
    """
    return json.dumps(json_ready(obj), indent=2, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON to ``path`` atomically.

    The object is serialised completely before anything touches the disk, so
    an object that is not JSON-serialisable leaves an existing file intact.

    Args:
        path: Destination file.
        obj: A JSON-serialisable object; non-finite floats are written as
            ``null`` (see :func:`to_json`).

    Raises:
        TypeError: If ``obj`` is not JSON-serialisable.
        OSError: If the file cannot be written.
    """
    atomic_write_text(path, to_json(obj) + "\n")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def folders_to_create(target: Path) -> list[Path]:
    """The folders ``target.mkdir(parents=True)`` would create, innermost first."""
    chain = []
    for folder in (target, *target.parents):
        if folder.exists():
            break
        chain.append(folder)
    return chain
