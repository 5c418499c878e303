"""The record schema: docs/records.md documents exactly the fields of hfft.experiment.records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hfft.experiment import records

DOCS = Path(__file__).resolve().parents[1] / "docs" / "records.md"
RECORDS = [getattr(records, n) for n in records.__all__ if isinstance(getattr(records, n), type)]


def _documented() -> dict[str, set[str]]:
    fields: dict[str, set[str]] = {}
    current = None
    for line in DOCS.read_text().splitlines():
        heading = re.fullmatch(r"### `(\w+)`", line)
        if heading:
            current = heading[1]
            fields[current] = set()
        row = re.match(r"\| `(\w+)` \|", line)
        if row and current is not None:
            fields[current].add(row[1])
    return fields


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_field_is_documented(record: type) -> None:
    documented = _documented()
    assert record.__name__ in documented, f"docs/records.md has no section for {record.__name__}"
    keys = set(record.__required_keys__) | set(record.__optional_keys__)  # type: ignore[attr-defined]
    assert documented[record.__name__] == keys


@pytest.mark.parametrize(
    ("record", "config", "left_out"),
    [
        ("FinetuneConfigEntry", "hfft.experiment.run.finetune:FinetuneConfig", ()),
        ("SourceOptionsEntry", "hfft.experiment.run.starting_point:StartingPointOptions", ()),
        ("TrainConfigEntry", "hfft.experiment.run.train:TrainConfig", ()),
        ("CompareConfigEntry", "hfft.analysis.compare:CompareConfig", ("shard",)),
    ],
)
def test_a_config_record_has_the_fields_of_its_config(
    record: str, config: str, left_out: tuple[str, ...]
) -> None:
    import dataclasses
    import importlib

    module, _, name = config.partition(":")
    fields = [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))]
    assert list(getattr(records, record).__annotations__) == [
        f for f in fields if f not in left_out
    ]


def test_the_docs_document_no_other_record() -> None:
    assert set(_documented()) == {r.__name__ for r in RECORDS}


def test_the_written_records_have_the_documented_fields(trained_run: Path, tmp_path: Path) -> None:
    import json

    from hfft.experiment.run.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        checkpoint=str(trained_run / "ckpt-02.safetensors"),
        strategy="hf:m=128,cg_max_iter=5",
        budget="2steps",
        out=str(tmp_path / "ft"),
        eval_points=1,
        eval_batch_size=128,
    )
    log = json.loads(finetune(cfg).metrics_path.read_text())
    allowed = set(records.FinetuneLog.__optional_keys__)
    assert set(log) <= allowed and {"curvature_products", "files", "spent"} <= set(log)
    hf_step = records.HFStepEntry
    assert set(log["steps"][0]) == hf_step.__required_keys__ | hf_step.__optional_keys__
    assert set(log["spent"]) == set(records.SpentEntry.__required_keys__)
    assert set(log["source"]) == set(records.SourceEntry.__required_keys__)
    assert set(log["evaluations"][0]) <= set(records.EvaluationEntry.__optional_keys__)
    manifest = json.loads((trained_run / "run.json").read_text())
    assert set(manifest) == set(records.RunManifest.__required_keys__)
    assert set(manifest["epochs"][0]) <= set(records.EpochEntry.__optional_keys__)
