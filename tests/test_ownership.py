"""Which files hfft wrote: records list them, and nothing else is ever removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfft.experiment.run.ownership import first_foreign, is_scratch, owned, remove_owned


def _write(folder: Path, files: dict[str, str | dict]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))


def _finetune(files: tuple[str, ...] = ("final.safetensors",)) -> dict:
    return {"kind": "hfft-finetune", "files": {name: "0" * 64 for name in files}}


def _train(**record: object) -> dict:
    return {"kind": "hfft-train", **record}


def _compare(**record: object) -> dict:
    return {"kind": "hfft-compare", **record}


def _comparison(tmp_path: Path) -> Path:
    """A comparison of two runs, one of them with a best checkpoint too."""
    out = tmp_path / "cmp"
    _write(
        out,
        {
            "compare.json": _compare(
                files=["compare.json", "curves-c.png"], folders=["c/sgd/seed-0", "c/hf/seed-0"]
            ),
            "curves-c.png": "png",
            "c/sgd/seed-0/metrics.json": _finetune(),
            "c/sgd/seed-0/final.safetensors": "w",
            "c/hf/seed-0/metrics.json": _finetune(("final.safetensors", "best.safetensors")),
            "c/hf/seed-0/final.safetensors": "w",
            "c/hf/seed-0/best.safetensors": "w",
        },
    )
    return out


def test_a_comparison_owns_its_runs_files(tmp_path: Path) -> None:
    own = owned(_comparison(tmp_path))
    assert own.files == {
        "compare.json",
        "curves-c.png",
        "c/sgd/seed-0/metrics.json",
        "c/sgd/seed-0/final.safetensors",
        "c/sgd/seed-0/best.safetensors",  # a run's name in a comparison's run folder
        "c/sgd/seed-0/evaluations.csv",
        "c/hf/seed-0/metrics.json",
        "c/hf/seed-0/final.safetensors",
        "c/hf/seed-0/best.safetensors",
        "c/hf/seed-0/evaluations.csv",
    }
    assert first_foreign(tmp_path / "cmp") is None


@pytest.mark.parametrize(
    ("extra", "foreign"),
    [
        ("NOTES.md", "NOTES.md"),
        ("c/sgd/seed-0/notes.txt", "c/sgd/seed-0/notes.txt"),
        ("c/analysis/", "c/analysis/"),
        ("c/hf/seed-0/final.safetensors/", "c/hf/seed-0/final.safetensors/"),
    ],
    ids=["top", "inside-a-run", "empty-folder", "folder-in-place-of-a-file"],
)
def test_the_first_foreign_entry_is_named(tmp_path: Path, extra: str, foreign: str) -> None:
    out = _comparison(tmp_path)
    if extra.endswith("/"):
        target = out / extra.rstrip("/")
        if target.is_file():
            target.unlink()
        target.mkdir(parents=True)
    else:
        (out / extra).write_text("the user's")
    assert first_foreign(out) == foreign


def test_scratch_entries_are_hfft_s_by_their_names() -> None:
    assert is_scratch(".ft.staging-1234") and is_scratch(".ft.staging-old-1234")
    assert is_scratch(".hfft.metrics.json.k2j3h4g5.tmp")
    assert not is_scratch(".notes.tmp") and not is_scratch("ft.staging-12")


def test_another_run_inside_a_folder_is_left_to_itself(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "run.json": _train(files=["run.json", "ckpt-01.safetensors"]),
            "ckpt-01.safetensors": "w",
            "finetune-hf/metrics.json": _finetune(),
            "finetune-hf/final.safetensors": "w",
        },
    )
    assert first_foreign(tmp_path) is None
    assert first_foreign(tmp_path, nested_runs=False) == "finetune-hf/"
    (tmp_path / "finetune-hf" / "mine.txt").write_text("x")
    assert first_foreign(tmp_path) == "finetune-hf/mine.txt"
    remove_owned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune-hf"]
    assert sorted(p.name for p in (tmp_path / "finetune-hf").iterdir()) == [
        "final.safetensors",
        "metrics.json",
        "mine.txt",
    ]


def test_remove_owned_removes_the_listed_files_and_the_folders_they_leave_empty(
    tmp_path: Path,
) -> None:
    out = _comparison(tmp_path)
    (out / "c" / "sgd" / "keep").mkdir()  # not listed, so c/sgd stays
    (out / "c" / "sgd" / "keep" / "x").write_text("x")
    remove_owned(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "c",
        "c/sgd",
        "c/sgd/keep",
        "c/sgd/keep/x",
    ]


def test_a_record_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    outside = tmp_path / "ckpt-01.safetensors"
    outside.write_text("years of work")
    elsewhere = tmp_path / "elsewhere" / "a" / "seed-0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "final.safetensors").write_text("w")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    files = ["../ckpt-01.safetensors", str(outside), "./x/../../ckpt-01.safetensors", ""]
    _write(out, {"run.json": _train(files=files)})
    _write(out, {"compare.json": _compare(folders=["link/a/seed-0", "../elsewhere/a/seed-0"])})
    assert owned(out).files == {"run.json", "compare.json"}
    remove_owned(out)
    assert outside.read_text() == "years of work"
    assert (elsewhere / "final.safetensors").read_text() == "w"  # not through a link
    assert (out / "link").is_symlink()


def test_a_record_lists_only_what_its_kind_of_run_writes(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "metrics.json": _finetune(("final.safetensors", "thesis.tex")),
            "final.safetensors": "w",
            "thesis.tex": "years of work",
        },
    )
    assert owned(tmp_path).files == {"metrics.json", "final.safetensors"}
    assert first_foreign(tmp_path) == "thesis.tex"
    remove_owned(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize(
    "record",
    ["[" * 100_000 + "]" * 100_000, "{not json", '"a string"', "[1, 2]"],
    ids=["deep", "broken", "string", "list"],
)
def test_an_unreadable_record_owns_nothing(tmp_path: Path, record: str) -> None:
    (tmp_path / "metrics.json").write_text(record)
    (tmp_path / "final.safetensors").write_text("w")
    assert not owned(tmp_path)
    assert first_foreign(tmp_path) == "final.safetensors"


def test_records_written_before_they_listed_files_own_what_they_name(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "compare.json": {  # no kind yet: known by its configuration
                "config": {"checkpoints": ["c.safetensors"], "budget": "10%"},
                "plots": [str(tmp_path / "curves-c.png")],
                "runs": [{"checkpoint": "c", "strategy": "hf:m=256", "seed": 0}],
            },
            "curves-c.png": "png",
            "c/hf_m=256/seed-0/metrics.json": _finetune(),
            "c/hf_m=256/seed-0/final.safetensors": "w",
            "t/run.json": _train(checkpoints=[{"path": "ckpt-01.safetensors"}]),
            "t/ckpt-01.safetensors": "w",
        },
    )
    assert {"curves-c.png", "c/hf_m=256/seed-0/final.safetensors"} <= owned(tmp_path).files
    assert owned(tmp_path / "t").files == {"run.json", "ckpt-01.safetensors"}
    assert first_foreign(tmp_path) is None


@pytest.mark.parametrize("name", ["run.json", "metrics.json", "compare.json", "study.json"])
def test_a_json_file_of_the_users_is_no_record(tmp_path: Path, name: str) -> None:
    _write(tmp_path, {name: {"my": "notes", "files": ["report.md"]}, "report.md": "mine"})
    assert not owned(tmp_path)
    assert first_foreign(tmp_path) == min(name, "report.md")  # both are the user's
    remove_owned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "report.md"])


def test_a_comparisons_run_folder_holds_no_other_run(tmp_path: Path) -> None:
    out = _comparison(tmp_path)
    _write(out, {"c/sgd/seed-0/finetune-sgd/metrics.json": _finetune(())})
    assert first_foreign(out) is None  # another run of hfft's, left where it is ...
    # ... unless the run folders are about to be replaced whole (it would go with them)
    assert first_foreign(out, runs_whole=True) == "c/sgd/seed-0/finetune-sgd/"
    _write(out, {"c/other/metrics.json": _finetune(())})  # beside the run folders: left alone
    (out / "c/sgd/seed-0/finetune-sgd/metrics.json").unlink()
    (out / "c/sgd/seed-0/finetune-sgd").rmdir()
    assert first_foreign(out, runs_whole=True) is None
