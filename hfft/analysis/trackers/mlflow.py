"""Runs as MLflow runs (``--mlflow URI``).

One MLflow run per hfft run, named as in TensorBoard
(``ckpt-10/hf:m=2048/seed-3``), in the experiment of the command (a
comparison's or study's folder name, ``hfft`` for ``train`` and
``finetune``, so that single runs sit side by side; on the command line
``MLFLOW_EXPERIMENT_NAME`` overrides it). Parameters: the strategy's label and every option it ran
with (given, or its declared default), the seed, the budget, the
checkpoint and its hyperparameters (a training: its configuration).
Metrics: every evaluation's, by its name in the record (``test_accuracy``),
at step = the budget fraction in per mille (a training's: the epoch), and
the clock's ``seconds`` as a metric of its own; each value's timestamp is
the run's start plus its seconds, so that MLflow's relative time reads the
clock too. Tags: ``status``, ``hfft.record`` (the record's SHA-256: a
record already in the experiment is not logged again) and ``hfft.folder``.
Artifacts: the record and the final weights.

Shards sharing an experiment log each run once: right before creating a run
the experiment is asked whether another process logged that record since,
and a local store is locked while one checks and logs (a server has no lock:
two shards that log the same record at the same moment can still both log it).
Every call gives up after one retry and 20 seconds per request
(:data:`LIMITS`; the user's own settings hold), so a server gone
mid-comparison costs each run seconds, not MLflow's minutes of retries.

A folder or a ``file:`` URI is MLflow's local file store, which needs no
server; MLflow 3 keeps it only for those who opt in
(``MLFLOW_ALLOW_FILE_STORE``), which hfft does for its own calls when the
URI names one. MLflow's own prints go to stderr, never into ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hfft.analysis.trackers.run_record import RunRecord

__all__ = ["LIMITS", "MISSING", "MLflowLog", "tracking_uri"]

MISSING = "--mlflow needs the mlflow extra: pip install 'hfft[mlflow]'"
LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""MLflow's settings around each of hfft's calls (unless the user set them): a server that
does not answer is said in seconds, not after minutes of retries."""


def tracking_uri(text: str) -> str:
    """A tracking URI as given (``http://…``, ``sqlite:///…``, ``databricks``), a folder or
    a relative ``file:`` URI as an absolute ``file://`` URI."""
    if text.startswith("file:") and not text.startswith("file:/"):
        return Path(text[len("file:") :]).resolve().as_uri()
    if text == "databricks" or re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", text):
        return text
    return Path(text).expanduser().resolve().as_uri()


def local_store(uri: str) -> Path | None:
    """The folder of a ``file:`` store (``None``: not a local folder)."""
    if not uri.startswith("file:"):
        return None
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


class MLflowLog:
    """An experiment of an MLflow tracking store, opened once for a command.

    Raises:
        ValueError: When the store cannot be opened (a bad URI, a server that does not
            answer, a deleted experiment of that name): before any run.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment, self.store = uri, experiment, local_store(uri)
        try:
            with self._quiet():
                self.client = MlflowClient(tracking_uri=uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is not None and found.lifecycle_stage == "deleted":
                    raise ValueError(
                        f"--mlflow {uri}: the experiment {experiment!r} was deleted; restore it "
                        "(mlflow experiments restore) or delete it for good (mlflow gc)"
                    )
                self.experiment_id = (
                    found.experiment_id if found else self.client.create_experiment(experiment)
                )
                self._refresh()
        except MlflowException as err:
            raise ValueError(f"--mlflow {uri}: {_first_sentence(err.message)}") from None

    def log_run(self, run: RunRecord) -> bool:
        """Log ``run`` as an MLflow run: ``False`` when its record is in the experiment already.

        Raises:
            OSError: When the store refuses it or cannot be reached.
        """
        from mlflow.exceptions import MlflowException

        try:
            with self._quiet(), self._locked():
                if self._logged(run.digest):
                    return False
                self._log(run)
        except MlflowException as err:
            raise OSError(_first_sentence(err.message)) from None
        self.digests.add(run.digest)
        return True

    def _log(self, run: RunRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        start = now - round(1000 * run.seconds)  # the clock's 0: relative time reads the clock
        status = str(run.record.get("status"))
        tags = {"status": status, "hfft.folder": str(run.folder.resolve())}
        created = self.client.create_run(self.experiment_id, start, tags, run_name=run.name)
        run_id = created.info.run_id
        try:
            params = [Param(k, v) for k, v in parameters(run).items()]
            metrics = [
                Metric(key, value, start + round(1000 * point.seconds), point.x)
                for point in run.points()
                for key, value in {**point.values, "seconds": point.seconds}.items()
            ]
            for i in range(0, len(params), 100):  # MLflow's limits per batch
                self.client.log_batch(run_id, params=params[i : i + 100])
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
            for path in (run.record_file, run.weights):
                if path is not None:
                    self.client.log_artifact(run_id, str(path))
            # last: a run cut short on the way is not taken for logged
            self.client.log_batch(run_id, tags=[RunTag("hfft.record", run.digest)])
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED", end_time=now)

    def _logged(self, digest: str) -> bool:
        """Whether a run of this record is in the experiment: asked again right before one
        is created (another process, a shard, may have logged it since it was opened)."""
        if digest not in self.digests:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`hfft.record` = '{digest}'",
                max_results=1,
            )
            if found:
                self.digests.add(digest)
        return digest in self.digests

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """A local store locked (shards sharing it check and log one at a time)."""
        from hfft.experiment.run.run_folder import locked_folder

        with locked_folder(self.store, wait=True) if self.store else contextlib.nullcontext():
            yield

    def _refresh(self) -> None:
        """Read the records logged in the experiment (once, when it is opened)."""
        self.digests: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            self.digests |= {r.data.tags.get("hfft.record", "") for r in page}
            token = page.token
            if not token:
                break

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """MLflow's calls, its prints ("View run …") kept off stdout, its local file store
        allowed for a ``file:`` URI, and :data:`LIMITS` where the user has not set them."""
        wanted = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", **LIMITS}
        if self.uri.startswith("file:"):
            wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
        added = [k for k in wanted if k not in os.environ]  # the user's own setting holds
        os.environ.update({k: wanted[k] for k in added})
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            for key in added:
                os.environ.pop(key, None)


def parameters(run: RunRecord) -> dict[str, str]:
    """A run's parameters in MLflow: what it ran with, as text."""
    record = run.record
    if run.is_training:
        config = record.get("config", {})
        keys = ["model", "data", "epochs", "lr", "batch_size", "momentum", "weight_decay"]
        keys += ["checkpoints", "seed", "augment", "device", "task", "loss", "metric"]
        found = {k: config.get(k) for k in keys}
        found["model_args"] = config.get("model_args") or None
        return _text(found)
    source, budget = record.get("source", {}), record.get("budget", {})
    found = {
        "strategy": record.get("strategy"),
        **strategy_options(str(record.get("strategy"))),
        "seed": record.get("seed"),
        "budget": budget.get("requested"),
        "budget.kind": budget.get("kind"),
        "budget.limit": budget.get("limit"),
        "checkpoint": source.get("checkpoint"),
        "model": source.get("model"),
        "data": source.get("data"),
        "lr": source.get("lr"),
        "batch_size": source.get("batch_size"),
        "momentum": source.get("momentum"),
        "weight_decay": source.get("weight_decay"),
        "eval_points": record.get("config", {}).get("eval_points"),
        "eval_batch_size": record.get("config", {}).get("eval_batch_size"),
        "device": record.get("device"),
    }
    return _text(found)


def strategy_options(label: str) -> dict[str, Any]:
    """``strategy.<option>`` for every option the strategy ran with: given, else its declared
    default (none where the default comes from the checkpoint or the data); nothing for a
    strategy this process does not know."""
    from hfft.experiment.strategies.registry import canonical_label, parse_strategy

    try:
        strategy = parse_strategy(str(canonical_label(label)))
    except ValueError:
        return {}
    found = {"strategy.name": strategy.name}
    found.update({f"strategy.{k}": strategy.get(k) for k in strategy.entry.options})
    return found


def _text(values: Mapping[str, Any]) -> dict[str, str]:
    """The values given (``None`` left out) as MLflow's parameters: text (objects as JSON)."""
    return {
        k: json.dumps(v) if isinstance(v, dict | list) else str(v)
        for k, v in values.items()
        if v is not None
    }


def _first_sentence(message: str) -> str:
    """MLflow's message in one sentence (a server out of reach: said so, without the
    retries' details)."""
    if "Max retries exceeded" in message:
        return "no MLflow server answered there"
    line = message.strip().splitlines()[0] if message.strip() else "MLflow failed"
    return line.split(". ")[0].rstrip(".")
