"""One run per output folder: an exclusive lock, the folder's owner checked, and a swap at the end.

Rules every command holds (docs/safety.md):

* **One run at a time.** A run holds an exclusive lock (``flock``) on its
  output folder while it works; a second run on the same folder fails at once
  with one sentence. The kernel drops the lock when its process dies, so a
  killed run never leaves a stale lock behind.
* **Only hfft's own files.** A folder holding anything that no hfft record
  there lists (:mod:`hfft.experiment.run.ownership`) is refused with one sentence
  naming it, with or without ``--overwrite``; hfft removes or replaces only
  the files a record lists.
* **Never a mix.** A folder that holds another run's files is refused unless
  the user passes ``--overwrite``; a rerun of the same configuration replaces
  its earlier files. :class:`RunFolder` writes a run into a fresh staging
  folder beside the target and swaps it in when the run ends (completed,
  diverged or interrupted), so the target holds either the old run's files or
  the new run's, never both; a run that dies before the swap leaves the
  target as it was. A symbolic link as the target is followed: the run
  replaces the folder it points to, and the link stays.
* **Nothing left behind** by a run that did not start: folders created for it
  are removed again, and the next run on a folder removes the staging folders
  and temporary files of killed runs (hfft's by their names).

Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hfft._io import folders_to_create
from hfft._text import quoted
from hfft.experiment.run.ownership import (
    RECORDS,
    first_foreign,
    is_scratch,
    owned,
    remove_owned,
)

__all__ = [
    "FolderBusy",
    "FolderTaken",
    "RunFolder",
    "check_foreign",
    "check_not_input",
    "check_owner",
    "claim",
    "clean_stale",
    "locked_folder",
]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]


class FolderBusy(ValueError):
    """Another run holds the output folder's lock."""


class FolderTaken(ValueError):
    """The output folder holds another run's files."""


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def locked_folder(target: Path, wait: bool = False, shared: bool = False) -> Iterator[list[Path]]:
    """Create ``target`` if needed and hold a lock on it for the block (exclusive unless
    ``shared``).

    With ``wait``, waits for another process's lock to be released instead of
    raising. With ``shared``, the lock is shared: the shards of a comparison
    hold it together while they run, which keeps out an exclusive holder (a
    comparison without shards, or a shard assembling the ranking).

    Yields the folders that were created for it (innermost first); they are
    removed again if still empty when the block ends, so a run that fails
    before writing anything leaves nothing behind.

    Raises:
        FolderBusy: If another process holds the lock (and not ``wait``).
        OSError: If the folder cannot be created or opened.
    """
    if target.is_symlink():  # followed, also where it points to nothing yet
        target = Path(os.path.realpath(target))
    created = folders_to_create(target)
    target.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        if fcntl is not None:
            mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                raise FolderBusy(
                    f"another hfft run is writing to {target}; wait for it to end or choose "
                    "another --out"
                ) from None
        yield created
    finally:
        os.close(fd)  # releases the lock
        _remove_if_empty(created)


def clean_stale(target: Path) -> None:
    """Remove what killed runs on ``target`` left: staging folders and temporary files.

    Only entries named as hfft names them (:func:`hfft.experiment.run.ownership.is_scratch`)
    are removed. Only to be called while holding ``target``'s lock: then no
    other run is writing them.
    """
    for stale in target.parent.glob(f".{target.name}.staging-*"):
        if not is_scratch(stale.name):
            continue
        if stale.is_symlink() or not stale.is_dir():
            stale.unlink()
        else:
            shutil.rmtree(stale, ignore_errors=True)
    _remove_temporary(target)


def _remove_temporary(folder: Path) -> None:
    """Remove the temporary files of writes that a killed run left in ``folder``."""
    for tmp in folder.glob(".hfft.*.tmp"):
        if is_scratch(tmp.name) and (tmp.is_file() or tmp.is_symlink()):
            with contextlib.suppress(OSError):
                tmp.unlink()


def check_foreign(
    target: Path,
    nested_runs: bool = True,
    pending: Mapping[str, Mapping[str, Any]] | None = None,
    runs_whole: bool = False,
) -> None:
    """Refuse ``target`` if it holds anything that no hfft record there lists.

    Args:
        target: The output folder (may not exist yet).
        nested_runs: Whether sub-folders holding other hfft runs may stay
            (commands that write in place); a command that replaces the
            folder whole would take them along, so it refuses them too.
        pending: The record the run is about to write there, by name (what
            it lists counts as hfft's).
        runs_whole: Whether a comparison's run folders are about to be
            replaced whole (then no other run may be inside one).

    Raises:
        FolderTaken: Naming the first such entry.
    """
    foreign = first_foreign(target, nested_runs, pending, runs_whole)
    if foreign is None:
        return
    if foreign.endswith("/") and owned(target / foreign):
        raise FolderTaken(
            f"{target} holds another hfft run in {quoted(foreign)}, which this run would "
            "replace with the folder: move it, or choose another --out"
        )
    raise FolderTaken(
        f"{target} holds {quoted(foreign)}, which is not a file of an hfft run there; hfft never "
        "deletes or replaces files it did not write: move it, or choose another --out"
    )


def check_not_input(target: Path, inputs: Iterable[Path], replaces: bool = False) -> None:
    """Refuse an output folder that is the folder of one of the run's inputs (or, for a
    run that may replace files in it, a folder above one: its input could be among them).

    Raises:
        ValueError: Naming the input.
    """
    out = Path(os.path.realpath(target))
    for path in inputs:
        folder = Path(os.path.realpath(path))
        folder = folder if folder.is_dir() else folder.parent
        if folder == out or (replaces and out in folder.parents):
            raise ValueError(
                f"--out {target} holds the input {path}; a run never writes into the folder of "
                "its input, nor replaces a folder around it: choose another --out"
            )


def check_owner(
    target: Path, same_run: Callable[[Path], bool], overwrite: bool, record: str = "metrics.json"
) -> str:
    """Whether a run may write ``target``: ``"empty"``, ``"same"`` (an earlier run of
    the same configuration is there, and no other run) or ``"overwrite"`` (another
    run's files, which the user asked to replace).

    Args:
        target: The output folder (may not exist yet).
        same_run: Whether the files in ``target`` are an earlier run of the
            same configuration.
        overwrite: The user's ``--overwrite``.
        record: The record this kind of run writes (``run.json``, …): a folder
            that also holds another kind's is another run's.

    Raises:
        FolderTaken: If ``target`` holds files of another run and ``overwrite``
            is off.
    """
    if not target.is_dir() or not owned(target):
        return "empty"
    others = [name for name in RECORDS if name != record and (target / name).exists()]
    if not others and same_run(target):
        return "same"
    if overwrite:
        return "overwrite"
    raise FolderTaken(
        f"{target} holds another run's files (a different hfft configuration); pass "
        "--overwrite to replace them, or choose another --out"
    )


def claim(
    target: Path,
    same_run: Callable[[Path], bool],
    overwrite: bool,
    record: str,
    nested_runs: bool = True,
) -> str:
    """:func:`check_foreign`, then :func:`check_owner`: whether and how a run that writes
    ``record`` may write ``target`` (call it holding the folder's lock)."""
    check_foreign(target, nested_runs)
    return check_owner(target, same_run, overwrite, record)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class RunFolder:
    """A run's output folder, written through a staging folder and swapped in at the end.

    Use as a context manager around the whole run; write into
    :attr:`staging`, then call :meth:`commit`. Leaving the block without
    committing (an error) discards the staging folder and leaves the target
    as it was.

    Args:
        target: The output folder.
        same_run: Whether files found in ``target`` are an earlier run of the
            same configuration (they may be replaced).
        overwrite: Replace another run's files.

    Attributes:
        note: One sentence when an earlier run is being replaced, else ``None``.
    """

    def __init__(self, target: Path, same_run: Callable[[Path], bool], overwrite: bool) -> None:
        # a link is followed: the swap replaces the folder it points to, not the link
        self.target = Path(os.path.realpath(target)) if target.is_symlink() else target
        self.staging = self.target.parent / f".{self.target.name}.staging-{os.getpid()}"
        self._same_run = same_run
        self._overwrite = overwrite
        self._stack = contextlib.ExitStack()
        self.committed = False
        self.note: str | None = None

    def __enter__(self) -> RunFolder:
        with self._stack as stack:
            stack.enter_context(locked_folder(self.target))
            owner = claim(
                self.target, self._same_run, self._overwrite, "metrics.json", nested_runs=False
            )
            self.note = {
                "empty": None,
                "same": f"replacing the earlier run of the same configuration in {self.target}",
                "overwrite": f"--overwrite: replacing the files in {self.target}",
            }[owner]
            clean_stale(self.target)
            self.staging.mkdir()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.committed:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._stack.close()

    def commit(self) -> None:
        """Make the staged files the target's, in one step where the system allows it.

        Call it while signals are held (:func:`hfft.experiment.interrupts.signals_held`),
        so that an interrupt cannot fall between the two renames of a system
        without an atomic exchange.
        """
        self._swap()
        self.committed = True

    def _swap(self) -> None:
        if not any(self.target.iterdir()):
            os.rename(self.staging, self.target)  # replaces the empty folder
            return
        if not _exchange(self.staging, self.target):
            old = self.target.parent / f".{self.target.name}.staging-old-{os.getpid()}"
            os.rename(self.target, old)
            os.rename(self.staging, self.target)
            self.staging = old
        _discard(self.staging, self.target)


def _discard(old: Path, target: Path) -> None:
    """Remove the replaced run's files from ``old``; anything else that appeared in the
    folder while the run worked goes back into ``target`` (never deleted)."""
    remove_owned(old)
    _remove_temporary(old)
    for entry in list(old.iterdir()):
        back = target / entry.name
        if not back.exists() and not back.is_symlink():
            os.rename(entry, back)
    if any(old.iterdir()):  # a name the new run took too: kept beside it, in sight
        os.rename(old, target.parent / f"{target.name}.kept-{os.getpid()}")
    else:
        old.rmdir()
