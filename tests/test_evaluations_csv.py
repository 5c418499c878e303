"""evaluations.csv: every run's evaluations as a long table that agrees with its JSON record."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from hfft._io import sha256_file
from hfft.analysis.compare import CompareConfig, compare, run_directory
from hfft.experiment.interrupts import Interrupted
from hfft.experiment.run.evaluations_csv import (
    COLUMNS,
    CSV_NAME,
    SPLITS,
    TRAINING_STRATEGY,
    finetune_rows,
    train_rows,
    write_evaluations,
)
from hfft.experiment.run.finetune import FinetuneConfig, finetune
from hfft.experiment.run.ownership import first_foreign

DOCS = Path(__file__).resolve().parents[1] / "docs" / "records.md"


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def _record_values(entries: list[dict[str, Any]], where: tuple[str, str, str]) -> list[tuple]:
    """Every ``{split}_{metric}`` of the entries, with the entry's position: what the table
    must hold, in order (``None`` for ``null``)."""
    out = []
    for entry in entries:
        for key, value in entry.items():
            split = next((s for s in SPLITS if key.startswith(s + "_")), None)
            if split is not None:
                position = tuple(entry[k] for k in where)
                out.append((*position, split, key[len(split) + 1 :], value))
    return out


def _table_values(rows: list[dict[str, str]]) -> list[tuple]:
    return [
        (
            _number(r["budget_fraction"]),
            _number(r["seconds"]),
            int(r["step"]),
            r["split"],
            r["metric"],
            _number(r["value"]),
        )
        for r in rows
    ]


def _agrees_with_finetune(rows: list[dict[str, str]], log: dict[str, Any], **named: str) -> None:
    """The rows of one run hold its ``metrics.json`` evaluations value for value."""
    assert rows and {r["strategy"] for r in rows} == {log["strategy"]}
    assert {r["seed"] for r in rows} == {str(log["seed"])}
    for column, value in named.items():
        assert {r[column] for r in rows} == {value}
    expected = _record_values(log["evaluations"], ("fraction", "seconds", "step"))
    assert _table_values(rows) == expected


# --- the rows of a record, without a run -------------------------------------------------


def test_rows_split_each_key_and_keep_nulls_empty(tmp_path: Path) -> None:
    log = {
        "strategy": "hf:m=64,damping=0.5",
        "seed": 3,
        "config": {"out": "some/where/ft", "checkpoint": "runs/ckpt-02.safetensors"},
        "evaluations": [
            {"fraction": 0, "seconds": 0.0, "step": 0, "epochs": 0.0, "damping": 0.5,
             "train_eval_loss": 0.5, "train_eval_r2": None, "test_rmse": 0.25},
            {"fraction": 0.5, "seconds": 1.5, "step": 2, "lr": 0.1,
             "train_eval_loss": float("nan"), "train_eval_r2": 0.1, "test_rmse": 1 / 3},
        ],
    }  # fmt: skip
    rows = finetune_rows(log)
    assert [tuple(r) for r in rows] == [
        ("ft", "hf:m=64,damping=0.5", 3, "runs/ckpt-02.safetensors", 0.0, 0.0, 0,
         "train_eval", "loss", 0.5),
        ("ft", "hf:m=64,damping=0.5", 3, "runs/ckpt-02.safetensors", 0.0, 0.0, 0,
         "train_eval", "r2", None),
        ("ft", "hf:m=64,damping=0.5", 3, "runs/ckpt-02.safetensors", 0.0, 0.0, 0,
         "test", "rmse", 0.25),
        ("ft", "hf:m=64,damping=0.5", 3, "runs/ckpt-02.safetensors", 0.5, 1.5, 2,
         "train_eval", "loss", None),
        ("ft", "hf:m=64,damping=0.5", 3, "runs/ckpt-02.safetensors", 0.5, 1.5, 2,
         "train_eval", "r2", 0.1),
        ("ft", "hf:m=64,damping=0.5", 3, "runs/ckpt-02.safetensors", 0.5, 1.5, 2,
         "test", "rmse", 1 / 3),
    ]  # fmt: skip
    write_evaluations(tmp_path / CSV_NAME, rows)
    text = (tmp_path / CSV_NAME).read_text()
    assert text.splitlines()[:2] == [
        ",".join(COLUMNS),
        'ft,"hf:m=64,damping=0.5",3,runs/ckpt-02.safetensors,0.0,0.0,0,train_eval,loss,0.5',
    ]
    assert "nan" not in text.lower()
    read = _read(tmp_path / CSV_NAME)
    assert [r["value"] for r in read] == ["0.5", "", "0.25", "", "0.1", repr(1 / 3)]
    assert float(read[-1]["value"]) == 1 / 3  # the same float, read back


def test_a_trainings_rows_are_its_epochs() -> None:
    manifest = {
        "config": {"out": "runs/digits", "epochs": 4, "batch_size": 64, "seed": 7},
        "data": {"train_size": 1293},
        "epochs": [
            {"epoch": 1, "elapsed_seconds": 0.5, "epoch_seconds": 0.5,
             "train_batch_loss": 2.0, "valid_loss": None, "valid_accuracy": 0.25},
            {"epoch": 2, "elapsed_seconds": 1.25, "epoch_seconds": 0.75,
             "train_batch_loss": 1.0, "valid_loss": 0.5, "valid_accuracy": 0.75},
        ],
    }  # fmt: skip
    rows = train_rows(manifest)
    assert {(r.run, r.strategy, r.seed, r.checkpoint) for r in rows} == {
        ("digits", TRAINING_STRATEGY, 7, None)
    }
    assert [(r.budget_fraction, r.seconds, r.step, r.split, r.metric, r.value) for r in rows] == [
        (0.25, 0.5, 20, "train_batch", "loss", 2.0),
        (0.25, 0.5, 20, "valid", "loss", None),
        (0.25, 0.5, 20, "valid", "accuracy", 0.25),
        (0.5, 1.25, 40, "train_batch", "loss", 1.0),
        (0.5, 1.25, 40, "valid", "loss", 0.5),
        (0.5, 1.25, 40, "valid", "accuracy", 0.75),
    ]
    assert {r.run for r in train_rows(manifest, run="train")} == {"train"}


def test_the_splits_are_the_evaluated_ones_and_the_training_batches() -> None:
    from hfft.experiment.run.evaluation import SPLITS as EVALUATED

    assert set(SPLITS) == {*EVALUATED, "train_batch"}


# --- the files the commands write ----------------------------------------------------------


def _finetune(trained_run: Path, out: Path, **kw: Any) -> FinetuneConfig:
    base: dict[str, Any] = dict(
        checkpoint=str(trained_run / "ckpt-02.safetensors"),
        strategy="sgd",
        budget="3steps",
        out=str(out),
        eval_points=2,
    )
    return FinetuneConfig(**{**base, **kw})


def test_a_finetune_writes_its_evaluations_listed_and_owned(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    result = finetune(_finetune(trained_run, out))
    log = json.loads((out / "metrics.json").read_text())
    assert log["files"][CSV_NAME] == sha256_file(out / CSV_NAME)
    assert CSV_NAME in result.files
    checkpoint = str(trained_run / "ckpt-02.safetensors")
    _agrees_with_finetune(_read(out / CSV_NAME), log, run="ft", checkpoint=checkpoint)
    # another run with --overwrite replaces it with its own
    again = _finetune(trained_run, out, budget="4steps", strategy="sgd-cosine", overwrite=True)
    finetune(again)
    log = json.loads((out / "metrics.json").read_text())
    assert log["strategy"] == "sgd-cosine"
    _agrees_with_finetune(_read(out / CSV_NAME), log, run="ft")
    assert sorted(p.name for p in out.iterdir()) == sorted(["metrics.json", *log["files"]])
    assert first_foreign(tmp_path) is None


def test_an_interrupted_finetune_writes_what_its_metrics_hold(
    trained_run: Path, tmp_path: Path
) -> None:
    calls = {"n": 0}

    def stop(fraction: float, info: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    out = tmp_path / "ft"
    with pytest.raises(Interrupted):
        finetune(_finetune(trained_run, out, budget="500steps", eval_points=100), on_progress=stop)
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "interrupted" and CSV_NAME in log["files"]
    _agrees_with_finetune(_read(out / CSV_NAME), log)


def test_a_training_writes_its_epochs(trained_run: Path) -> None:
    manifest = json.loads((trained_run / "run.json").read_text())
    assert CSV_NAME in manifest["files"]
    rows = _read(trained_run / CSV_NAME)
    assert {(r["run"], r["strategy"], r["seed"], r["checkpoint"]) for r in rows} == {
        (trained_run.name, TRAINING_STRATEGY, str(manifest["config"]["seed"]), "")
    }
    per_epoch = manifest["data"]["train_size"] // manifest["config"]["batch_size"]
    epochs = [
        {**e, "at": e["epoch"] / manifest["config"]["epochs"], "step": e["epoch"] * per_epoch}
        for e in manifest["epochs"]
    ]
    assert _table_values(rows) == _record_values(epochs, ("at", "elapsed_seconds", "step"))
    assert {r["split"] for r in rows} == {"train_batch", "train_eval", "valid", "test"}


@pytest.fixture(scope="module")
def comparison(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> CompareConfig:
    config = CompareConfig(
        checkpoints=(str(trained_run / "ckpt-02.safetensors"),),
        strategies=("sgd", "sgd-cosine"),
        seeds=2,
        budget="3steps",
        out=str(tmp_path_factory.mktemp("cmp") / "cmp"),
        eval_points=3,
    )
    compare(config)
    return config


def _agrees_with_runs(table: Path, base: Path, summary: dict[str, Any], under: str = "") -> int:
    """Every run of a comparison is in ``table`` with its ``metrics.json``'s values; the
    rows counted."""
    rows = _read(table)
    counted = 0
    for run in summary["runs"]:
        folder = run_directory(Path(under), run["checkpoint"], run["strategy"], run["seed"])
        log = json.loads((base / folder / "metrics.json").read_text())
        mine = [r for r in rows if r["run"] == folder.as_posix()]
        _agrees_with_finetune(mine, log, checkpoint=run["checkpoint"])
        counted += len(mine)
    return counted


def test_a_comparison_writes_every_run_in_one_table(comparison: CompareConfig) -> None:
    out = Path(comparison.out)
    summary = json.loads((out / "compare.json").read_text())
    assert CSV_NAME in summary["files"] and len(summary["runs"]) == 4
    assert _agrees_with_runs(out / CSV_NAME, out, summary) == len(_read(out / CSV_NAME))
    assert first_foreign(out) is None
    # a damaged table of a run costs no run: it is written again from metrics.json
    victim = run_directory(out, "ckpt-02", "sgd-cosine", 1) / CSV_NAME
    intact = victim.read_bytes()
    victim.write_text("run,value\n")
    (run_directory(out, "ckpt-02", "sgd", 0) / CSV_NAME).unlink()
    again = compare(comparison)
    assert (again.ran, again.reused) == (0, 4)
    assert victim.read_bytes() == intact
    assert (run_directory(out, "ckpt-02", "sgd", 0) / CSV_NAME).is_file()


def test_the_docs_pandas_lines_run_on_a_comparison(
    comparison: CompareConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    text = DOCS.read_text()
    section = text[text.index("## evaluations.csv") : text.index("## metrics.json")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (tmp_path / "cmp").symlink_to(Path(comparison.out).resolve())
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    assert (tmp_path / "test-accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = scope["curves"]
    assert sorted(curves.columns) == ["sgd", "sgd-cosine"]
    assert curves.index[0] == 0.0 and curves.index[-1] == 1.0
    # pandas reads the columns with their types, an empty cell as NaN
    df = scope["df"]
    assert str(df["seed"].dtype) == "int64" and str(df["value"].dtype) == "float64"
    assert math.isclose(curves.iloc[0, 0], curves.iloc[0, 1])  # one checkpoint, one start
    assert isinstance(df, pd.DataFrame)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_a_study_writes_the_training_and_every_run_in_one_table(tmp_path: Path) -> None:
    from hfft.analysis.study import StudyConfig, study
    from hfft.experiment.run.train import TrainConfig

    train = TrainConfig.for_model(
        "mlp", data="digits", model_args={"width": 16}, epochs=2, lr=0.05, momentum=0.0,
        checkpoints=1, out=str(tmp_path / "unused"),
    )  # fmt: skip
    out = tmp_path / "study"
    result = study(
        StudyConfig(out=str(out), train=train, strategies=("sgd",), seeds=1, budget="2steps",
                    eval_points=1)
    )  # fmt: skip
    record = json.loads((out / "study.json").read_text())
    assert CSV_NAME in record["files"] and first_foreign(out) is None
    rows = _read(out / CSV_NAME)
    trained = [r for r in rows if r["run"] == "train"]
    assert trained == _read(out / "train" / CSV_NAME)  # its own folder is called train too
    counted = _agrees_with_runs(out / CSV_NAME, out, result.comparison.summary, under="runs")
    assert counted + len(trained) == len(rows)
