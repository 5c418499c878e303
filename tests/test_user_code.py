"""Errors from a user's own code and data: one paragraph and exit 2, the traceback with --debug.

Each case is a user's file written to ``tmp_path`` and run through the command
line as the user would (``hfft train FILE:model --data FILE:data``); what
hfft can check is checked before any work, so nothing is written.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.data.user_code import UserCodeError, describe_batch

runner = CliRunner()

USER = """
import sys

import numpy as np
import torch
from torch import nn


def _xy(n, seed, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def data():
    return _xy(48, 0), _xy(16, 1)


def numpy_data():
    (x, y), (xt, yt) = data()
    as_numpy = lambda x, y: (x.double().numpy(), y.numpy().astype(np.int32))
    return as_numpy(x, y), as_numpy(xt, yt)


def label_9_at_sample_5():
    (x, y), (xt, yt) = _xy(48, 0), _xy(16, 1, classes=4)  # test labels up to 3
    y[5] = 9
    return (x, y), (xt, yt)


def multilabel_2_at_sample_5():
    (x, _), (xt, _) = data()
    y, yt = torch.randint(0, 2, (48, 3)).float(), torch.randint(0, 2, (16, 3)).float()
    y[5, 1] = 2.0
    return (x, y), (xt, yt)


def tokens():
    g = torch.Generator().manual_seed(0)

    def part(n):
        ids = torch.randint(0, 50, (n, 16), generator=g)
        mask = torch.ones(n, 16, dtype=torch.int64)
        return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (n,), generator=g)

    return part(40), part(10)


class KeywordModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(50, 8), nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.size()
        return self.out(self.emb(input_ids).mean(1))


def keyword_model():
    return KeywordModel()


class TensorModel(KeywordModel):
    def forward(self, x):  # takes one tensor, not the dict hfft passes (its keys are not x)
        b, t = x.size()
        return self.out(self.emb(x).mean(1))


def tensor_model():
    return TensorModel()


def mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def double_mlp():
    return mlp().double()


def half_mlp():
    return mlp().half()


def linear():
    return nn.Linear(8, 3)


class RaisingForward(nn.Linear):
    def forward(self, x):
        raise RuntimeError("boom")


def raising_forward():
    return RaisingForward(8, 3)


def exits(*args, **kwargs):
    sys.exit(0)


def raises(*args, **kwargs):
    raise RuntimeError("boom")


def beyond_float32():
    (x, y), test = numpy_data()
    x[3, 2] = 1e300  # finite in float64, infinite in float32
    return (x, y), test


def float_loss(outputs, targets):
    return 1.0


def detached_loss(outputs, targets):
    return torch.tensor(nn.functional.cross_entropy(outputs, targets).item())


def per_sample_loss(outputs, targets):
    return nn.functional.cross_entropy(outputs, targets, reduction="none")
"""


@pytest.fixture
def user(tmp_path: Path) -> Path:
    path = tmp_path / "project.py"
    path.write_text(textwrap.dedent(USER))
    return path


def train(user: Path, tmp_path: Path, model: str, data: str, *extra: str, env=None):
    """``hfft train`` on the user's file; returns the result and the output folder."""
    out = tmp_path / "out"
    argv = [
        *("train", f"{user}:{model}", "--data", f"{user}:{data}", "--out", str(out)),
        *("--epochs", "1", "--lr", "0.1", "--batch-size", "8", "--device", "cpu", "--quiet"),
        *extra,
    ]
    return runner.invoke(app, argv, env=env), out


def assert_refused(result, out: Path, *said: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in said:
        assert text in result.output, result.output
    assert not out.exists()


# --- the model's first forward pass -----------------------------------------------------------


def test_a_model_that_fails_on_hffts_call_is_one_paragraph(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "tensor_model", "tokens")
    assert_refused(
        result,
        out,
        "hfft called model(batch) on 2 training samples, a dict with keys input_ids "
        "(int64 2×16), attention_mask (int64 2×16)",
        "AttributeError: 'dict' object has no attribute 'size'",
        "as keywords when forward names every key",
        "pass --debug for the traceback",
    )
    assert len(result.output.strip().splitlines()) == 1  # one paragraph


def test_a_forward_that_names_the_keys_gets_them_as_keywords(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "keyword_model", "tokens")
    assert result.exit_code == 0, result.output
    assert (
        "calling convention: the batch's dict goes to forward as keywords "
        "(input_ids=…, attention_mask=…)" in result.output
    )
    assert (out / "run.json").is_file()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_debug_shows_the_traceback(user: Path, tmp_path: Path, how: str) -> None:
    extra, env = (["--debug"], None) if how == "option" else ([], {"HFFT_DEBUG": "1"})
    result, out = train(user, tmp_path, "tensor_model", "tokens", *extra, env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" in result.output and "x.size()" in result.output
    assert result.output.rstrip().splitlines()[-1].startswith("hfft: error: hfft called model")
    assert not out.exists()


def test_a_failing_forward_names_what_was_called(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "raising_forward", "data")
    assert_refused(result, out, "a float32 tensor of shape 2×8", "RuntimeError: boom")


# --- factories ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "extra", "said"),
    [
        ("exits", "data", (), "Building model"),
        ("mlp", "exits", (), "Data factory"),
        ("mlp", "data", ("--loss", "{user}:exits"), "Loss"),
        ("mlp", "raises", (), "RuntimeError: boom"),
        ("mlp", "data", ("--loss", "{user}:raises"), "RuntimeError: boom"),
    ],
    ids=["model-exits", "data-exits", "loss-exits", "data-raises", "loss-raises"],
)
def test_a_factory_that_exits_or_raises_is_a_failure_of_the_factory(
    user: Path, tmp_path: Path, model: str, data: str, extra: tuple, said: str
) -> None:
    extra = tuple(e.format(user=user) for e in extra)
    result, out = train(user, tmp_path, model, data, *extra)
    assert_refused(result, out, said, "pass --debug for the traceback")


def test_a_file_that_exits_when_loaded_is_a_failure(user: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.exit(0)\n")
    result, out = train(user, tmp_path, "mlp", "data", "--loss", f"{script}:loss")
    assert_refused(result, out, "SystemExit")


# --- what hfft checks before any work ---------------------------------------------------------


def test_labels_are_checked_in_every_sample_of_every_split(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "mlp", "label_9_at_sample_5")
    assert_refused(
        result, out, "class labels up to 9 but the model outputs 3 classes", "at least 10 outputs"
    )


def test_multilabel_targets_are_checked_in_every_sample(user: Path, tmp_path: Path) -> None:
    result, out = train(
        user, tmp_path, "linear", "multilabel_2_at_sample_5", "--task", "multilabel"
    )
    assert_refused(result, out, "multi-label targets must be 0 or 1", "2.0")


def test_a_float16_model_is_refused_in_one_sentence(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "half_mlp", "data")
    assert_refused(result, out, "float16", "model.float()")


def test_numpy_data_of_other_dtypes_is_used_as_meant(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "mlp", "numpy_data")
    assert result.exit_code == 0, result.output
    assert "hfft: note: the data's float64 inputs were cast to the model's float32" in (
        result.output
    )
    assert "int32 class labels were widened to int64" in result.output
    assert (out / "run.json").is_file()


def test_float64_data_beyond_float32_is_refused(user: Path, tmp_path: Path) -> None:
    result, out = train(user, tmp_path, "mlp", "beyond_float32")
    assert_refused(
        result, out, "float64 inputs hold values beyond the range of the model's float32"
    )


@pytest.mark.parametrize(
    ("loss", "said"),
    [("float_loss", "returned a float, not one number"),
     ("per_sample_loss", "returned a float32 2 tensor, not one number"),
     ("detached_loss", "autograd cannot trace back to the outputs")],
)  # fmt: skip
def test_a_loss_that_returns_no_scalar_is_refused(
    user: Path, tmp_path: Path, loss: str, said: str
) -> None:
    result, out = train(user, tmp_path, "mlp", "data", "--loss", f"{user}:{loss}")
    assert_refused(result, out, said)


def test_float32_data_goes_to_a_float64_model(user: Path, tmp_path: Path) -> None:
    result, _ = train(user, tmp_path, "double_mlp", "data")
    assert result.exit_code == 0, result.output
    assert "float32 inputs were cast to the model's float64" in result.output


def test_seeds_are_bounded() -> None:
    from hfft.experiment.limits import check

    with pytest.raises(ValueError, match="--seeds must be an integer from 1 to 1000"):
        check("seeds", 2**32 - 1)
    assert check("seeds", 1000) == 1000


def test_compare_refuses_absurd_seeds_in_one_sentence(tmp_path: Path) -> None:
    out = tmp_path / "c"
    result = runner.invoke(
        app, ["compare", "x.safetensors", "--seeds", "4294967295", "--out", str(out)]
    )
    assert_refused(result, out, "--seeds must be an integer from 1 to 1000")


def test_a_sparse_tensor_in_a_pt_is_one_sentence(user: Path, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in torch.nn.Linear(8, 3).state_dict().items()}
    state["weight"] = state["weight"].to_sparse()
    torch.save(state, tmp_path / "net.pt")
    out = tmp_path / "ft"
    result = runner.invoke(
        app,
        [
            *("finetune", str(tmp_path / "net.pt"), "--model", f"{user}:linear"),
            *("--data", f"{user}:data", "--lr", "0.1", "--batch-size", "8", "--out", str(out)),
            *("--strategy", "sgd", "--budget", "2steps", "--train-time", "10s"),
        ],
    )
    assert_refused(result, out, "entry 'weight' is a sparse tensor")


# --- the batch as the paragraph says it -------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "said"),
    [
        (torch.zeros(2, 8), "a float32 tensor of shape 2×8"),
        ({"a": torch.zeros(2, 3, dtype=torch.int64)}, "a dict with keys a (int64 2×3)"),
        ((torch.zeros(2), torch.ones(2, 1)), "a tuple of float32 2, float32 2×1"),
        ({f"k{i}": torch.zeros(2) for i in range(9)}, "k4 (float32 2) and 4 more"),
        ({"x" * 500: torch.zeros(2)}, "…"),
    ],
    ids=["tensor", "dict", "tuple", "many-keys", "long-key"],
)
def test_describe_batch(batch, said: str) -> None:
    text = describe_batch(batch)
    assert said in text and len(text) < 300


def test_user_code_errors_are_value_errors() -> None:
    assert issubclass(UserCodeError, ValueError)  # exit 2 and one paragraph, like bad input


# --- --debug on every command, help lists generated from the registries --------------------


@pytest.mark.parametrize("command", ["train", "finetune", "compare", "study", "selftest", "bench"])
def test_every_command_takes_debug(command: str) -> None:
    import typer.main

    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    assert "--debug" in {opt for p in click_command.params for opt in p.opts}


@pytest.mark.parametrize("command", ["train", "study"])
def test_help_lists_every_registered_model(command: str) -> None:
    from hfft.models import PROBLEMS

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for name in PROBLEMS:
        assert name in result.output, name


@pytest.mark.parametrize("command", ["train", "finetune", "compare", "study", "selftest"])
def test_help_lists_every_data_set(command: str) -> None:
    from hfft.experiment.data.datasets import DATASETS

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for name in DATASETS:
        assert name in result.output, name
