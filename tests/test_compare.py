"""hfft compare and hfft demo: runs, ranking files, plots, resumability."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfft.analysis.compare import (
    CompareConfig,
    compare,
    default_strategies,
    run_directory,
    run_order,
)
from hfft.cli import app

runner = CliRunner()
STRATEGIES = ("sgd", "sgd-cosine", "hf:m=128,cg_max_iter=10")


@pytest.fixture(scope="module")
def run_dir(trained_run: Path) -> Path:
    return trained_run


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [
        (1293, ["auto:m=256", "hf:m=256", "hf:m=512"]),
        (40_000, ["auto:m=1024", "hf:m=1024", "hf:m=2048", "hf:m=4096"]),
        (300, ["auto:m=37", "hf:m=37", "hf:m=75", "hf:m=150"]),
    ],
    ids=["digits", "cifar", "tiny"],
)
def test_default_strategies(n_train: int, expected: list[str]) -> None:
    assert [s.label for s in default_strategies(n_train)] == [
        "sgd",
        "sgd-div10",
        "sgd-cosine",
        "sgd-plateau",
        *expected,
    ]


@pytest.mark.parametrize(("checkpoints", "strategies", "seeds"), [(1, 3, 4), (3, 4, 5), (2, 1, 2)])
def test_run_order_interleaves_strategies(checkpoints: int, strategies: int, seeds: int) -> None:
    order = run_order(checkpoints, strategies, seeds)
    every = {(c, k, s) for c in range(checkpoints) for k in range(strategies) for s in range(seeds)}
    assert len(order) == len(every) and set(order) == every
    # seed by seed: no strategy runs its seeds in a block
    assert [s for _, _, s in order] == sorted(s for _, _, s in order)
    blocks = [order[i : i + strategies] for i in range(0, len(order), strategies)]
    assert all(sorted(k for _, k, _ in b) == list(range(strategies)) for b in blocks)
    assert all(len({c for c, _, _ in b}) == 1 for b in blocks)
    # which strategy goes first rotates, so none always runs right after a checkpoint loads
    firsts = [b[0][1] for b in blocks]
    assert len(set(firsts)) == min(strategies, len(blocks))


def test_compare_runs_interleaved_with_paired_seeds(run_dir: Path, tmp_path: Path) -> None:
    cfg = CompareConfig(
        checkpoints=(str(run_dir / "ckpt-02.safetensors"),),
        strategies=("sgd", "sgd-div10"),
        seeds=2,
        budget="2steps",
        out=str(tmp_path / "cmp"),
        eval_points=1,
    )
    seen: list[str] = []
    result = compare(cfg, on_run=lambda i, n, what: seen.append(what))
    assert seen == [
        "ckpt-02 sgd seed 0",
        "ckpt-02 sgd-div10 seed 0",
        "ckpt-02 sgd-div10 seed 1",
        "ckpt-02 sgd seed 1",
    ]
    listed = [(r["strategy"], r["seed"]) for r in result.summary["runs"]]
    assert listed == [("sgd", 0), ("sgd", 1), ("sgd-div10", 0), ("sgd-div10", 1)]
    # seeds are paired across strategies, whatever the order: same seed → same first
    # batch → same loss before the first update
    first = {}
    for strategy, seed in listed:
        log = run_directory(tmp_path / "cmp", "ckpt-02", strategy, seed) / "metrics.json"
        first[strategy, seed] = json.loads(log.read_text())["steps"][0]["loss"]
    assert first["sgd", 0] == first["sgd-div10", 0] != first["sgd", 1] == first["sgd-div10", 1]


def test_compare_runs_ranks_plots_and_resumes(run_dir: Path, tmp_path: Path) -> None:
    cfg = CompareConfig(
        checkpoints=(str(run_dir / "ckpt-01.safetensors"), str(run_dir / "ckpt-02.safetensors")),
        strategies=STRATEGIES,
        seeds=2,
        budget="4steps",
        out=str(tmp_path / "cmp"),
        eval_points=2,
        eval_batch_size=128,
    )
    result = compare(cfg)
    assert (result.ran, result.reused) == (12, 0)
    summary = json.loads(result.compare_json.read_text())
    assert [c["checkpoint"] for c in summary["checkpoints"]] == ["ckpt-01", "ckpt-02"]
    ranking = summary["checkpoints"][1]["rankings"]["test_accuracy"]
    assert sorted(s["strategy"] for s in ranking) == sorted(STRATEGIES)
    assert [s["rank"] for s in ranking] == [1, 2, 3]
    assert all(len(s["values"]) == 2 for s in ranking)
    assert set(summary["relative_performance"]) == {"test_accuracy", "train_eval_loss"}
    for run in summary["runs"]:
        where = run_directory(tmp_path / "cmp", run["checkpoint"], run["strategy"], run["seed"])
        metrics = where / "metrics.json"
        assert json.loads(metrics.read_text())["status"] == "completed"
    names = sorted(p.name for p in result.plots)
    assert names == [
        "curves-ckpt-01.png",
        "curves-ckpt-02.png",
        "relative-test_accuracy.png",
        "relative-train_eval_loss.png",
    ]
    for p in result.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same command again reuses every finished run
    again = compare(cfg)
    assert (again.ran, again.reused) == (0, 12)
    # a run lost to an interruption is redone, the others are kept
    victim = tmp_path / "cmp" / "ckpt-02" / "sgd" / "seed-1" / "metrics.json"
    log = json.loads(victim.read_text())
    log["status"] = "interrupted"
    victim.write_text(json.dumps(log))
    third = compare(cfg)
    assert (third.ran, third.reused) == (1, 11)


def test_compare_ranks_auto_with_the_others(run_dir: Path, tmp_path: Path) -> None:
    auto = "auto:interval=0.25,lr=0.005,momentum=0.0,m=128,hf_cg_max_iter=10"  # canonical
    cfg = CompareConfig(
        checkpoints=(str(run_dir / "ckpt-02.safetensors"),),
        strategies=("sgd", auto),
        seeds=2,
        budget="8steps",
        out=str(tmp_path / "cmp"),
        eval_points=2,
        eval_batch_size=128,
    )
    result = compare(cfg)
    assert result.ran == 4
    (entry,) = result.summary["checkpoints"]
    for metric in ("test_accuracy", "train_eval_loss"):
        ranked = entry["rankings"][metric]
        assert sorted(s["strategy"] for s in ranked) == sorted(("sgd", auto))
    log = json.loads(
        (run_directory(tmp_path / "cmp", "ckpt-02", auto, 1) / "metrics.json").read_text()
    )
    assert log["strategy"] == auto and [p["step"] for p in log["auto"]["probes"]][:1] == [3]
    assert [p.name for p in result.plots] == ["curves-ckpt-02.png"]


def test_cli_compare_json_and_errors(run_dir: Path, tmp_path: Path) -> None:
    ckpt = str(run_dir / "ckpt-02.safetensors")
    result = runner.invoke(
        app,
        [
            "compare",
            ckpt,
            "-s",
            "sgd",
            "-s",
            "sgd-div10",
            "--seeds",
            "2",
            "--budget",
            "2steps",
            "--json",
            "--device",
            "cpu",
            "--eval-points",
            "1",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["strategies"] == ["sgd", "sgd-div10"]
    bad = runner.invoke(app, ["compare", ckpt, "-s", "rmsprop", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "rmsprop" in bad.output
    assert not (tmp_path / "bad").exists()
    bad = runner.invoke(app, ["compare", ckpt, "--budget", "soon", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "soon" in bad.output


def _small(run_dir: Path, tmp_path: Path, **kw) -> CompareConfig:
    base = dict(
        checkpoints=(str(run_dir / "ckpt-02.safetensors"),),
        strategies=("sgd", "sgd-div10"),
        seeds=1,
        budget="2steps",
        out=str(tmp_path / "cmp"),
        eval_points=1,
    )
    return CompareConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("truncate", "final.safetensors does not match its recorded SHA-256"),
        ("nan-weights", "final.safetensors does not match its recorded SHA-256"),
        ("delete-best", "best.safetensors is missing"),
        ("null", "its metrics.json is not a JSON object"),
        ("list", "its metrics.json is not a JSON object"),
        ("no-hashes", "its metrics.json records no hash of final.safetensors"),
        ("no-evaluations", "its metrics.json is incomplete"),
    ],
)
def test_reused_runs_are_verified_and_redone_when_damaged(
    run_dir: Path, tmp_path: Path, damage: str, why: str
) -> None:
    cfg = _small(run_dir, tmp_path)
    assert compare(cfg).ran == 2
    victim = run_directory(tmp_path / "cmp", "ckpt-02", "sgd-div10", 0)
    final, metrics = victim / "final.safetensors", victim / "metrics.json"
    log = json.loads(metrics.read_text())
    if damage == "truncate":
        final.write_bytes(final.read_bytes()[:100])
    elif damage == "nan-weights":
        import torch
        from safetensors.torch import load_file, save_file

        tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(final).items()}
        save_file(tensors, final)
    elif damage == "delete-best":
        (victim / "best.safetensors").unlink()
    elif damage in ("null", "list"):
        metrics.write_text("null" if damage == "null" else "[]")
    elif damage == "no-hashes":
        del log["files"]
        metrics.write_text(json.dumps(log))
    else:
        del log["evaluations"]
        metrics.write_text(json.dumps(log))
    notes: list[str] = []
    again = compare(cfg, on_note=notes.append)
    assert (again.ran, again.reused) == (1, 1)
    assert len(notes) == 1 and notes[0].startswith(f"running ckpt-02 sgd-div10 seed 0 again: {why}")
    redone = json.loads(metrics.read_text())
    assert redone["status"] == "completed" and set(redone["files"]) >= {"final.safetensors"}


def test_a_comparison_with_another_budget_is_kept_apart(run_dir: Path, tmp_path: Path) -> None:
    assert compare(_small(run_dir, tmp_path)).ran == 2
    before = (tmp_path / "cmp" / "compare.json").read_text()
    with pytest.raises(ValueError, match=r"holds another comparison .* --overwrite"):
        compare(_small(run_dir, tmp_path, budget="3steps"))
    assert (tmp_path / "cmp" / "compare.json").read_text() == before
    # more seeds and strategies extend the same comparison
    more = compare(_small(run_dir, tmp_path, seeds=2, strategies=("sgd", "sgd-cosine")))
    assert (more.ran, more.reused) == (3, 1)
    # --overwrite starts afresh
    fresh = compare(_small(run_dir, tmp_path, budget="3steps", overwrite=True))
    assert (fresh.ran, fresh.reused) == (2, 0)
    assert not (tmp_path / "cmp" / "ckpt-02" / "sgd-cosine").exists()


def test_every_strategy_is_checked_before_the_first_run(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", str(run_dir / "ckpt-02.safetensors"), "-s", "sgd", "-s", "hf:m=99999999"]
    result = runner.invoke(app, [*argv, "--budget", "2steps", "--out", str(out)])
    assert result.exit_code == 2
    assert "HF's batch B (hf:m=99999999) must hold 1 to 1292 of the 1293 training" in result.output
    assert not out.exists()  # sgd did not run first


LOSS = "torch.nn:MultiMarginLoss"  # a user's loss (--loss) that K-FAC does not support


def test_a_suite_leaves_out_what_cannot_run_here_and_says_why(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfft.analysis.compare import _load_sources
    from hfft.experiment.run.starting_point import StartingPointOptions
    from hfft.experiment.strategies.registry import parse_strategy

    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # the extra not installed
    user = StartingPointOptions(loss=LOSS)
    config = _small(run_dir, tmp_path, strategies=None, suite="second-order", source=user)
    notes: list[str] = []
    _, typed = _load_sources(config, [], notes.append)
    assert [s for s in typed if not s.startswith("hf:")] == ["sgd", "sgd-div10", "sgd-cosine",
                                                             "muon"]  # fmt: skip
    kfac = [n for n in notes if n.startswith("kfac left out of --suite second-order: K-FAC ")]
    assert len(kfac) == 1 and kfac[0].endswith("not this run's MultiMarginLoss")
    assert "soap left out of --suite second-order: soap needs pytorch-optimizer, the " \
        "second-order extra (pip install 'hfft[second-order]')" in notes  # fmt: skip
    _, typed = _load_sources(config, [parse_strategy("sgd")], notes.append)  # added to -s
    assert list(typed) == ["sgd", "muon"]
    notes.clear()
    extended = _small(run_dir, tmp_path, strategies=None, suite="extended")  # cross-entropy
    _, typed = _load_sources(extended, [], notes.append)
    assert "kfac" in typed and "soap" not in typed
    assert [n for n in notes if "left out" in n] == [
        "soap left out of --suite extended: soap needs pytorch-optimizer, the second-order "
        "extra (pip install 'hfft[second-order]')"
    ]


@pytest.mark.parametrize(
    ("strategy", "says"),
    [("kfac", "not this run's MultiMarginLoss."), ("soap", "(pip install 'hfft[second-order]').")],
)
def test_a_strategy_named_that_cannot_run_here_is_refused_before_any_run(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, says: str
) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    out = tmp_path / "cmp"
    ckpt = str(run_dir / "ckpt-02.safetensors")
    argv = ["compare", ckpt, "-s", "sgd", "-s", strategy, "--suite", "extended", "--loss", LOSS,
            "--budget", "2steps", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("hfft: error:")]
    assert len(error) == 1 and error[0].endswith(says)
    assert not out.exists()  # sgd did not run first


def test_a_second_comparison_on_the_same_folder_is_refused(run_dir: Path, tmp_path: Path) -> None:
    from hfft.experiment.run.run_folder import FolderBusy, locked_folder

    with locked_folder(tmp_path / "cmp"), pytest.raises(FolderBusy, match="another hfft run"):
        compare(_small(run_dir, tmp_path))
    assert not (tmp_path / "cmp").exists()  # nothing written, the empty folder removed


# --- reused records must be plausible (issue #23, section 4) ---------------------------------


def _edited(field: str, value: object, at: int = 1):
    """An edit of ``metrics.json``: evaluation ``at`` gets ``field = value``."""

    def edit(log: dict) -> str:
        log["evaluations"][at][field] = value
        return json.dumps(log)  # allow_nan: a bare NaN token where the value is NaN

    return edit


def _deleted(*path: str | int):
    def edit(log: dict) -> str:
        record = log
        for part in path[:-1]:
            record = record[part]
        del record[path[-1]]
        return json.dumps(log)

    return edit


IMPLAUSIBLE = {
    "accuracy-5": (
        _edited("test_accuracy", 5.0),
        "its metrics.json has test_accuracy 5.0 at evaluation 1, outside [0, 1]",
    ),
    "accuracy-1e308": (
        _edited("test_accuracy", 1e308),
        "its metrics.json has test_accuracy 1e+308 at evaluation 1, outside [0, 1]",
    ),
    "negative-loss": (
        _edited("train_eval_loss", -1.0),
        "its metrics.json has train_eval_loss -1.0 at evaluation 1, below 0",
    ),
    "nan-token": (
        _edited("test_accuracy", float("nan")),
        "its metrics.json has test_accuracy NaN at evaluation 1, not a finite number",
    ),
    "string": (
        _edited("test_accuracy", "0.93"),
        'its metrics.json has test_accuracy "0.93" at evaluation 1, not a number',
    ),
    "long-string": (
        _edited("test_accuracy", "9" * 100_000),
        'its metrics.json has test_accuracy "99999999999999999999…" at evaluation 1, not a number',
    ),
    "fraction-1e308": (
        _edited("fraction", 1e308),
        "its metrics.json has fraction 1e+308 at evaluation 1, more than spent.fraction (1.0)",
    ),
    "step-beyond-budget": (
        _edited("step", 7),
        "its metrics.json has step 7 at evaluation 1, more than spent.steps (2)",
    ),
    "no-fraction": (
        _deleted("evaluations", 1, "fraction"),
        "its metrics.json is incomplete (no fraction at evaluation 1)",
    ),
    "no-spent": (_deleted("spent"), "its metrics.json is incomplete (no spent)"),
    "no-task": (_deleted("source", "task"), "its metrics.json is incomplete (no source.task)"),
    "other-strategy": (
        lambda log: json.dumps({**log, "strategy": "sgd"}),
        'its metrics.json records strategy "sgd", not "sgd-div10"',
    ),
    "deep": (
        lambda log: "[" * 100_000 + "]" * 100_000,
        "its metrics.json is not readable JSON",
    ),
}


@pytest.mark.parametrize("case", list(IMPLAUSIBLE))
def test_implausible_records_are_redone_and_every_seed_is_ranked(
    run_dir: Path, tmp_path: Path, case: str
) -> None:
    edit, why = IMPLAUSIBLE[case]
    cfg = _small(run_dir, tmp_path, seeds=2)
    assert compare(cfg).ran == 4
    metrics = run_directory(tmp_path / "cmp", "ckpt-02", "sgd-div10", 1) / "metrics.json"
    metrics.write_text(edit(json.loads(metrics.read_text())))
    notes: list[str] = []
    again = compare(cfg, on_note=notes.append)
    assert notes == [f"running ckpt-02 sgd-div10 seed 1 again: {why}"]
    assert (again.ran, again.reused) == (1, 3)
    assert json.loads(metrics.read_text())["evaluations"][1]["test_accuracy"] <= 1.0
    for ranking in again.summary["checkpoints"][0]["rankings"].values():
        assert sorted(s["strategy"] for s in ranking) == ["sgd", "sgd-div10"]
        assert all(s["seeds"] == [0, 1] and s["dropped"] == [] for s in ranking)


def test_a_seed_without_a_score_is_named_in_the_ranking(run_dir: Path, tmp_path: Path) -> None:
    # at its only evaluation after the start its losses are not finite (null): nothing to rank
    from hfft.experiment.strategies.registry import parse_strategy

    diverging = parse_strategy("sgd:lr=1e8").label
    cfg = _small(run_dir, tmp_path, seeds=2, strategies=("sgd", diverging))
    first = compare(cfg)
    again = compare(cfg)
    assert (again.ran, again.reused) == (0, 4)  # a diverged run is a valid record: reused
    for summary in (first.summary, again.summary):
        (entry,) = summary["checkpoints"]
        for metric, ranking in entry["rankings"].items():
            assert [(s["strategy"], s["seeds"]) for s in ranking] == [("sgd", [0, 1])]
            for seed in (0, 1):
                assert f"{diverging} seed {seed} has no finite {metric}; left out" in entry["notes"]


def test_records_nested_too_deep_are_unreadable_not_a_traceback(
    run_dir: Path, tmp_path: Path
) -> None:
    from hfft.analysis.compare import _same_comparison
    from hfft.analysis.shards import _stored_summary
    from hfft.experiment.run.finetune import same_finetune_run

    deep = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError
    (tmp_path / "compare.json").write_text(deep)
    (tmp_path / "metrics.json").write_text(deep)
    assert _stored_summary(tmp_path) == {}
    assert not _same_comparison(tmp_path, _small(run_dir, tmp_path))
    assert not same_finetune_run(tmp_path, {"strategy": "sgd"})


# --- held-out seeds and the user's target (issue #28 §3) --------------------------------------


def test_run_order_from_a_first_seed_is_that_of_the_same_seeds_in_a_longer_range() -> None:
    held_out = run_order(2, 3, 2, first_seed=5)
    assert {s for _, _, s in held_out} == {5, 6}
    assert held_out == [(c, k, s) for c, k, s in run_order(2, 3, 7) if s >= 5]


def _evaluated(run: Path) -> list[dict]:
    """A run's evaluations and step losses without its clock readings."""
    log = json.loads((run / "metrics.json").read_text())
    evaluations = [{k: v for k, v in e.items() if "seconds" not in k} for e in log["evaluations"]]
    return [*evaluations, *({"loss": s["loss"]} for s in log["steps"])]


def test_held_out_seeds_run_as_themselves_and_reuse_the_runs_of_a_longer_range(
    run_dir: Path, tmp_path: Path
) -> None:
    held = compare(_small(run_dir, tmp_path, strategies=("sgd",), seeds=2, first_seed=5))
    assert sorted(p.name for p in (tmp_path / "cmp" / "ckpt-02" / "sgd").iterdir()) == [
        "seed-5", "seed-6"
    ]  # fmt: skip
    (entry,) = held.summary["checkpoints"]
    assert entry["rankings"]["test_accuracy"][0]["seeds"] == [5, 6]
    assert held.summary["config"]["first_seed"] == 5
    # seed 5 of seeds 0 … 5 is the same run, bit for bit
    longer = _small(run_dir, tmp_path, strategies=("sgd",), seeds=6, out=str(tmp_path / "all"))
    assert compare(longer).ran == 6
    five = run_directory(tmp_path / "all", "ckpt-02", "sgd", 5)
    assert _evaluated(five) == _evaluated(run_directory(tmp_path / "cmp", "ckpt-02", "sgd", 5))
    assert _evaluated(five) != _evaluated(run_directory(tmp_path / "all", "ckpt-02", "sgd", 4))
    # held-out seeds beside seeds 0 … 5 reuse seed 5 and add seed 6
    again = compare(dataclasses.replace(longer, seeds=2, first_seed=5))
    assert (again.ran, again.reused) == (1, 1)


def test_cli_target_and_first_seed(run_dir: Path, tmp_path: Path) -> None:
    ckpt = str(run_dir / "ckpt-02.safetensors")
    argv = ["compare", ckpt, "-s", "sgd", "--seeds", "1", "--budget", "2steps", "--device",
            "cpu", "--eval-points", "1"]  # fmt: skip
    out = tmp_path / "c"
    bad = runner.invoke(app, [*argv, "--target", "98", "--out", str(out)])
    assert bad.exit_code == 2, bad.output
    assert "--target 98 is no accuracy (a fraction from 0 to 1); write 98%" in bad.output
    assert not out.exists()
    bad = runner.invoke(app, [*argv, "--first-seed", "-1", "--out", str(out)])
    assert bad.exit_code == 2 and not out.exists()
    ok = runner.invoke(app, [*argv, "--first-seed", "3", "--target", "10%", "--json",
                             "--out", str(out)])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.output)
    assert summary["config"]["target"] == "10%" and summary["config"]["first_seed"] == 3
    ttt = summary["checkpoints"][0]["time_to_target"]
    assert (ttt["baseline"], ttt["target"], ttt["seeds"]) == ("user", 0.1, {"sgd": 1})
    assert (out / "ckpt-02" / "sgd" / "seed-3" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"target": "soon"}, "--target must be a number"),
        ({"first_seed": -1}, "--first-seed"),
        ({"first_seed": 2**32 - 1, "seeds": 2}, "goes beyond the largest seed, 4294967295"),
    ],
    ids=["target", "negative-seed", "beyond-max-seed"],
)
def test_compare_config_refuses_a_bad_target_or_first_seed(kw: dict, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        CompareConfig(checkpoints=("a",), **kw)
