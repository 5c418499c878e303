"""hfft study and compare --shard: the protocol in one command, resumable, shared by processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hfft.analysis.compare import CompareConfig, Shard, compare, plan_runs, run_directory
from hfft.analysis.report import phases
from hfft.analysis.study import StudyConfig, figure1_strategies, study
from hfft.cli import app
from hfft.experiment.interrupts import Interrupted
from hfft.experiment.run.ownership import first_foreign
from hfft.experiment.run.run_folder import FolderBusy, FolderTaken, locked_folder
from hfft.experiment.run.train import TrainConfig, finished_run, train

runner = CliRunner()
HF = "hf:m=128,cg_max_iter=3"
SMALL = ("--seeds", "2", "--budget", "2steps", "--eval-points", "2")


@pytest.mark.parametrize(
    ("text", "index", "count"), [("0/2", 0, 2), ("3/4", 3, 4), ("none", 0, 0), (" None", 0, 0)]
)
def test_shard_parses(text: str, index: int, count: int) -> None:
    assert Shard.parse(text) == Shard(index, count)


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3", ""])
def test_shard_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="I/N"):
        Shard.parse(text)


def test_shards_divide_the_run_order() -> None:
    shards = [Shard(i, 3) for i in range(3)]
    for position in range(20):
        assert sum(s.takes(position) for s in shards) == 1
    assert not Shard(0, 0).takes(0)


def test_last_only_strategies_run_from_the_last_checkpoint_alone() -> None:
    config = CompareConfig(checkpoints=("a", "b", "c"), seeds=2, last_only=("swa",))
    order = plan_runs(config, ["sgd", "swa", "hf"])
    assert {(c, s) for c, k, s in order if k == 1} == {(2, 0), (2, 1)}
    assert len(order) == 3 * 2 * 2 + 2


def test_a_study_gives_its_comparison_the_held_out_seeds_and_the_target(tmp_path: Path) -> None:
    from hfft.analysis.study import _protocols

    config = StudyConfig(
        out=str(tmp_path / "s"), train_run=str(tmp_path / "t"), first_seed=5, target="98%"
    )
    manifest = {"data": {"train_size": 1293}, "checkpoints": [{"path": "ckpt-01.safetensors"}]}
    both = _protocols(config, tmp_path / "t", manifest)
    assert (both.seeds, both.first_seed, both.target) == (5, 5, "98%")
    labels = [s.label for s in both.strategies or ()]
    assert {seed for _, _, seed in plan_runs(both, labels)} == {5, 6, 7, 8, 9}


@pytest.mark.parametrize(
    ("kw", "says"),
    [({"target": "98 %%"}, "--target must be a number"), ({"first_seed": -1}, "--first-seed")],
    ids=["target", "first-seed"],
)
def test_a_study_refuses_a_bad_target_or_first_seed_before_training(
    tmp_path: Path, kw: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        StudyConfig(out=str(tmp_path / "s"), train_run=str(tmp_path / "t"), **kw)


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [
        (43_200, ["sgd", "hf:m=256", "hf:m=1024", "hf:m=2048", "hf:m=6144", "auto:m=256"]),
        (1293, ["sgd", "hf:m=256", "hf:m=512", "auto:m=256"]),
        (300, ["sgd", "hf:m=37", "hf:m=75", "hf:m=150", "auto:m=37"]),
    ],
)
def test_figure1_strategies_fit_the_data(n_train: int, expected: list[str]) -> None:
    assert [s.label for s in figure1_strategies(n_train)] == expected


def test_phases_split_the_checkpoints() -> None:
    assert phases(["a"]) == {"late": ["a"]}
    assert phases(["a", "b"]) == {"early": ["a"], "late": ["b"]}
    split = phases([str(i) for i in range(10)])
    assert [len(v) for v in split.values()] == [4, 3, 3] and list(split) == list(
        ("early", "middle", "late")
    )


def test_shard_refuses_overwrite(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--overwrite"):
        CompareConfig(checkpoints=("a",), shard=Shard(0, 2), overwrite=True)


def _base(trained_run: Path, tmp_path: Path) -> dict[str, Any]:
    return dict(checkpoints=(str(trained_run / "ckpt-02.safetensors"),),
                strategies=("sgd", "sgd-div10"), seeds=2, budget="2steps",
                out=str(tmp_path / "cmp"), eval_points=1)  # fmt: skip


def test_shards_of_another_comparison_and_plain_runs_beside_shards_are_refused(
    trained_run: Path, tmp_path: Path
) -> None:
    base = _base(trained_run, tmp_path)
    first = compare(CompareConfig(**base, shard=Shard(0, 2)))
    assert not first.assembled
    held, release = threading.Event(), threading.Event()

    def another_shard() -> None:  # holds the shared lock, as a running shard does
        with locked_folder(tmp_path / "cmp", shared=True):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=another_shard)
    holder.start()
    held.wait(30)
    try:
        # joining them with other seeds would give the run order another meaning
        with pytest.raises(FolderTaken, match="another comparison"):
            compare(CompareConfig(**{**base, "seeds": 3}, shard=Shard(1, 2)))
        # a plain comparison cannot start beside them, and --shard none is refused
        with pytest.raises(FolderBusy):
            compare(CompareConfig(**base))
        with pytest.raises(FolderBusy, match="another hfft process holds"):
            compare(CompareConfig(**base, shard=Shard(0, 0)))
        # a shard of the same comparison joins them and runs its share; with every run
        # there it waits for the other to let go and assembles, so the ranking is written
        # even when the holder never does
        threading.Timer(1.0, release.set).start()
        joined = compare(CompareConfig(**base, shard=Shard(1, 2)))
    finally:
        release.set()
        holder.join()
    assert (joined.ran, joined.assembled, joined.missing) == (2, True, [])
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["status"] == "completed"
    # a plain comparison meeting a run that another process holds stops, never ranks fewer
    other = {**base, "out": str(tmp_path / "plain")}
    compare(CompareConfig(**{**other, "seeds": 1}))
    with locked_folder(run_directory(tmp_path / "plain", "ckpt-02", "sgd", 1)):
        with pytest.raises(FolderBusy):
            compare(CompareConfig(**other))
    assert json.loads((tmp_path / "plain" / "compare.json").read_text())["status"] == "running"


def test_a_finished_comparison_stays_completed_when_a_late_shard_joins(
    trained_run: Path, tmp_path: Path
) -> None:
    base = _base(trained_run, tmp_path)
    compare(CompareConfig(**base, shard=Shard(0, 2)))
    compare(CompareConfig(**base, shard=Shard(1, 2)))
    late = compare(CompareConfig(**base, shard=Shard(0, 2)))
    assert (late.ran, late.reused, late.assembled) == (0, 4, True)
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["status"] == "completed"


def _without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    """compare.json less what depends on the clock or the folder's name."""
    summary = json.loads(json.dumps(summary))
    summary["config"].pop("out")
    summary.pop("plots")
    for entry in summary["checkpoints"]:
        entry.pop("step_seconds")
        entry["notes"] = [n for n in entry["notes"] if "seconds per step" not in n]
    return summary


@pytest.mark.slow
def test_two_shard_processes_assemble_the_one_process_result(
    trained_run: Path, tmp_path: Path
) -> None:
    ckpts = [str(trained_run / f"ckpt-0{i}.safetensors") for i in (1, 2)]
    args = [*ckpts, "-s", "sgd", "-s", HF, *SMALL, "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shards = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hfft",
                "compare",
                *args,
                "--out",
                str(tmp_path / "shared"),
                "--shard",
                f"{i}/2",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    one = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    shared = json.loads((tmp_path / "shared" / "compare.json").read_text())
    alone = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert shared["status"] == "completed" and len(shared["runs"]) == 8
    assert _without_timing(shared) == _without_timing(alone)
    # --shard none assembles again from the runs alone, running nothing
    again = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "shared"),
                                "--shard", "none"])  # fmt: skip
    assert again.exit_code == 0, again.output
    reassembled = json.loads((tmp_path / "shared" / "compare.json").read_text())
    assert _without_timing(reassembled) == _without_timing(shared)


def test_a_shard_leaves_the_ranking_to_the_last_and_none_names_missing_runs(
    trained_run: Path, tmp_path: Path
) -> None:
    base = _base(trained_run, tmp_path)
    none = CompareConfig(**base, shard=Shard(0, 0))
    with pytest.raises(ValueError, match="no comparison to assemble"):
        compare(none)
    first = compare(CompareConfig(**base, shard=Shard(0, 2)))
    assert (first.ran, len(first.missing), first.assembled) == (2, 2, False)
    assert first.plots == []
    assert json.loads(first.compare_json.read_text())["status"] == "running"
    with pytest.raises(ValueError, match="2 of 4 runs are not in"):
        compare(none)
    second = compare(CompareConfig(**base, shard=Shard(1, 2)))
    assert (second.ran, second.reused, second.missing) == (2, 2, [])
    assert second.summary["status"] == "completed" and second.plots
    assert "shard" not in second.summary["config"]
    assembled = compare(none)
    assert (assembled.ran, assembled.reused) == (0, 4)


def _study_config(tmp_path: Path, **kw: Any) -> StudyConfig:
    train = TrainConfig.for_model(
        "mlp", data="digits", model_args={"width": 16}, epochs=3, lr=0.05, momentum=0.0,
        checkpoints=3, out=str(tmp_path / "unused"),
    )  # fmt: skip
    base = dict(out=str(tmp_path / "study"), train=train, strategies=("sgd", HF), seeds=2,
                budget="2steps", eval_points=2)  # fmt: skip
    return StudyConfig(**{**base, **kw})


def _report_numbers(report: str, header: str) -> list[list[str]]:
    """The rows of the first Markdown table after ``header``."""
    lines = report[report.index(header) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_study_runs_both_protocols_and_reports_what_the_runs_say(tmp_path: Path) -> None:
    result = study(_study_config(tmp_path))
    out = tmp_path / "study"
    summary = json.loads((out / "runs" / "compare.json").read_text())
    keys = ["ckpt-01", "ckpt-02", "ckpt-03"]
    assert [c["checkpoint"] for c in summary["checkpoints"]] == keys
    # Figure 1's strategies from every checkpoint; Figure 2's others from the last alone
    ran = {(r["checkpoint"], r["strategy"]) for r in summary["runs"]}
    assert {s for c, s in ran if c == "ckpt-01"} == {"sgd", HF}
    assert {"swa", "lbfgs", "adam", "sgd-cosine"} <= {s for c, s in ran if c == "ckpt-03"}
    assert not (out / "runs" / "ckpt-01" / "swa").exists()
    assert set(summary["relative_performance"]["test_accuracy"]["ckpt-03"]) == {"sgd", HF}
    assert sorted(p.name for p in result.figures) == [
        "figure1-test_accuracy.png", "figure1-train_eval_loss.png", "figure2.png"
    ]  # fmt: skip
    report = (out / "report.md").read_text()
    # Figure 1's table: the mean relative score of every strategy at every checkpoint
    rel = summary["relative_performance"]["test_accuracy"]
    for row in _report_numbers(report, "Mean relative **best test accuracy**"):
        expected = [f"{np.mean(rel[k][row[0]]):.2f}" for k in keys]
        assert row[1:] == expected
    # Figure 2's table: every strategy from the last checkpoint, in rank order, its mean
    ranking = summary["checkpoints"][-1]["rankings"]["test_accuracy"]
    rows = _report_numbers(report, "From ckpt-03, best test accuracy")
    assert rows[0][1] == "start (checkpoint)"
    assert [r[1] for r in rows[1:]] == [s["strategy"] for s in ranking]
    assert [r[2] for r in rows[1:]] == [f"{100 * s['mean']:.2f} %" for s in ranking]
    # step times, with HF's seconds per CG iteration
    timing = {r[0]: r for r in _report_numbers(report, "## Step times")}
    assert timing[HF][2].endswith(")") and timing["sgd"][2] == "–"
    # study.json lists the study's own files: nothing in the folder is foreign
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "completed" and record["folders"] == ["train", "runs"]
    figures = {p.name for p in result.figures}
    assert set(record["files"]) == {"study.json", "report.md", "evaluations.csv", *figures}
    assert first_foreign(out) is None
    # a rerun reuses the training and every run
    notes: list[str] = []
    again = study(_study_config(tmp_path), on_note=notes.append)
    assert (again.comparison.ran, again.comparison.reused) == (0, len(summary["runs"]))
    assert any("using the finished training" in n for n in notes)


@pytest.mark.slow
def test_study_resumes_after_an_interrupt_and_reuses_a_train_run(tmp_path: Path) -> None:
    config = _study_config(tmp_path)
    seen: list[str] = []

    def stop_at_third(index: int, total: int, what: str) -> None:
        seen.append(what)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        study(config, on_run=stop_at_third)
    assert not (tmp_path / "study" / "report.md").exists()
    resumed = study(config, on_run=lambda i, n, what: seen.append(what))
    total = len(resumed.comparison.summary["runs"])
    assert (resumed.comparison.reused, resumed.comparison.ran) == (2, total - 2)
    # the third run, interrupted, is run again and nothing else twice
    assert seen[3] == seen[2] and len(set(seen)) == total
    # another study of the same training folder trains nothing
    reuse = _study_config(tmp_path, out=str(tmp_path / "again"), train=None,
                          train_run=str(tmp_path / "study" / "train"), seeds=1)  # fmt: skip
    assert study(reuse).report is not None
    assert not (tmp_path / "again" / "train").exists()


def test_waiting_shards_never_train_over_a_finished_training(tmp_path: Path) -> None:
    config = _study_config(tmp_path, shard=Shard(0, 0))
    with pytest.raises(ValueError, match="--shard none runs nothing"):
        study(config)
    assert not (tmp_path / "study").exists()
    target = TrainConfig.for_model(
        "mlp", data="digits", model_args={"width": 8}, epochs=1, lr=0.05, momentum=0.0,
        checkpoints=1, out=str(tmp_path / "t"),
    )  # fmt: skip
    assert finished_run(tmp_path / "t", target) is None
    train(target)
    stamp = (tmp_path / "t" / "ckpt-01.safetensors").stat().st_mtime_ns
    kept = train(target, keep_finished=True)
    assert kept.status == "completed" and kept.checkpoints == [
        tmp_path / "t" / "ckpt-01.safetensors"
    ]
    assert (tmp_path / "t" / "ckpt-01.safetensors").stat().st_mtime_ns == stamp


def test_a_study_shard_waits_for_the_training_another_holds(tmp_path: Path) -> None:
    config = _study_config(tmp_path, shard=Shard(0, 1), seeds=1, strategies=("sgd",))
    (tmp_path / "study" / "train").mkdir(parents=True)
    notes: list[str] = []
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locked_folder(tmp_path / "study" / "train"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    threading.Timer(1.0, release.set).start()
    result = study(config, on_note=notes.append)
    holder.join()
    assert any("waiting for the training" in n for n in notes)
    assert result.report is not None and (result.train_dir / "ckpt-03.safetensors").exists()


def test_study_refuses_an_unfinished_train_run(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "interrupted", "checkpoints": []}))
    config = _study_config(tmp_path, train=None, train_run=str(folder))
    with pytest.raises(ValueError, match="not a finished hfft train run"):
        study(config)
    result = runner.invoke(
        app, ["study", "mlp", "--train-run", str(folder), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "not a finished hfft train run" in result.output
    bad = runner.invoke(app, ["study", "mlp", "--data", "digits", "--shard", "3/2",
                              "--out", str(tmp_path / "s")])  # fmt: skip
    assert bad.exit_code == 2 and "I/N" in bad.output
    for option in (["--budget", "soon"], ["-s", "rmsprop"]):
        bad = runner.invoke(app, ["study", "mlp", "--data", "digits", *option,
                                  "--out", str(tmp_path / "s")])  # fmt: skip
        assert bad.exit_code == 2 and option[1] in bad.output and "finished" not in bad.output
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_study_cli_small_instance(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["study", "mlp", "--data", "digits", "--model-arg", "width=16", "--epochs", "2",
         "--checkpoints", "2", "-s", "sgd", "-s", HF, *SMALL, "--first-seed", "1",
         "--target", "50%", "--out", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "report: " in result.output and (tmp_path / "s" / "report.md").exists()
    said = " ".join(result.output.split())
    assert "ckpt-02: time to reach test accuracy 50.00% (--target)" in said
    assert said.index("time to reach") < said.index("ranked by")
    report = (tmp_path / "s" / "report.md").read_text()
    assert "From ckpt-02, to test accuracy 50.00 % (--target):" in report
    assert "2 seeds (1–2)" in report and "## What the runs show" in report
    run = run_directory(tmp_path / "s" / "runs", "ckpt-02", "lbfgs", 1)
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_a_shard_refuses_to_join_beside_an_unreadable_comparison(
    trained_run: Path, tmp_path: Path
) -> None:
    base = _base(trained_run, tmp_path)
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare.json").write_text('{"config": "not an object"')
    with (
        locked_folder(tmp_path / "cmp", shared=True),
        pytest.raises(FolderTaken, match=r"no readable compare\.json"),
    ):
        compare(CompareConfig(**base, shard=Shard(1, 2)))


def test_a_hand_edited_training_is_not_kept(tmp_path: Path) -> None:
    target = TrainConfig.for_model(
        "mlp", data="digits", model_args={"width": 8}, epochs=2, lr=0.05, momentum=0.0,
        checkpoints=2, out=str(tmp_path / "t"),
    )  # fmt: skip
    train(target)
    assert finished_run(tmp_path / "t", target) is not None
    manifest = json.loads((tmp_path / "t" / "run.json").read_text())
    for edit in ({"epochs": {"1": {}}}, {"train_seconds": "fast"}, {"checkpoints": []}):
        (tmp_path / "t" / "run.json").write_text(json.dumps({**manifest, **edit}))
        assert finished_run(tmp_path / "t", target) is None


def test_a_study_whose_training_diverges_stops_before_any_run(tmp_path: Path) -> None:
    diverging = dataclasses.replace(_study_config(tmp_path).train, lr=1e38)
    with pytest.raises(
        ValueError, match=r"not a finished hfft train run: its run\.json says 'diverged'"
    ):
        study(_study_config(tmp_path, train=diverging))
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["train"]


def test_an_interrupt_between_a_studys_steps_says_what_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hfft.analysis.study as study_module

    def interrupted(*args: Any, **kwargs: Any) -> None:  # after the training, before the runs
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "compare", interrupted)
    with pytest.raises(Interrupted, match=r"what was finished is kept in .*study"):
        study(_study_config(tmp_path, seeds=1, strategies=("sgd",)))
    assert (tmp_path / "study" / "train" / "run.json").is_file()
