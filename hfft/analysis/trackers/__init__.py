"""Finished runs shown in TensorBoard (``--tensorboard DIR``) and MLflow (``--mlflow URI``).

The trackers work from the records: each run is logged once it has ended,
from the ``metrics.json`` (or a training's ``run.json``) it wrote, so what
they show is what the JSON says, and nothing of it is on a run's clock or in
its budget. A comparison logs each run as it finishes, and each run it
reuses that is not logged yet. The packages are optional extras
(``tensorboard``, ``mlflow``), imported only when a tracker is asked for.
:mod:`.tensorboard` and :mod:`.mlflow` say what each shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hfft.analysis.trackers import mlflow as mlflow_log
from hfft.analysis.trackers import tensorboard as tensorboard_log
from hfft.analysis.trackers.run_record import RunRecord, read_run

__all__ = ["RunRecord", "Trackers", "open_trackers", "read_run"]


class Trackers:
    """The trackers of one command; :meth:`log` logs a finished run to each.

    Open them with :func:`open_trackers`.
    """

    def __init__(
        self,
        tensorboard: Path | None,
        mlflow: mlflow_log.MLflowLog | None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.tensorboard, self.mlflow, self.on_note = tensorboard, mlflow, on_note

    def log(self, name: str, folder: Path) -> None:
        """Log the finished run in ``folder`` under ``name`` (``ckpt-10/hf:m=2048/seed-3``).

        Whatever fails here (a full disk, a server gone, a record that cannot be read, a
        bug of a tracker) is one note for the run, and the next run is logged all the
        same: the run's own files are written, and a rerun of the command logs what is
        missing. Only an interrupt goes through (Ctrl-C, SIGTERM: a ``BaseException``).
        """
        try:
            run = read_run(name, folder)
        except Exception as err:
            self._note(f"the trackers did not get run {name}: {_reason(err)}")
            return
        if run is None:
            return
        failed = []
        if self.tensorboard is not None:
            try:
                tensorboard_log.log_run(run, self.tensorboard, self.on_note)
            except Exception as err:
                failed.append(("TensorBoard", _reason(err)))
        if self.mlflow is not None:
            try:
                self.mlflow.log_run(run)
            except Exception as err:
                failed.append(("MLflow", _reason(err)))
        if failed:
            trackers = " and ".join(tracker for tracker, _ in failed)
            self._note(f"{trackers} did not get run {name}: {'; '.join(r for _, r in failed)}")

    def _note(self, line: str) -> None:
        if self.on_note is not None:
            self.on_note(f"{line} (a rerun of the command logs it)")


def _reason(err: Exception) -> str:
    """What went wrong, in words: the message of an error hfft expects (a full disk, an
    unreadable record), the exception's type too for any other."""
    if isinstance(err, OSError | ValueError) and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def open_trackers(
    tensorboard: Path | None,
    mlflow: str | None,
    experiment: str,
    outside: Path | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Trackers:
    """The trackers asked for, checked before any run: packages, folders, the store.

    Args:
        tensorboard: ``--tensorboard``: the folder of the event files.
        mlflow: ``--mlflow``: a tracking URI, or a folder for a local store.
        experiment: The MLflow experiment (created when missing).
        outside: The command's output folder, which must not hold the trackers' files
            (hfft refuses files it did not write there), nor lie inside their folders
            (a run's TensorBoard folder, ``DIR/<run name>``, could be it or hold it).
        on_note: Called with one sentence for a run a tracker could not take, or that
            TensorBoard shows together with another folder's run of the same name.

    Raises:
        ValueError: For a missing package (naming its extra), a tracker folder inside
            ``outside`` or holding it, or an MLflow store that cannot be opened.
    """
    for flag, package, missing in (
        (tensorboard, "tensorboard", tensorboard_log.MISSING),
        (mlflow, "mlflow", mlflow_log.MISSING),
    ):
        if flag is not None:
            _require(package, missing)
    uri = None if mlflow is None else mlflow_log.tracking_uri(mlflow)
    store = None if uri is None else mlflow_log.local_store(uri)
    given = (("--tensorboard", tensorboard, tensorboard), ("--mlflow", mlflow, store))
    for option, typed, folder in given:
        if folder is None or outside is None:
            continue
        if _inside(folder, outside):
            raise ValueError(
                f"{option} {typed} is inside the output folder {outside}, which holds only "
                "the files of hfft's runs; choose a folder outside it"
            )
        if _inside(outside, folder):  # run names are folders under DIR: one could be --out
            raise ValueError(
                f"{option} {typed} holds the output folder {outside}; the trackers' files "
                "and the runs' must not share folders, so choose a folder beside it"
            )
    opened = None if uri is None else mlflow_log.MLflowLog(uri, experiment)
    return Trackers(tensorboard, opened, on_note)


def _inside(folder: Path, out: Path) -> bool:
    folder, out = folder.resolve(), out.resolve()
    return folder == out or out in folder.parents


def _require(package: str, missing: str) -> None:
    """Import a tracker's package, or say which extra installs it (one sentence)."""
    import importlib

    try:
        importlib.import_module(package)
    except ImportError:
        raise ValueError(missing) from None
