"""Shards: N processes sharing one comparison folder (``--shard I/N``).

A shard is given as I/N, or is the task of a Slurm job array that this
process is (``--shard slurm`` or ``slurm/N``: :meth:`Shard.from_slurm`). Each shard runs its
share of the runs into the same folder. The folder's lock is shared while
shards run and exclusive while one claims the folder (and writes its running
header) or assembles the ranking; a comparison without shards cannot start
beside them, and the last shard to end, finding every run there, assembles
the ranking. The comparison's own steps (claiming the folder, visiting runs,
summarising, the configuration check) come in as a :class:`Comparison`: this
module knows nothing of what a run is.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hfft.optim import distributed

__all__ = ["Comparison", "Shard", "compare_shard", "folder_lock"]

_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


@dataclass(frozen=True)
class Shard:
    """One of ``count`` processes that share a comparison's runs (``--shard I/N``, ``slurm``,
    ``slurm/N``).

    Shard ``index`` runs every ``count``-th run of
    :func:`hfft.analysis.compare.plan_runs`'s order, starting at position
    ``index``, into the shared output folder; whichever shard finds every run
    there when it ends assembles the ranking. ``count`` 0 (``--shard none``)
    runs nothing and only assembles.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] | None = None) -> Shard | None:
        """``"I/N"`` (0 ≤ I < N), ``"none"``, ``"slurm"``, ``"slurm/N"`` or ``"auto"``.

        ``slurm`` and ``slurm/N`` are the shard of the Slurm job array task this
        process is (:meth:`from_slurm`, reading ``environ``, by default the
        process's environment); ``auto`` is ``slurm`` inside an array task and
        ``None`` (no shard: one process runs every run) outside one.

        Raises:
            ValueError: For anything else, for ``slurm`` outside a Slurm array
                task, and for an array whose task ids do not number the shards.
        """
        word = text.strip().lower()
        if word == "none":
            return cls(0, 0)
        environ = os.environ if environ is None else environ
        name, slash, count = word.partition("/")
        if word in ("slurm", "auto") or (name == "slurm" and slash):
            total = None if not slash else int(count) if count.isdigit() else 0
            if total == 0:
                raise ValueError(f"--shard slurm/N takes N >= 1 shards, not {text.strip()!r}")
            shard = cls.from_slurm(environ, total)
            if shard is None and word != "auto":
                raise ValueError(
                    f"--shard {word} takes its shard from a Slurm job array task "
                    "(SLURM_ARRAY_TASK_ID), and this process is not one; start it with "
                    "sbatch --array, or give --shard I/N"
                )
            return shard
        index, slash, count = text.partition("/")
        try:
            parsed = cls(int(index), int(count))
        except ValueError:
            parsed = None
        if not slash or parsed is None or not 0 <= parsed.index < parsed.count:
            raise ValueError(
                "--shard takes I/N with 0 <= I < N (e.g. 0/4), none, slurm, slurm/N or auto, "
                f"not {text!r}"
            )
        return parsed

    @classmethod
    def from_slurm(cls, environ: Mapping[str, str], total: int | None = None) -> Shard | None:
        """The shard of a Slurm job array task; ``None`` outside a job array.

        Without ``total`` (``--shard slurm``) the array is every shard, whatever
        N is: I = ``SLURM_ARRAY_TASK_ID`` − ``SLURM_ARRAY_TASK_MIN`` and N =
        ``SLURM_ARRAY_TASK_COUNT`` (else MAX − MIN + 1), so the ids must run
        0 … N−1 or 1 … N with N ≥ 2 (``--array=0-15`` and ``--array=1-16`` are
        both 16 shards; a ``%`` limit on the tasks running at once is fine). A
        step or a list with gaps (``--array=0-15:2``, ``1,3,5``) is refused, and
        so is part of an array (``--array=3``, ``5-8``, ``0``), which would
        divide the runs anew (one task would run them all).

        With ``total`` N (``--shard slurm/N``), I is ``SLURM_ARRAY_TASK_ID`` as
        it is, so an array of some of the N shards (``--array=3``, ``3,7``)
        runs exactly those; every id of the array must lie in 0 … N−1
        (``--array=1-16`` with ``slurm/16`` is refused in every task).

        Raises:
            ValueError: For such an array, or variables that are not whole numbers.
        """
        if "SLURM_ARRAY_TASK_ID" not in environ:
            return None
        names = ("ID", "MIN", "MAX")
        try:
            task, low, high = (int(environ[f"SLURM_ARRAY_TASK_{n}"]) for n in names)
            count = int(environ.get("SLURM_ARRAY_TASK_COUNT", high - low + 1))
            step = int(environ.get("SLURM_ARRAY_TASK_STEP", 1))
        except (KeyError, ValueError):
            found = {n: environ.get(f"SLURM_ARRAY_TASK_{n}") for n in (*names, "COUNT")}
            raise ValueError(
                f"--shard slurm needs whole numbers in SLURM_ARRAY_TASK_ID, _MIN and _MAX "
                f"(and _COUNT, if set), not {found}"
            ) from None
        if total is not None:
            if not 0 <= low <= task <= high < total:
                raise ValueError(
                    f"--shard slurm/{total} runs shard SLURM_ARRAY_TASK_ID of {total}, so the "
                    f"array's ids must lie in 0-{total - 1} (--array=0-{total - 1} for every "
                    f"shard, --array=I,J to rerun shards I and J); this array's ids run "
                    f"{low}-{high}"
                )
            return cls(task, total)
        if step != 1 or count != high - low + 1 or not low <= task <= high:
            ids = f"{low}-{high}" + (f":{step}" if step != 1 else "")
            raise ValueError(
                f"--shard slurm numbers the shards by the array's task ids, which must be "
                f"consecutive (e.g. --array=0-15 or 1-16, a %limit allowed); this array has "
                f"{count} tasks with ids {ids}"
            )
        if low not in (0, 1) or count < 2:
            raise ValueError(
                f"--shard slurm takes the array for all of the shards, its ids running from 0 "
                f"or 1 (e.g. --array=0-15 or 1-16), and ids {low}-{high} look like part of "
                f"one: to run some of N shards, give --shard slurm/N (e.g. --array=3 with "
                f"--shard slurm/16 reruns shard 3 of 16)"
            )
        return cls(task - low, count)

    def takes(self, position: int) -> bool:
        """Whether this shard runs the run at ``position`` of the run order."""
        return self.count > 0 and position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}" if self.count else "none"


class Comparison(Protocol[_R_co]):
    """The steps of one comparison that its shards' coordination calls.

    The runs are those of :func:`hfft.analysis.compare.plan_runs`, in its
    order; ``_R_co`` is the comparison's result.
    """

    @property
    def order(self) -> Sequence[Any]:
        """Every run of the comparison, in the order the shards divide among them."""

    @property
    def missing(self) -> list[str]:
        """The runs that the last :meth:`visit` did not find, described."""

    @property
    def on_note(self) -> Callable[[str], None] | None:
        """Where a sentence for the user goes (``None``: nowhere)."""

    def claim(self, header: bool = True) -> None:
        """Claim the folder for the comparison and write its running header (``header``)."""

    def visit(self, positions: Iterable[int], run_missing: bool) -> None:
        """Reuse the finished runs at ``positions``; run the others (``run_missing``) or
        list them in :attr:`missing`."""

    def summarise(self) -> _R_co:
        """Rank, plot and write ``compare.json``."""

    def same_config(self, stored: dict[str, Any]) -> bool:
        """Whether a stored ``compare.json`` is of this comparison's configuration."""

    def finished(self, done: dict[str, Any]) -> _R_co:
        """The result of a ranking another shard assembled (``done``: its ``compare.json``)."""

    def unfinished(self, header: dict[str, Any]) -> _R_co:
        """The result of a shard that leaves the ranking to others still running (``header``:
        the running ``compare.json``)."""


def compare_shard(out: Path, shard: Shard, steps: Comparison[_R]) -> _R:
    """This shard's runs, then the ranking if every run is there and no other shard runs.

    The folder's lock is shared while shards run and exclusive while one
    claims the folder or assembles the ranking: a shard that finds others
    running joins them (same configuration), a comparison without shards
    cannot start beside them, and a shard that ends while others still run
    leaves the ranking to the last of them.
    """
    from hfft.experiment.run.run_folder import FolderBusy

    if shard.count == 0:
        return _assemble_only(out, steps)
    try:
        with folder_lock(out):  # nobody else here: claim the folder
            steps.claim()
    except FolderBusy:
        pass  # other shards run (or one claims or assembles): join them
    with _shared_lock(out, steps.on_note):
        _check_joining(out, steps.same_config)
        steps.visit([p for p in range(len(steps.order)) if shard.takes(p)], run_missing=True)
    try:
        with folder_lock(out):
            steps.visit(range(len(steps.order)), run_missing=False)
            if not steps.missing:
                return steps.summarise()
    except FolderBusy:  # another shard still runs (or assembles): it writes the ranking
        steps.visit(range(len(steps.order)), run_missing=False)
    if not steps.missing:  # all there: make sure someone assembles (the holder may not)
        with folder_lock(out, wait=True):
            done = _stored_summary(out)
            if done.get("status") == "completed" and steps.same_config(done):
                return steps.finished(done)
            return steps.summarise()
    return steps.unfinished(_stored_summary(out))


@contextlib.contextmanager
def _shared_lock(out: Path, on_note: Callable[[str], None] | None) -> Iterator[None]:
    """The folder's shared lock, saying so when it has to wait for an exclusive holder."""
    from hfft.experiment.run.run_folder import FolderBusy

    try:
        with folder_lock(out, shared=True):
            yield
        return
    except FolderBusy:
        pass
    if on_note is not None:
        on_note(
            f"waiting for the process that holds {out} (a shard claiming or assembling it, or "
            "a comparison without shards)"
        )
    with folder_lock(out, wait=True, shared=True):
        yield


def _stored_summary(out: Path) -> dict[str, Any]:
    """``compare.json`` as a dict (empty when it is missing or unreadable)."""
    try:
        stored = json.loads((out / "compare.json").read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        return {}
    return stored if isinstance(stored, dict) else {}


def _assemble_only(out: Path, steps: Comparison[_R]) -> _R:
    """``--shard none``: the ranking from the runs there, or which are missing."""
    from hfft.experiment.run.run_folder import FolderBusy

    try:
        with folder_lock(out):
            steps.claim(header=False)
            steps.visit(range(len(steps.order)), run_missing=False)
            if not steps.missing:
                return steps.summarise()
    except FolderBusy:
        raise FolderBusy(
            f"another hfft process holds {out} (shards still running, whose last writes the "
            "ranking, or a comparison without shards); assemble once it has ended"
        ) from None
    first = ", ".join(steps.missing[:3])
    raise ValueError(
        f"{len(steps.missing)} of {len(steps.order)} runs are not in {out} yet ({first}"
        f"{', …' if len(steps.missing) > 3 else ''}); run the shards that hold them, then "
        "assemble again"
    )


def _check_joining(out: Path, same_config: Callable[[dict[str, Any]], bool]) -> None:
    """Refuse to join the shards running in ``out`` with another configuration (the run
    order would then mean other runs)."""
    from hfft.experiment.run.run_folder import FolderTaken

    if not distributed.is_main():
        return
    stored = _stored_summary(out)
    if not stored:
        raise FolderTaken(
            f"{out} has no readable compare.json although another process holds it; start the "
            "shards again once it has ended"
        )
    if not same_config(stored):
        raise FolderTaken(
            f"{out} is being filled by another comparison (other checkpoints, strategies, "
            "seeds or settings); start every shard with the same command but for --shard"
        )


@contextlib.contextmanager
def folder_lock(out: Path, wait: bool = False, shared: bool = False) -> Iterator[None]:
    """The comparison folder's lock, held by rank 0 alone (which writes the files)."""
    from hfft.experiment.run.run_folder import locked_folder

    main = distributed.is_main()
    with locked_folder(out, wait=wait, shared=shared) if main else contextlib.nullcontext():
        yield
