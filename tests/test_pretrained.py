"""transformers folders as checkpoints, and fine-tuned weights that from_pretrained loads back.

The user's project (``tests/hf_project.py``) trains a tiny BERT sequence classifier
and a tiny GPT-2 language model from local configs with its own loop on dict
batches and keeps each with ``save_pretrained`` (the language model in shards, a
tokenizer beside both). hfft fine-tunes the folders through the command line; the
user loads ``final/`` and ``best/`` back with ``from_pretrained`` and their own
evaluation gives what hfft recorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hfft.cli import app
from hfft.experiment.run.checkpoint import CheckpointError
from hfft.experiment.run.pretrained import read_folder, tied_entries
from hfft.experiment.run.starting_point import StartingPointOptions, load_starting_point

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install 'hfft[hf]'")
hp = pytest.importorskip("tests.hf_project")

runner = CliRunner()
PROJECT = Path(hp.__file__).resolve()
AUTO = {
    "classifier": transformers.AutoModelForSequenceClassification,
    "lm": transformers.AutoModelForCausalLM,
}
DATA = {"classifier": "review_classes", "lm": "counting_text"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user-models")
    hp.save_examples(folder)
    return folder


def hfft(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def finetune(
    folder: Path, name: str, out: Path, strategy: str, *extra: str, data: str = ""
) -> dict:
    hfft(
        "finetune", folder / name, "--data", f"{PROJECT}:{data or DATA[name]}",
        "--strategy", strategy, "--budget", "3steps", "--eval-points", "2", "--out", out,
        "--device", "cpu", *extra,
    )  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


def own_test(model_folder: Path, name: str) -> tuple[float, float]:
    """The user's own test loss and accuracy of a folder, loaded their way."""
    model = AUTO[name].from_pretrained(model_folder)
    x, y = getattr(hp, DATA[name])()[2]
    return hp.own_evaluation(model, x, y)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["classifier", "lm"])
@pytest.mark.parametrize("strategy", ["hf:m=128,cg_max_iter=10", "sgd"])
def test_a_folder_is_fine_tuned_and_loads_back_with_from_pretrained(
    models: Path, tmp_path: Path, name: str, strategy: str
) -> None:
    out = tmp_path / "run"
    sgd = ("--lr", "0.05", "--batch-size", "32") if strategy == "sgd" else ()
    log = finetune(models, name, out, strategy, *sgd)
    assert log["status"] == "completed"
    start = own_test(models / name, name)
    assert log["initial"]["test_loss"] == pytest.approx(start[0], rel=1e-5)
    assert log["initial"]["test_accuracy"] == pytest.approx(start[1])
    for stem in ("final", "best"):
        inputs = sorted(p.name for p in (models / name).iterdir())
        assert sorted(p.name for p in (out / stem).iterdir()) == inputs  # the same layout
        loss, accuracy = own_test(out / stem, name)
        assert log[stem]["test_loss"] == pytest.approx(loss, rel=1e-5)
        assert log[stem]["test_accuracy"] == pytest.approx(accuracy)
        for file in (out / stem).iterdir():
            assert log["files"][f"{stem}/{file.name}"]  # listed, so hfft may replace it
    # hfft's model of the folder gives the user's logits: the same outputs, not only the loss
    fitted = load_starting_point(
        out / "final", StartingPointOptions(data=f"{PROJECT}:{DATA[name]}")
    )
    x = getattr(hp, DATA[name])()[2][0]
    with torch.no_grad():
        ours = fitted.model.eval()(x)
        theirs = AUTO[name].from_pretrained(out / "final").eval()(**x).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer("t3 t4")["input_ids"] == [3, 4]
    assert log["final"]["test_loss"] != log["initial"]["test_loss"]


@pytest.mark.slow
def test_the_shards_keep_their_files_and_a_tied_weight_stays_tied(
    models: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    finetune(models, "lm", out, "hf:m=64,cg_max_iter=5")
    index = json.loads((out / "final" / "model.safetensors.index.json").read_text())
    source = json.loads((models / "lm" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == source["weight_map"]
    assert "lm_head.weight" not in index["weight_map"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.slow
def test_a_users_own_factory_builds_the_model_of_a_folder(models: Path, tmp_path: Path) -> None:
    """``--model``: the user's code builds it; a tied weight stored once fills both names."""
    factory = tmp_path / "mine.py"
    factory.write_text(
        "from transformers import GPT2LMHeadModel\n"
        "from tests.hf_project import lm_config\n\n"
        "def build():\n    return GPT2LMHeadModel(lm_config())\n"
    )
    out = tmp_path / "run"
    log = finetune(models, "lm", out, "hf:m=64,cg_max_iter=5", "--model", f"{factory}:build")
    assert log["initial"]["test_loss"] == pytest.approx(own_test(models / "lm", "lm")[0], rel=1e-5)
    assert own_test(out / "final", "lm")[0] == pytest.approx(log["final"]["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_compare_and_selftest_take_a_folder(models: Path, tmp_path: Path) -> None:
    data = ("--data", f"{PROJECT}:review_classes")
    said = hfft("selftest", models / "classifier", *data, "--batch-size", "64", "--device", "cpu")
    assert "selftest passed" in said and "BertForSequenceClassification" in said
    args = (
        "compare", models / "classifier", *data, "-s", "sgd", "-s", "hf:m=64,cg_max_iter=5",
        "--seeds", "1", "--budget", "2steps", "--lr", "0.05", "--batch-size", "32",
        "--out", tmp_path / "cmp", "--device", "cpu",
    )  # fmt: skip
    hfft(*args)
    runs = sorted((tmp_path / "cmp").glob("classifier/*/seed-0"))
    assert len(runs) == 2 and all((r / "final" / "model.safetensors").is_file() for r in runs)
    assert "0 runs done, 2 reused" in hfft(*args)


def test_the_input_folder_is_never_written(models: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (models / "classifier").iterdir()}
    hfft(
        "finetune", models / "classifier", "--data", f"{PROJECT}:review_classes",
        "--out", models / "classifier", "--budget", "1steps", code=2,
    )  # fmt: skip
    assert {p.name: p.stat().st_mtime_ns for p in (models / "classifier").iterdir()} == before


# --- what a folder may hold ------------------------------------------------------------------


def _copy(models: Path, tmp_path: Path, name: str = "classifier") -> Path:
    return Path(shutil.copytree(models / name, tmp_path / name))


def _config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_a_config_that_needs_remote_code_is_refused_and_runs_none(
    models: Path, tmp_path: Path
) -> None:
    folder = _copy(models, tmp_path)
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    _config(folder, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    said = hfft("finetune", folder, "--data", f"{PROJECT}:review_classes", code=2)
    assert "auto_map" in said and "never runs code a checkpoint names" in said
    assert not marker.exists()


@pytest.mark.parametrize(
    ("architectures", "said"),
    [
        (None, "names no model class"),
        (["os.system"], "does not ship"),
        (["AutoConfig"], "does not ship"),
        (["NoSuchModelForAnything"], "does not ship"),
    ],
    ids=["none", "dotted", "not-a-model", "unknown"],
)
def test_a_config_naming_no_shipped_model_class_is_refused(
    models: Path, tmp_path: Path, architectures: object, said: str
) -> None:
    folder = _copy(models, tmp_path)
    _config(folder, architectures=architectures)
    output = hfft("finetune", folder, "--data", f"{PROJECT}:review_classes", code=2)
    assert said in output and "--model file.py:factory" in output


def test_a_folder_without_its_weights_or_with_a_foreign_index_is_refused(
    models: Path, tmp_path: Path
) -> None:
    folder = _copy(models, tmp_path, "lm")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"not a \.safetensors file name inside the folder"):
        read_folder(folder)
    for name in ("model.safetensors.index.json", "config.json"):
        (folder / name).unlink()
        with pytest.raises(CheckpointError, match=r"holds no|without config\.json"):
            read_folder(folder)


def test_missing_weights_are_refused_not_initialised(models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(models, tmp_path)
    weights = load_file(folder / "model.safetensors")
    head = [k for k in weights if k.startswith("classifier.")]
    save_file({k: v for k, v in weights.items() if k not in head}, folder / "model.safetensors")
    output = hfft("finetune", folder, "--data", f"{PROJECT}:review_classes", code=2)
    assert "never initialises weights at random" in output and "classifier.weight" in output


def test_a_checkpoint_key_is_refused_for_a_folder(models: Path) -> None:
    output = hfft(
        "finetune", models / "classifier", "--data", f"{PROJECT}:review_classes",
        "--checkpoint-key", "state_dict_ema", code=2,
    )  # fmt: skip
    assert "model folder" in output


def test_tied_entries_fill_the_second_name_of_a_shared_tensor() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(4, 3), torch.nn.Linear(3, 4, bias=False))
    model[1].weight = model[0].weight
    stored = {"0.weight": torch.ones(4, 3)}
    assert tied_entries(model, stored) == {
        "0.weight": stored["0.weight"],
        "1.weight": stored["0.weight"],
    }


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"attn_implementation": "kernels-community/flash-attn"}, "may fetch and run as code"),
        ({"text_config": {"experts_implementation": "org/kernel"}}, "may fetch and run as code"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantized model"),
    ],
    ids=["attention-kernel", "nested-kernel", "quantized"],
)
def test_a_config_that_would_fetch_kernels_or_quantize_is_refused(
    models: Path, tmp_path: Path, change: dict, said: str
) -> None:
    folder = _copy(models, tmp_path)
    _config(folder, **change)
    assert said in hfft("finetune", folder, "--data", f"{PROJECT}:review_classes", code=2)


def test_model_safetensors_is_taken_before_an_index_as_from_pretrained_does(
    models: Path, tmp_path: Path
) -> None:
    folder = _copy(models, tmp_path, "lm")
    shutil.copy(models / "classifier" / "model.safetensors", folder / "model.safetensors")
    assert list(read_folder(folder).layout) == ["model.safetensors"]


def test_model_args_without_a_model_are_refused_for_a_folder(models: Path) -> None:
    output = hfft(
        "finetune", models / "classifier", "--data", f"{PROJECT}:review_classes",
        "--model-arg", "hidden_dropout_prob=0.5", code=2,
    )  # fmt: skip
    assert "built from its config.json" in output


@pytest.mark.slow
def test_a_stale_tensor_of_the_folder_is_left_out_of_final(models: Path, tmp_path: Path) -> None:
    """An older transformers saved buffers (``position_ids``) the model no longer has."""
    from safetensors.torch import load_file, save_file

    folder = _copy(models, tmp_path)
    weights = load_file(folder / "model.safetensors")
    stale = {"bert.embeddings.position_ids": torch.arange(12)[None]}
    save_file({**weights, **stale}, folder / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    log = finetune(tmp_path, "classifier", out, "hf:m=64,cg_max_iter=5")
    assert log["status"] == "completed"
    assert own_test(out / "final", "classifier")[0] == pytest.approx(
        log["final"]["test_loss"], rel=1e-5
    )


@pytest.mark.slow
def test_a_run_folder_chains_and_a_run_file_says_where_to_chain(
    models: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    finetune(models, "lm", first, "sgd", "--lr", "0.05", "--batch-size", "32")
    # final/ carries hfft's metadata: the training settings need not be given again
    log = finetune(first, "final", tmp_path / "second", "sgd", data=DATA["lm"])
    assert log["source"]["lr"] == 0.05 and log["source"]["batch_size"] == 32
    said = hfft(
        "finetune", first / "final.safetensors", "--data", f"{PROJECT}:counting_text", code=2
    )
    assert "fine-tune the run's final/ folder" in said


def test_two_model_folders_with_dotted_names_get_their_own_runs(tmp_path: Path) -> None:
    from hfft.analysis.compare import _checkpoint_keys

    folders = [tmp_path / "Llama-3.2-1B", tmp_path / "Llama-3.2-3B"]
    for folder in folders:
        folder.mkdir()
    assert _checkpoint_keys(folders) == ["Llama-3.2-1B", "Llama-3.2-3B"]
    files = [tmp_path / "a" / "ckpt.pt", tmp_path / "b" / "ckpt.pt", tmp_path / "b" / "ckpt.pt"]
    assert len(set(_checkpoint_keys(files))) == 3


@pytest.mark.slow
def test_a_damaged_run_of_a_folder_is_run_again(models: Path, tmp_path: Path) -> None:
    args = (
        "compare", models / "classifier", "--data", f"{PROJECT}:review_classes", "-s", "sgd",
        "--seeds", "1", "--budget", "1steps", "--lr", "0.05", "--batch-size", "32",
        "--out", tmp_path / "cmp", "--device", "cpu",
    )  # fmt: skip
    hfft(*args)
    run = tmp_path / "cmp" / "classifier" / "sgd" / "seed-0"
    (run / "metrics.json").write_text("{damaged")
    said = " ".join(hfft(*args).split())
    assert "1 runs done, 0 reused" in said, said
    assert json.loads((run / "metrics.json").read_text())["files"]["final/model.safetensors"]
