"""timm models by name (``--model timm:NAME``) and checkpoints written by timm's CheckpointSaver.

The unit tests build timm's tiny registered test architectures (``test_resnet``,
``test_vit``) and check every refusal: names and arguments that would make timm
download or read weights, unknown names, timm missing, and the same from a
checkpoint's metadata. The end-to-end tests train ``test_resnet`` with the
user's plain loop of ``tests/timm_project.py``, save it with timm's own
``CheckpointSaver`` (its ``args`` Namespace and an EMA copy) and hand the file
to ``hfft finetune``: hfft's starting evaluation equals the user's own, and
``final.safetensors`` loads back into ``timm.create_model`` strictly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

timm = pytest.importorskip("timm", reason="timm models need the hf extra (timm)")

import tests.timm_project as tp  # noqa: E402
from hfft.cli import app  # noqa: E402
from hfft.experiment.data.factories import ModelSpecError, build_model  # noqa: E402
from hfft.experiment.data.timm_models import TIMM_REFUSED  # noqa: E402
from hfft.experiment.run.starting_point import StartingPointError, trusted_metadata  # noqa: E402

DATA = {"num_classes": 10, "in_channels": 1, "input_size": 16, "input_shape": (1, 16, 16)}
runner = CliRunner()


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("timm.create_model was called")


# --- building by name ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_the_data_gives_classes_and_channels_as_timms_in_chans(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(f"timm:{arch}", {}, DATA)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert model.pretrained_cfg["architecture"] == arch


def test_a_model_argument_wins_over_the_data() -> None:
    model = build_model("timm:test_resnet", {"num_classes": 4, "in_chans": 3}, DATA)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    regression = {**DATA, "num_classes": None}  # nothing to pass: timm's own default
    assert build_model("timm:test_resnet", {}, regression).num_classes == 1000


@pytest.mark.parametrize("key", list(TIMM_REFUSED))
def test_arguments_that_name_weights_are_refused_before_timm_runs(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timm, "create_model", _never_called)
    with pytest.raises(ModelSpecError, match=rf"'{key}' .*never downloads\.$") as info:
        build_model("timm:test_resnet", {key: "x"}, DATA)
    assert str(info.value).count(". ") == 0  # one sentence


@pytest.mark.parametrize(
    "name",
    ["hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18", "local-dir:/tmp/model",
     "timm/resnet18", "..\\resnet18"],
)  # fmt: skip
def test_hub_and_folder_names_are_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timm, "create_model", _never_called)
    with pytest.raises(ModelSpecError, match="names weights to download or files"):
        build_model(f"timm:{name}", {}, DATA)


def test_a_pretrained_tag_is_refused_naming_the_architecture() -> None:
    with pytest.raises(ModelSpecError, match="name the architecture, timm:resnet18,"):
        build_model("timm:resnet18.a1_in1k", {}, DATA)


def test_an_unknown_name_offers_close_ones() -> None:
    with pytest.raises(ModelSpecError, match=r"no model 'resnt18'; close ones: resnet18\b"):
        build_model("timm:resnt18", {}, DATA)
    with pytest.raises(ModelSpecError, match=r"no model 'x+…' \(timm.list_models"):
        build_model("timm:" + "x" * 10_000, {}, DATA)  # clipped, no close ones searched


def test_in_channels_is_called_in_chans_in_timm() -> None:
    with pytest.raises(ModelSpecError, match="pass --model-arg in_chans=N"):
        build_model("timm:test_resnet", {"in_channels": 1}, DATA)


def test_an_argument_the_architecture_does_not_take_names_the_call() -> None:
    with pytest.raises(ModelSpecError) as info:
        build_model("timm:test_resnet", {"width": 3}, DATA)
    message = str(info.value)
    call = "timm.create_model('test_resnet', pretrained=False, num_classes=10, in_chans=1"
    assert call in message
    assert "unexpected keyword argument 'width'" in message


def test_without_timm_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    extra = r"^timm models need the hf extra: pip install 'hfft\[hf\]'\.$"
    with pytest.raises(ModelSpecError, match=extra):
        build_model("timm:test_resnet", {}, DATA)


# --- from a checkpoint's metadata --------------------------------------------------------------


def _trusted(meta: dict[str, object]) -> dict[str, object]:
    return trusted_metadata(Path("c.safetensors"), meta, model_given=False, data_given=True)


def test_metadata_may_name_a_registered_architecture() -> None:
    meta = {"model": "timm:test_resnet", "model_args": {"num_classes": 10, "in_chans": 1}}
    got = _trusted(meta)
    assert got["model"] == "timm:test_resnet" and got["model_args"] == meta["model_args"]


@pytest.mark.parametrize(
    ("model", "args", "match"),
    [
        ("timm:hf-hub:timm/resnet18", {}, "names weights to download or files"),
        ("timm:test_resnet", {"pretrained": True}, "'pretrained' would download"),
        ("timm:test_resnet", {"checkpoint_path": "/etc/passwd"}, "'checkpoint_path' names a file"),
        ("timm:not_a_model", {}, "timm has no model 'not_a_model'"),
        ("timm:test_resnet", {"num_classes": [10]}, "not plain values"),
    ],
    ids=["hub", "pretrained", "checkpoint-path", "unknown", "not-plain"],
)
def test_metadata_that_would_download_or_read_files_is_refused(
    model: str, args: dict[str, object], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timm, "create_model", _never_called)
    with pytest.raises(StartingPointError, match=match):
        _trusted({"model": model, "model_args": args})


def test_metadata_naming_timm_without_timm_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(StartingPointError, match=r"cannot take: timm models need the hf extra"):
        _trusted({"model": "timm:test_resnet"})


def test_metadata_of_an_oversized_model_is_refused_before_it_takes_memory(tmp_path: Path) -> None:
    """The shapes are checked on the meta device first: 10⁶ × the MLP of a ViT would take
    about 200 GB if it were built."""
    from hfft.experiment.run.checkpoint import CheckpointError, save_checkpoint
    from hfft.experiment.run.starting_point import StartingPointOptions, load_starting_point

    path = tmp_path / "vit.safetensors"
    args = {"mlp_ratio": 1e6, "num_classes": 10, "in_chans": 1, "img_size": 16}
    weights = {"w": torch.zeros(16, 16)}  # as large as the integer arguments, not the model
    save_checkpoint(path, weights, {"model": "timm:test_vit", "model_args": args})
    options = StartingPointOptions(data=f"{tp.__file__}:few_digits")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_starting_point(path, options)


# --- end to end: a CheckpointSaver file, hfft finetune, and back into timm --------------------


@pytest.fixture(scope="module")
def saver_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("timm-run")
    return tp.train_and_save(folder, data=tp.few_digits, epochs=2)


def _finetune(ckpt: Path, out: Path, *extra: str, strategy: str) -> dict[str, object]:
    result = runner.invoke(
        app,
        [
            "finetune", str(ckpt), "--data", f"{Path(tp.__file__).resolve()}:few_digits",
            "--strategy", strategy, "--budget", "2steps", "--eval-points", "1",
            "--out", str(out), "--json", "--device", "cpu", *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def _reloaded(final: Path) -> tuple[float, float]:
    """The user's evaluation of hfft's final.safetensors, loaded strictly into timm's model."""
    from safetensors.torch import load_file

    model = timm.create_model(tp.ARCH, num_classes=tp.CLASSES, in_chans=1)
    model.load_state_dict(load_file(final), strict=True)
    _, _, (test_x, test_y) = tp.few_digits()
    return tp.own_evaluation(model, test_x, test_y)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "strategy", "extra"),
    [
        (None, "hf:m=64,cg_max_iter=5", ()),
        ("state_dict_ema", "hf:m=64,cg_max_iter=5", ()),
        (None, "sgd", ("--lr", "0.05", "--batch-size", "32")),
    ],
    ids=["hf", "hf-ema", "sgd"],
)
def test_a_checkpoint_saver_file_is_fine_tuned_and_loads_back_into_timm(
    saver_file: Path, tmp_path: Path, key: str | None, strategy: str, extra: tuple[str, ...]
) -> None:
    saved = torch.load(saver_file, weights_only=False)  # the test's own file
    assert {"epoch", "arch", "args", "optimizer", "version", "state_dict_ema"} <= saved.keys()
    own_loss, own_accuracy = tp.evaluate_file(saver_file, key or "state_dict", data=tp.few_digits)
    model = ("--model", "timm:test_resnet", "--model-arg", f"num_classes={tp.CLASSES}")
    picked = ("--checkpoint-key", key) if key else ()
    result = _finetune(saver_file, tmp_path / "out", *model, *picked, *extra, strategy=strategy)
    initial, final = result["initial"], result["final"]
    assert isinstance(initial, dict) and isinstance(final, dict)
    assert initial["test_loss"] == pytest.approx(own_loss, abs=1e-5)
    assert initial["test_accuracy"] == pytest.approx(own_accuracy)
    loss, accuracy = _reloaded(tmp_path / "out" / "final.safetensors")
    assert loss == pytest.approx(final["test_loss"], abs=1e-5)
    assert accuracy == pytest.approx(final["test_accuracy"])
    if key is None and strategy == "sgd":  # the metadata names timm:NAME: no --model needed
        again = _finetune(tmp_path / "out" / "final.safetensors", tmp_path / "again",
                          "--lr", "0.05", "--batch-size", "32", strategy="sgd")  # fmt: skip
        assert again["initial"]["test_loss"] == pytest.approx(loss, abs=1e-5)  # type: ignore[index]


@pytest.mark.parametrize(
    ("argv", "timm_missing", "said"),
    [
        (("--model", "timm:resnet18.a1_in1k"), False, "name the architecture, timm:resnet18"),
        (("--model", "timm:test_resnet", "--model-arg", "pretrained=true"), False, "download"),
        (("--model", "timm:test_resnet"), True, "pip install 'hfft[hf]'"),
    ],
    ids=["pretrained-tag", "pretrained-arg", "timm-missing"],
)
def test_the_command_line_refuses_in_one_sentence_with_exit_code_2(
    saver_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    timm_missing: bool,
    said: str,
) -> None:
    if timm_missing:
        monkeypatch.setitem(sys.modules, "timm", None)
    data = f"{Path(tp.__file__).resolve()}:few_digits"
    out = tmp_path / "out"
    args = ["finetune", str(saver_file), *argv, "--data", data, "--out", str(out)]
    result = runner.invoke(app, [*args, "--budget", "1steps", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output
    assert not out.exists()
