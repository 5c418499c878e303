"""The model's calling convention: keyword batches and outputs reduced to their logits.

A model written the transformers way (``forward(input_ids, attention_mask)``
returning an object with ``.logits``) must give hfft exactly what its plain twin
(``forward(batch)`` returning the tensor, same weights) gives: the same outputs
through ``functional_call``, the same HF steps, the same run of every strategy.
"""

from __future__ import annotations

import json
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hfft import HessianFree
from hfft.cli import app
from hfft.experiment.data.convention import adopt_convention, keyword_names, reduce_outputs
from hfft.experiment.strategies.registry import entries, kind_of

runner = CliRunner()

PROJECT = """
import torch
from collections import OrderedDict
from torch import nn


class Output(OrderedDict):  # a ModelOutput: a dict whose entries are attributes too
    def __getattr__(self, name):
        return self[name]


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(20, 8), nn.Linear(8, 3)

    def forward(self, batch):
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return self.out((self.emb(batch["input_ids"]) * mask).sum(1) / mask.sum(1))


class Keywords(Plain):
    def forward(self, input_ids, attention_mask=None, labels=None):
        z = super().forward({"input_ids": input_ids, "attention_mask": attention_mask})
        return Output(logits=z)


class Tuple(Plain):
    def forward(self, input_ids, attention_mask=None):
        z = super().forward({"input_ids": input_ids, "attention_mask": attention_mask})
        return (z, z.detach())


def plain():
    return Plain()


def keywords():
    return Keywords()


def tuple_model():
    return Tuple()


def data():
    g = torch.Generator().manual_seed(0)

    def part(n):
        ids = torch.randint(0, 20, (n, 6), generator=g)
        mask = (torch.rand(n, 6, generator=g) > 0.2).long()
        mask[:, 0] = 1
        return {"input_ids": ids, "attention_mask": mask}, ids[:, 0] % 3

    return part(96), part(32), part(32)
"""


class Output(OrderedDict):
    def __getattr__(self, name):
        return self[name]


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(20, 8), nn.Linear(8, 3)

    def forward(self, batch):
        return self.out(self.emb(batch["input_ids"]).mean(1))


class Keywords(Plain):
    def forward(self, input_ids, attention_mask=None):
        return Output(logits=super().forward({"input_ids": input_ids}))


BATCH = {"input_ids": torch.randint(0, 20, (5, 6)), "attention_mask": torch.ones(5, 6)}


# --- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "inputs", "expected"),
    [
        (Keywords(), BATCH, ("input_ids", "attention_mask")),
        (Keywords(), {"input_ids": BATCH["input_ids"]}, ("input_ids",)),
        (Keywords(), {**BATCH, "extra": BATCH["input_ids"]}, ()),
        (Plain(), BATCH, ()),
        (Keywords(), BATCH["input_ids"], ()),
        (Keywords(), (BATCH["input_ids"],), ()),
    ],
    ids=["all-named", "some-named", "one-unnamed", "one-argument", "tensor", "tuple"],
)
def test_a_dict_goes_as_keywords_only_when_forward_names_every_key(model, inputs, expected) -> None:
    assert keyword_names(model, inputs) == expected


Z = torch.arange(6.0).reshape(2, 3)


@pytest.mark.parametrize(
    ("out", "taken"),
    [
        (Z, None),
        (Output(logits=Z, hidden=Z + 1), ".logits"),
        ({"logits": Z, "loss": Z.sum()}, "['logits']"),
        (type("WithLogits", (), {"logits": Z})(), ".logits"),
        ((Z, Z + 1), "[0]"),
        ([Z], "[0]"),
    ],
    ids=["tensor", "model-output", "dict", "attribute", "tuple", "list"],
)
def test_outputs_are_reduced_to_their_logits(out, taken) -> None:
    reduced, how = reduce_outputs(out)
    assert reduced is Z and how == taken


@pytest.mark.parametrize("out", [{"scores": Z}, (1, Z), "text", {"logits": 3}], ids=str)
def test_outputs_without_logits_are_left_for_the_caller_to_refuse(out) -> None:
    assert reduce_outputs(out) == (out, None)


def test_the_hooks_make_every_call_hffts_and_adopting_again_replaces_them() -> None:
    model = Keywords()
    for _ in range(2):
        first, convention = adopt_convention(model, BATCH, lambda c: model(BATCH))
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    assert convention.keywords == ("input_ids", "attention_mask") and convention.taken == ".logits"
    assert convention.call() == "model(**batch)"
    assert "forward as keywords (input_ids=…, attention_mask=…)" in (convention.note() or "")
    state = {k: v * 2 for k, v in model.state_dict().items()}
    twin = Plain()
    twin.load_state_dict(state)
    through = torch.func.functional_call(model, state, (BATCH,))
    torch.testing.assert_close(through, twin(BATCH), rtol=0, atol=0)
    torch.testing.assert_close(first, model(BATCH), rtol=0, atol=0)
    # a call written the model's way passes as written, and its outputs are reduced too
    assert model(input_ids=BATCH["input_ids"]).shape == (5, 3)


def test_a_plain_model_is_called_as_before_and_said_nothing_of() -> None:
    model = Plain()
    out, convention = adopt_convention(model, BATCH, lambda c: model(BATCH))
    assert isinstance(out, torch.Tensor) and convention.note() is None
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_hf_steps_on_a_keyword_model_equal_those_on_its_plain_twin() -> None:
    torch.manual_seed(0)
    plain, keywords = Plain(), Keywords()
    keywords.load_state_dict(plain.state_dict())
    adopt_convention(keywords, BATCH, lambda c: keywords(BATCH))
    x = {"input_ids": torch.randint(0, 20, (32, 6)), "attention_mask": torch.ones(32, 6)}
    y = torch.randint(0, 3, (32,))
    records = []
    for model in (plain, keywords):
        opt = HessianFree(model.parameters(), cg_max_iter=8)
        records.append([opt.step(model, nn.CrossEntropyLoss(), (x, y), (x, y)) for _ in range(2)])
    for a, b in zip(*records, strict=True):
        assert (a.loss_before, a.loss_after, a.cg_iterations) == (
            b.loss_before,
            b.loss_after,
            b.cg_iterations,
        )
    for p, q in zip(plain.parameters(), keywords.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# --- every command and strategy on such a model ------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keywords")
    path = folder / "project.py"
    path.write_text(textwrap.dedent(PROJECT))
    torch.manual_seed(0)
    ckpt = folder / "model.pt"
    weights = {"emb.weight": torch.randn(20, 8), "out.weight": torch.randn(3, 8) / 3}
    torch.save({**weights, "out.bias": torch.zeros(3)}, ckpt)
    return path, ckpt


def _finetune(project: tuple[Path, Path], model: str, strategy: str, out: Path) -> dict:
    path, ckpt = project
    args = [
        "finetune", str(ckpt), "--model", f"{path}:{model}", "--data", f"{path}:data",
        "--strategy", strategy, "--budget", "3steps", "--eval-points", "2", "--lr", "0.1",
        "--batch-size", "16", "--out", str(out), "--device", "cpu", "--quiet",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def _without_clocks(entry):
    """Evaluations and steps as recorded, without clock readings (``*seconds``, ``time_*``,
    ``*_rate``: a rate is a gain per second)."""
    if isinstance(entry, dict):
        clock = ("seconds", "time_", "_rate")
        return {k: _without_clocks(v) for k, v in entry.items() if not any(c in k for c in clock)}
    if isinstance(entry, list):
        return [_without_clocks(v) for v in entry]
    return entry


STRATEGIES = [e.name for e in entries()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_a_keyword_model_as_its_plain_twin(
    project: tuple[Path, Path], tmp_path: Path, strategy: str
) -> None:
    plain = _finetune(project, "plain", strategy, tmp_path / "plain")
    # auto switches by gains per second, which a clock decides: its first step is compared
    parts = ("evaluations", "steps", "final", "best") if kind_of(strategy) != "auto" else ()
    for model in ("keywords", "tuple_model"):
        other = _finetune(project, model, strategy, tmp_path / model)
        assert _without_clocks(other["initial"]) == _without_clocks(plain["initial"])
        assert _without_clocks(other["steps"][0]) == _without_clocks(plain["steps"][0])
        for part in parts:
            assert _without_clocks(other[part]) == _without_clocks(plain[part]), (model, part)


def test_selftest_checks_a_keyword_model(project: tuple[Path, Path]) -> None:
    path, ckpt = project
    args = ["selftest", str(ckpt), "--model", f"{path}:keywords", "--data", f"{path}:data"]
    result = runner.invoke(app, [*args, "--batch-size", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "calling convention" in result.output and "selftest passed" in result.output


def test_labels_among_the_inputs_are_refused(project: tuple[Path, Path], tmp_path: Path) -> None:
    path, ckpt = project
    extra = tmp_path / "labelled.py"
    extra.write_text(
        f"import sys; sys.path.insert(0, {str(path.parent)!r})\n"
        "from project import data as plain\n\n"
        "def data():\n"
        "    return [({**x, 'labels': y}, y) for x, y in plain()]\n"
    )
    args = ["finetune", str(ckpt), "--model", f"{path}:keywords", "--data", f"{extra}:data"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--budget", "1steps"])
    assert result.exit_code == 2, result.output
    assert "holds 'labels'" in result.output and not (tmp_path / "run").exists()
