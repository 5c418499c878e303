"""--tensorboard and --mlflow: what TensorBoard's event reader and MLflow's client read back
is what metrics.json and run.json say; run names overlay; reuse is unchanged; a missing
package, or a tracker folder that overlaps --out, is one sentence; another folder's run of
the same name is kept; a tracker that fails is one note; shards log a run once."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hfft.analysis.trackers import mlflow as mlflow_log
from hfft.analysis.trackers import open_trackers
from hfft.analysis.trackers import tensorboard as tensorboard_log
from hfft.analysis.trackers.mlflow import MLflowLog, tracking_uri
from hfft.analysis.trackers.tensorboard import run_folder, tag
from hfft.cli import app
from hfft.experiment.run.evaluations_csv import CSV_NAME, split_metric
from hfft.experiment.run.run_folder import locked_folder

runner = CliRunner()
HF_SMALL = "hf:m=256,cg_max_iter=20"


@pytest.fixture(autouse=True)
def _file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow 3 opens a local file store only when asked to (hfft asks for its own calls;
    # the tests' client asks here)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def _scalars(folder: Path) -> dict[str, list[Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {t: events.Scalars(t) for t in events.Tags()["scalars"]}


def _client(store: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.as_uri())


def _all_runs(store: Path, experiment: str) -> list[Any]:
    client = _client(store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return list(client.search_runs([found.experiment_id]))


def _runs(store: Path, experiment: str) -> dict[str, Any]:
    return {r.info.run_name: r for r in _all_runs(store, experiment)}


def _metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if split_metric(k) and v is not None}


@pytest.fixture(scope="module")
def hf_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One HF fine-tuning run through the command line, to both trackers, with --json."""
    base = tmp_path_factory.mktemp("tracked")
    out, tb, store = base / "ft-hf", base / "tb", base / "mlruns"
    result = runner.invoke(
        app,
        [
            *("finetune", str(trained_run / "ckpt-02.safetensors"), "--strategy", HF_SMALL),
            *("--budget", "3steps", "--eval-points", "4", "--eval-batch-size", "256"),
            *("--out", str(out), "--tensorboard", str(tb), "--mlflow", str(store), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # MLflow printed nothing into it
    log = json.loads((out / "metrics.json").read_text())
    return {"out": out, "tb": tb, "store": store, "log": log, "printed": printed}


@pytest.mark.slow
def test_tensorboard_holds_every_evaluation_by_budget_per_mille_and_clock_seconds(
    hf_run: dict[str, Any],
) -> None:
    scalars = _scalars(hf_run["tb"] / "ft-hf")
    evaluations = hf_run["log"]["evaluations"]
    assert len(evaluations) >= 3
    keys = {k for e in evaluations for k in _metrics(e)}
    assert {"test_accuracy", "valid_loss", "train_eval_loss"} <= keys
    assert {t for t in scalars if not t.startswith("hf/")} == {tag(k) for k in keys}
    assert tag("test_accuracy") == "test/accuracy"
    for key in keys:
        logged = scalars[tag(key)]
        expected = [e for e in evaluations if e.get(key) is not None]
        assert [s.step for s in logged] == [round(1000 * e["fraction"]) for e in expected]
        assert [s.wall_time for s in logged] == [e["seconds"] for e in expected]
        assert [s.value for s in logged] == pytest.approx([e[key] for e in expected], rel=1e-6)
    assert scalars["test/accuracy"][0].step == 0 and scalars["test/accuracy"][-1].step == 1000


@pytest.mark.slow
def test_an_hf_run_logs_damping_rho_cg_iterations_and_step_size_by_step(
    hf_run: dict[str, Any],
) -> None:
    scalars = _scalars(hf_run["tb"] / "ft-hf")
    steps = hf_run["log"]["steps"]
    assert len(steps) == 3
    for field in ("damping", "rho", "cg_iterations", "alpha"):
        logged = scalars[f"hf/{field}"]
        expected = [(n, s) for n, s in enumerate(steps, start=1) if s[field] is not None]
        assert [e.step for e in logged] == [n for n, _ in expected]
        assert [e.wall_time for e in logged] == [s["seconds"] for _, s in expected]
        assert [e.value for e in logged] == pytest.approx([s[field] for _, s in expected])


@pytest.mark.slow
def test_mlflow_holds_the_options_the_evaluations_and_the_final_weights(
    hf_run: dict[str, Any],
) -> None:
    log, out = hf_run["log"], hf_run["out"]
    (run,) = _runs(hf_run["store"], "hfft").values()
    assert run.info.run_name == "ft-hf" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["strategy"] == log["strategy"] == HF_SMALL
    assert params["strategy.m"] == "256" and params["strategy.cg_max_iter"] == "20"
    assert params["strategy.damping"] == "1.0"  # a default, as the run had it
    assert params["seed"] == "0" and params["budget"] == "3steps"
    assert params["checkpoint"] == log["source"]["checkpoint"]
    tags = run.data.tags
    assert tags["status"] == "completed"
    assert tags["hfft.record"] == hashlib.sha256((out / "metrics.json").read_bytes()).hexdigest()
    client = _client(hf_run["store"])
    evaluations = log["evaluations"]
    for key in {k for e in evaluations for k in _metrics(e)} | {"seconds"}:
        history = client.get_metric_history(run.info.run_id, key)
        expected = [e for e in evaluations if e.get(key) is not None]
        assert [m.step for m in history] == [round(1000 * e["fraction"]) for e in expected]
        assert [m.value for m in history] == [e[key] for e in expected]
        # relative time reads the clock
        starts = [m.timestamp - run.info.start_time for m in history]
        assert starts == [round(1000 * e["seconds"]) for e in expected]
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"final.safetensors", "metrics.json"}


def test_a_training_logs_its_epochs_to_both(trained_run: Path, tmp_path: Path) -> None:
    manifest = json.loads((trained_run / "run.json").read_text())
    store = tmp_path / "mlruns"
    log = open_trackers(tmp_path / "tb", str(store), "studies").log
    log("train", trained_run)
    scalars = _scalars(tmp_path / "tb" / "train")
    epochs = manifest["epochs"]
    assert [s.step for s in scalars["train_batch/loss"]] == [e["epoch"] for e in epochs]
    # the tags are evaluations.csv's split/metric, read by the same function
    with (trained_run / CSV_NAME).open() as table:
        named = {f"{row['split']}/{row['metric']}" for row in csv.DictReader(table)}
    assert set(scalars) == named
    assert [s.wall_time for s in scalars["valid/accuracy"]] == [
        e["elapsed_seconds"] for e in epochs
    ]
    assert [s.value for s in scalars["test/loss"]] == pytest.approx(
        [e["test_loss"] for e in epochs], rel=1e-6
    )
    run = _runs(store, "studies")["train"]
    assert run.data.params["model"] == "mlp" and run.data.params["epochs"] == "4"
    history = _client(store).get_metric_history(run.info.run_id, "valid_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (e["epoch"], e["valid_accuracy"]) for e in epochs
    ]
    last = manifest["checkpoints"][-1]["path"]
    assert {f.path for f in _client(store).list_artifacts(run.info.run_id)} == {last, "run.json"}


@pytest.mark.slow
def test_a_record_is_logged_once_and_a_redone_run_replaces_its_events(
    hf_run: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(hf_run["out"], folder)
    tb, store = tmp_path / "tb", tmp_path / "mlruns"
    log = open_trackers(tb, str(store), "again").log
    log("r", folder)
    log("r", folder)  # the same record: nothing new
    events = list((tb / "r").iterdir())
    assert len(events) == 1 and len(_all_runs(store, "again")) == 1
    record = json.loads((folder / "metrics.json").read_text())
    record["final"]["test_accuracy"] = record["evaluations"][-1]["test_accuracy"] = 0.125
    (folder / "metrics.json").write_text(json.dumps(record))
    open_trackers(tb, str(store), "again").log("r", folder)  # a run redone since
    (event,) = list((tb / "r").iterdir())
    assert event != events[0]
    assert _scalars(tb / "r")["test/accuracy"][-1].value == 0.125
    assert len(_all_runs(store, "again")) == 2  # MLflow keeps the earlier run


@pytest.mark.slow
def test_compare_runs_overlay_by_checkpoint_strategy_and_seed_and_reuse_is_unchanged(
    trained_run: Path, tmp_path: Path
) -> None:
    out, tb, store = tmp_path / "cmp", tmp_path / "tb", tmp_path / "mlruns"
    argv = [
        *("compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "-s", HF_SMALL),
        *("--seeds", "1", "--budget", "3steps", "--eval-points", "2", "--eval-batch-size", "256"),
        *("--out", str(out), "--quiet"),
    ]
    assert runner.invoke(app, argv).exit_code == 0
    records = sorted(out.glob("ckpt-02/*/seed-0/metrics.json"))
    written = [p.stat().st_mtime_ns for p in records]
    # the trackers join a comparison that has run: every run is reused, and logged
    tracked = [*argv, "--tensorboard", str(tb), "--mlflow", str(store)]
    for _ in range(2):  # the second time, nothing is logged again
        result = runner.invoke(app, tracked)
        assert result.exit_code == 0, result.output
        assert [p.stat().st_mtime_ns for p in records] == written
        names = {p.parent.relative_to(tb).as_posix() for p in tb.rglob("events.out.*")}
        assert names == {"ckpt-02/sgd/seed-0", f"ckpt-02/{HF_SMALL}/seed-0"}
        assert len(list(tb.rglob("events.out.*"))) == 2
        assert sorted(r.info.run_name for r in _all_runs(store, "cmp")) == sorted(names)
    for record in records:  # each run's events are its own metrics.json's
        log = json.loads(record.read_text())
        name = f"ckpt-02/{log['strategy']}/seed-0"
        logged = [s.value for s in _scalars(tb / name)["test/accuracy"]]
        assert logged == pytest.approx([e["test_accuracy"] for e in log["evaluations"]])


@pytest.mark.parametrize(
    ("option", "package"), [("--tensorboard", "tensorboard"), ("--mlflow", "mlflow")]
)
def test_a_missing_package_is_one_sentence_naming_the_extra_before_any_work(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    out = tmp_path / "ft"
    argv = ["finetune", str(trained_run / "ckpt-02.safetensors"), "--budget", "2steps"]
    result = runner.invoke(app, [*argv, "--out", str(out), option, str(tmp_path / "t")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"hfft: error: {option} needs the {package} extra: pip install 'hfft[{package}]'.\n"
    )
    assert not out.exists() and not (tmp_path / "t").exists()


def test_a_tracker_folder_inside_the_output_folder_is_refused(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "sgd", "--out", str(out)]
    result = runner.invoke(app, [*argv, "--tensorboard", str(out / "tb")])
    assert result.exit_code == 2
    assert "--tensorboard" in result.stderr and "choose a folder outside it" in result.stderr
    assert not out.exists()


def test_run_names_become_folders_tensorboard_reads() -> None:
    assert run_folder(Path("tb"), "ckpt-10/hf:m=2048,damping=0.5/seed-3") == Path(
        "tb/ckpt-10/hf:m=2048,damping=0.5/seed-3"
    )
    assert run_folder(Path("tb"), "a b/../seed-0") == Path("tb/a_b/_/seed-0")
    assert tag("train_eval_loss") == "train_eval/loss"
    assert tag("train_batch_loss") == "train_batch/loss"
    assert tag("epoch_seconds") == "epoch_seconds"  # no split's metric: as it is


def test_a_folder_or_relative_file_uri_is_a_local_store(tmp_path: Path) -> None:
    assert tracking_uri(str(tmp_path / "mlruns")) == (tmp_path / "mlruns").as_uri()
    assert tracking_uri("file:./mlruns") == (Path.cwd() / "mlruns").as_uri()
    for uri in ("http://localhost:5000", "sqlite:///mlflow.db", "databricks", "file:///x"):
        assert tracking_uri(uri) == uri


def _record(folder: Path, accuracy: float) -> Path:
    """A fine-tuning record of two evaluations, the last at ``accuracy`` (TensorBoard reads
    no more)."""
    folder.mkdir(parents=True, exist_ok=True)
    evaluations = [
        {"fraction": 0.0, "seconds": 0.0, "step": 0, "test_accuracy": 0.5},
        {"fraction": 1.0, "seconds": 2.0, "step": 3, "test_accuracy": accuracy},
    ]
    record = {"kind": "hfft-finetune", "status": "completed", "evaluations": evaluations}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def _events(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("train", "--tensorboard"),  # DIR/<out's name> would be --out itself
        ("compare", "--tensorboard"),  # DIR/<checkpoint>/… could be, or hold, --out
        ("finetune", "--mlflow"),  # MLflow reads every folder of its store
    ],
)
def test_a_tracker_folder_that_holds_the_output_folder_is_refused(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, option: str
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = str(trained_run / "ckpt-02.safetensors")
    argv = {
        "train": ["train", "mlp", "--data", "digits", "--epochs", "2", "--checkpoints", "1"],
        "compare": ["compare", checkpoint, "-s", "sgd", "--seeds", "1"],
        "finetune": ["finetune", checkpoint, "--budget", "2steps"],
    }[command]
    result = runner.invoke(app, [*argv, "--out", "tbp/d", option, "tbp"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"hfft: error: {option} tbp holds the output folder tbp/d; the trackers' files and "
        "the runs' must not share folders, so choose a folder beside it.\n"
    )
    assert not (tmp_path / "tbp").exists()


def test_a_bad_setting_is_refused_before_the_trackers_open(
    trained_run: Path, tmp_path: Path
) -> None:
    store, tb = tmp_path / "mlruns", tmp_path / "tb"
    argv = ["compare", str(trained_run / "ckpt-02.safetensors"), "-s", "nosuch"]
    trackers = ["--tensorboard", str(tb), "--mlflow", str(store)]
    result = runner.invoke(app, [*argv, "--out", str(tmp_path / "cmp"), *trackers])
    assert result.exit_code == 2 and "unknown strategy 'nosuch'" in result.stderr
    assert not store.exists() and not tb.exists()  # no empty experiment left behind


def test_another_folders_run_of_the_same_name_is_kept_and_said(tmp_path: Path) -> None:
    first = _record(tmp_path / "ft" / "sgd" / "seed-0", 0.75)
    second = _record(tmp_path / "ft" / "sgd-cosine" / "seed-0", 0.875)
    tb, notes = tmp_path / "tb", []
    log = open_trackers(tb, None, "hfft", on_note=notes.append).log
    log("seed-0", first)
    (kept,) = _events(tb / "seed-0")
    log("seed-0", second)  # lone runs: both named after their folder, seed-0
    assert kept in _events(tb / "seed-0") and len(_events(tb / "seed-0")) == 2
    assert len(notes) == 1
    assert notes[0].startswith(f"TensorBoard shows run seed-0 ({second}) in {tb / 'seed-0'}")
    for folder in (first, second):  # each record once
        log("seed-0", folder)
    assert len(_events(tb / "seed-0")) == 2 and len(notes) == 1
    _record(first, 0.625)  # the first run redone: its own events replaced, the other's kept
    log("seed-0", first)
    events = _events(tb / "seed-0")
    assert kept not in events and len(events) == 2
    values = sorted(s.value for s in _scalars(tb / "seed-0")["test/accuracy"] if s.step == 1000)
    assert values == [0.625, 0.875]


def test_only_this_runs_own_event_files_are_ever_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own event files and other files under the run's name survive both a
    replacement (the run redone) and a write that fails halfway."""
    from torch.utils.tensorboard import SummaryWriter

    folder = _record(tmp_path / "ft" / "seed-0", 0.75)
    tb = tmp_path / "tb"
    strangers = [tb / "seed-0" / "events.out.tfevents.1.host.0", tb / "seed-0" / "notes.txt"]
    strangers.append(tb / "seed-0" / "events.out.tfevents.2.host.0.hfft-not-a-mark")
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the user's")
    log = open_trackers(tb, None, "hfft").log
    log("seed-0", folder)
    _record(folder, 0.625)  # redone: its earlier events are replaced
    log("seed-0", folder)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    _record(folder, 0.5)
    notes: list[str] = []
    open_trackers(tb, None, "hfft", on_note=notes.append).log("seed-0", folder)
    assert len(notes) == 1  # the failed write is one note
    assert all(path.read_bytes() == b"the user's" for path in strangers)
    ours = [p for p in _events(tb / "seed-0") if p not in strangers]
    assert len(ours) == 1  # the run's last complete events, nothing of the failed write
    assert _scalars(tb / "seed-0")["test/accuracy"][-1].value == 0.625


def test_a_tracker_that_fails_is_one_note_and_the_next_run_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tb, notes = tmp_path / "tb", []
    log = open_trackers(tb, str(tmp_path / "mlruns"), "hfft", on_note=notes.append).log
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metrics.json").write_text('{"kind": "hfft-fine')  # cut short
    log("corrupt", corrupt)
    assert notes == [
        f"the trackers did not get run corrupt: {corrupt / 'metrics.json'} is not JSON "
        "(Unterminated string starting at: line 1 column 10 (char 9)) (a rerun of the "
        "command logs it)"
    ]

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("a tracker's bug")

    with monkeypatch.context() as patched:
        patched.setattr(tensorboard_log, "log_run", broken)
        patched.setattr(MLflowLog, "log_run", lambda self, run: {}["hfft.record"])
        log("a", _record(tmp_path / "a", 0.75))  # both fail: one note
    assert notes[1:] == [
        "TensorBoard and MLflow did not get run a: RuntimeError: a tracker's bug; "
        "KeyError: 'hfft.record' (a rerun of the command logs it)"
    ]
    log("b", _record(tmp_path / "b", 0.875))  # the next run is logged
    assert _scalars(tb / "b")["test/accuracy"][-1].value == 0.875
    assert set(_runs(tmp_path / "mlruns", "hfft")) == {"b"} and len(notes) == 2


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_shards_sharing_a_tensorboard_folder_or_local_store_log_under_its_lock(
    tmp_path: Path, tracker: str
) -> None:
    folder, tb, store = _record(tmp_path / "run", 0.75), tmp_path / "tb", tmp_path / "mlruns"
    if tracker == "tensorboard":
        log, shared = open_trackers(tb, None, "cmp").log, tb
    else:
        log, shared = open_trackers(None, str(store), "cmp").log, store
    with locked_folder(shared):  # another shard checking or writing
        writer = threading.Thread(target=log, args=("r", folder))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive()  # waits for it
        assert not (_events(tb / "r") if tracker == "tensorboard" else _all_runs(store, "cmp"))
    writer.join(timeout=30)
    assert len(_events(tb / "r") if tracker == "tensorboard" else _all_runs(store, "cmp")) == 1


def test_a_run_another_shard_logged_since_is_not_logged_again(tmp_path: Path) -> None:
    folder, store = _record(tmp_path / "run", 0.75), tmp_path / "mlruns"
    shards = [open_trackers(None, str(store), "cmp") for _ in range(2)]  # both opened first
    shards[0].log("r", folder)
    shards[1].log("r", folder)  # asks the experiment again right before creating a run
    assert len(_all_runs(store, "cmp")) == 1


def test_every_mlflow_call_gives_up_after_one_retry_and_twenty_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in mlflow_log.LIMITS:
        monkeypatch.delenv(key, raising=False)
    trackers = open_trackers(None, str(tmp_path / "mlruns"), "cmp")
    assert trackers.mlflow is not None
    client, seen = trackers.mlflow.client, []
    create_run = client.create_run

    def spied(*args: Any, **kwargs: Any) -> Any:
        seen.append({key: os.environ.get(key) for key in mlflow_log.LIMITS})
        return create_run(*args, **kwargs)

    monkeypatch.setattr(client, "create_run", spied)
    trackers.log("r", _record(tmp_path / "run", 0.75))
    assert seen == [{"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}]
    assert not set(mlflow_log.LIMITS) & set(os.environ)  # set for hfft's calls alone
