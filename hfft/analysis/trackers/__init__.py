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

        A tracker that fails (a full disk, a server gone) is one note, and the next
        run is logged all the same: the run's own files are written, and a rerun of
        the command logs what is missing.
        """
        run = read_run(name, folder)
        if run is None:
            return
        if self.tensorboard is not None:
            try:
                tensorboard_log.log_run(run, self.tensorboard)
            except OSError as err:
                self._note(f"TensorBoard did not get run {name}: {err}")
        if self.mlflow is not None:
            try:
                self.mlflow.log_run(run)
            except OSError as err:
                self._note(f"MLflow did not get run {name}: {err}")

    def _note(self, line: str) -> None:
        if self.on_note is not None:
            self.on_note(f"{line} (a rerun of the command logs it)")


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
            (hfft refuses files it did not write there).
        on_note: Called with one sentence for a run a tracker could not take.

    Raises:
        ValueError: For a missing package (naming its extra), a tracker folder inside
            ``outside``, or an MLflow store that cannot be opened.
    """
    if tensorboard is not None:
        tensorboard_log.require()
    if mlflow is not None:
        mlflow_log.require()
    uri = None if mlflow is None else mlflow_log.tracking_uri(mlflow)
    store = None if uri is None else mlflow_log.local_store(uri)
    for option, folder in (("--tensorboard", tensorboard), ("--mlflow", store)):
        if folder is not None and outside is not None and _inside(folder, outside):
            raise ValueError(
                f"{option} {folder} is inside the output folder {outside}, which holds only "
                "the files of hfft's runs; choose a folder outside it"
            )
    opened = None if uri is None else mlflow_log.MLflowLog(uri, experiment)
    return Trackers(tensorboard, opened, on_note)


def _inside(folder: Path, out: Path) -> bool:
    folder, out = folder.resolve(), out.resolve()
    return folder == out or out in folder.parents
