"""Checkpoint files: round trips, PyTorch forms, refusal of unsafe or broken files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from hfft import _io
from hfft._io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from hfft.experiment.run.checkpoint import (
    Checkpoint,
    CheckpointError,
    apply_state_dict,
    load_checkpoint,
    save_checkpoint,
)


def bn_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    )


def trained_state(model: nn.Module) -> dict[str, Tensor]:
    """A state dict with non-default BatchNorm statistics and counter."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 1, 6, 6))
    return model.state_dict()


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


METADATA = {"model": "cnn", "model_args": {"width": 8}, "epoch": 3, "elapsed": 1.5, "lr": 0.1}


# --- safetensors ---------------------------------------------------------------------------


def test_round_trip_with_metadata_and_batchnorm_buffers(tmp_path: Path) -> None:
    sd = trained_state(bn_model())
    assert sd["1.num_batches_tracked"].dtype == torch.int64
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, sd, METADATA)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.format == "safetensors"
    assert ckpt.path == path
    assert ckpt.metadata == METADATA
    assert_same(ckpt.state_dict, sd)
    assert int(ckpt.state_dict["1.num_batches_tracked"]) == 3

    model = bn_model()
    apply_state_dict(model, ckpt.state_dict)
    assert_same(model.state_dict(), sd)


def test_file_is_plain_safetensors(tmp_path: Path) -> None:
    sd = trained_state(bn_model())
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, sd, METADATA)
    assert_same(load_file(path), sd)


def test_file_says_it_is_a_pytorch_safetensors_file(tmp_path: Path) -> None:
    """``transformers``' ``from_pretrained`` and timm refuse a file without
    ``"format": "pt"`` in its header; hfft's own metadata sits beside it."""
    from safetensors import safe_open

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, trained_state(bn_model()), METADATA)
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "pt" and set(header) == {"format", "hfft"}
    assert load_checkpoint(path).metadata == METADATA


def test_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    w = torch.randn(4, 3)
    sd = {"a": w, "tied": w, "t": w.t(), "slice": w[1:3]}
    save_checkpoint(tmp_path / "c.safetensors", sd, {})
    assert_same(load_checkpoint(tmp_path / "c.safetensors").state_dict, sd)


def test_foreign_safetensors_without_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata is None
    assert torch.equal(ckpt.state_dict["w"], torch.ones(2))


def test_safetensors_recognised_by_content(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})
    ckpt = load_checkpoint(path)
    assert ckpt.format == "safetensors"
    assert ckpt.metadata == {"epoch": 1}


def test_non_tensor_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="'step' is a int"):
        save_checkpoint(tmp_path / "c.safetensors", {"step": 3}, {})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


# --- PyTorch files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"model": sd, "epoch": 7, "optimizer": {"lr": 0.1}}, id="model"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 7}, id="state_dict"),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_forms(tmp_path: Path, wrap, suffix: str) -> None:
    sd = trained_state(bn_model())
    path = tmp_path / f"ckpt{suffix}"
    torch.save(wrap(sd), path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torch"
    assert ckpt.metadata is None
    assert_same(ckpt.state_dict, sd)
    apply_state_dict(bn_model(), ckpt.state_dict)


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _pickled(obj: object, how: str, path: Path) -> None:
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))


@pytest.mark.parametrize("how", ["torch.save", "pickle-2", "pickle-4"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    # (plain pickle cannot hold a tensor that weights_only accepts: payload alone)
    obj = {"payload": _Payload(marker)}
    _pickled({"weight": torch.zeros(2), **obj} if how == "torch.save" else obj, how, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt") as info:
        load_checkpoint(path)
    assert not marker.exists()
    if how != "pickle-4":  # protocol 4 is refused before the payload's global is even read
        assert "execute code" in str(info.value)
        assert "system" in str(info.value)


def test_payload_would_execute_with_unsafe_pickle(tmp_path: Path) -> None:
    # guards the test above: its payload really does run when unpickled unsafely
    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(os.urandom(512), id="random"),
        pytest.param(b"", id="empty"),
        pytest.param(b"hello world\n", id="text"),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_file(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad"):
        load_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ckpt{suffix}"
    sd = {"w": torch.randn(100)}
    if suffix == ".pt":
        torch.save(sd, path)
    else:
        save_checkpoint(path, sd, METADATA)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        pytest.param({}, "holds no tensors", id="empty-dict"),
        pytest.param({"epoch": 3, "lr": 0.1}, "holds no tensors", id="no-tensors"),
        pytest.param({"model": {"epoch": 3}}, "holds no tensors under 'model'", id="nested-empty"),
        pytest.param({"w": torch.ones(1), "epoch": 3}, "'epoch' is a int", id="mixed"),
        pytest.param([torch.ones(1)], "holds a list", id="list"),
        pytest.param(torch.ones(3), "holds a Tensor", id="tensor"),
    ],
)
def test_no_state_dict(tmp_path: Path, obj: object, match: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


# --- applying to a model -------------------------------------------------------------------


def test_mismatch_message_names_keys_and_shapes() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    sd = nn.Sequential(nn.Linear(4, 5), nn.Linear(3, 2)).state_dict()
    del sd["1.bias"]
    sd["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        apply_state_dict(model, sd)
    msg = str(info.value)
    assert "missing keys 1.bias" in msg
    assert "unexpected keys extra" in msg
    assert "0.weight (checkpoint 5×4, model 3×4)" in msg
    assert "0.bias (checkpoint 5, model 3)" in msg
    assert msg.count(".") >= 1 and "\n" not in msg


def test_mismatch_message_truncates_long_lists() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(CheckpointError, match=r"missing keys 0\.weight, .* and 15 more\.$"):
        apply_state_dict(model, {})


def test_model_unchanged_on_mismatch() -> None:
    model = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        apply_state_dict(model, {"weight": torch.zeros(2, 3)})
    assert_same(model.state_dict(), before)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapper_prefix_is_stripped(prefix: str) -> None:
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    apply_state_dict(dst, {prefix + k: v for k, v in src.state_dict().items()})
    assert_same(dst.state_dict(), src.state_dict())


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_writers(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "λ = 1\n")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5, None]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "λ = 1\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2.5, None]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(tmp_path / "f") == expected


def test_failed_replace_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_interrupt_during_write_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"step": 1})

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_unserialisable_metadata_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"device": torch.device("cpu")})
    assert load_checkpoint(path).metadata == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "m.json", {"x": object()})
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_weights_of_another_kind_are_refused(dtype: torch.dtype) -> None:
    model = nn.Linear(3, 2)
    bad = {k: v.to(dtype) for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="another kind than the model's: weight"):
        apply_state_dict(model, bad)
    assert_same(model.state_dict(), before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_other_float_precisions_are_cast_with_a_note(dtype: torch.dtype) -> None:
    model = nn.Linear(3, 2)
    state = {k: v.to(dtype) for k, v in nn.Linear(3, 2).state_dict().items()}
    notes = apply_state_dict(model, state)
    name = str(dtype).removeprefix("torch.")
    assert notes == [
        f"the checkpoint's {name} to float32 tensors were cast to the model's precision"
    ]
    assert model.weight.dtype == torch.float32
    assert torch.equal(model.weight, state["weight"].float())
    assert apply_state_dict(model, model.state_dict()) == []  # same precision: nothing to say


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(value: float) -> None:
    model = nn.Linear(3, 2)
    state = model.state_dict()
    state["bias"] = state["bias"].clone()
    state["bias"][1] = value
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in bias"):
        apply_state_dict(nn.Linear(3, 2), state)


def test_a_compressed_torch_file_is_refused_before_it_expands(tmp_path: Path) -> None:
    import zipfile

    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(4_000_000)}, plain)  # 16 MB of zeros
    squeezed = tmp_path / "squeezed.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(squeezed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert squeezed.stat().st_size < plain.stat().st_size / 100
    with pytest.raises(CheckpointError, match="compressed records would expand to 15 MiB"):
        load_checkpoint(squeezed)
    assert load_checkpoint(plain).state_dict["weight"].numel() == 4_000_000  # as saved: fine


def test_metadata_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"loss": float("nan"), "acc": [1.0, float("inf")]})
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        text = f.metadata()["hfft"]
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "acc": [1.0, None]}


# --- issue #23: values and entries that would make a broken run look completed -----------


def test_float64_values_beyond_float32_are_refused() -> None:
    # finite in float64, infinite once cast to the model's float32
    state = {k: v.double() for k, v in nn.Linear(3, 2).state_dict().items()}
    state["weight"][1, 2] = 1e300
    with pytest.raises(CheckpointError, match=r"beyond the range of the model's float32 in weight"):
        apply_state_dict(nn.Linear(3, 2), state)


def test_a_key_that_is_not_a_name_is_said_so(tmp_path: Path) -> None:
    torch.save({1: torch.zeros(2), "bias": torch.zeros(2)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt")
    assert "has the key 1 (int)" in str(info.value)
    assert "not a tensor" not in str(info.value)


def _layouts() -> dict[str, Tensor]:
    import warnings

    w = torch.randn(2, 3)
    with warnings.catch_warnings():  # CSR is "beta", quantized tensors deprecated
        warnings.simplefilter("ignore")
        return {
            "sparse": w.to_sparse(),
            "sparse-csr": w.to_sparse_csr(),
            "quantized": torch.quantize_per_tensor(w, 0.1, 0, torch.qint8),
            "meta": torch.empty(2, 3, device="meta"),
        }


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("sparse", "a sparse tensor (layout sparse_coo)"),
        ("sparse-csr", "a sparse tensor (layout sparse_csr)"),
        ("quantized", "a quantized tensor"),
        ("meta", "a meta tensor"),
    ],
)
def test_a_tensor_without_plain_values_is_named(tmp_path: Path, kind: str, said: str) -> None:
    torch.save({"weight": _layouts()[kind], "bias": torch.zeros(2)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt")
    message = str(info.value)
    assert f"entry 'weight' is {said}" in message, message
    assert message.count(".") <= 3  # one sentence (the path and 'e.g. .to_dense()' aside)


def test_long_keys_are_cut_in_messages() -> None:
    state = {"x" * 1_000_000: torch.zeros(2), **nn.Linear(3, 2).state_dict()}
    with pytest.raises(CheckpointError) as info:
        apply_state_dict(nn.Linear(3, 2), state)
    assert len(str(info.value)) < 400 and "…" in str(info.value)


def test_a_timm_style_checkpoint_with_its_args_is_read(tmp_path: Path) -> None:
    """timm's CheckpointSaver stores the script's ``args`` (an ``argparse.Namespace``,
    paths inside) beside the weights; those are plain data, not code."""
    import argparse
    import pathlib

    sd = trained_state(bn_model())
    args = argparse.Namespace(lr=0.1, output=pathlib.PurePosixPath("out"), data=pathlib.Path("d"))
    torch.save({"epoch": 3, "arch": "bn", "state_dict": sd, "args": args}, tmp_path / "t.pth.tar")
    assert_same(load_checkpoint(tmp_path / "t.pth.tar").state_dict, sd)


def test_a_lightning_style_checkpoint_with_path_hyperparameters_is_read(tmp_path: Path) -> None:
    import pathlib

    sd = trained_state(bn_model())
    hp = {"data_dir": pathlib.Path("/data"), "lr": 0.1}
    torch.save({"state_dict": sd, "hyper_parameters": hp, "epoch": 1}, tmp_path / "l.ckpt")
    assert_same(load_checkpoint(tmp_path / "l.ckpt").state_dict, sd)


class _Config:  # a class of the user's script: importing it would run their module
    def __init__(self) -> None:
        self.lr = 0.1


def test_another_object_beside_the_weights_is_refused_by_name(tmp_path: Path) -> None:
    import argparse

    obj = {"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1),
           "config": _Config()}  # fmt: skip
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"test_checkpoint\._Config") as info:
        load_checkpoint(tmp_path / "c.pt")
    assert "Namespace" not in str(info.value).split("(")[1].split(")")[0]  # only what is refused


def test_a_hostile_global_among_inert_ones_is_named_and_not_run(tmp_path: Path) -> None:
    import argparse

    marker = tmp_path / "executed"
    obj = {"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1),
           "payload": _Payload(marker)}  # fmt: skip
    torch.save(obj, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="system") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "execute code" in str(info.value)
    assert not marker.exists()


def _with_ema(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A timm-style file: the trained weights and their EMA, both state dicts."""
    sd = trained_state(bn_model())
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 9, "state_dict": sd, "state_dict_ema": ema}, path)
    return path, sd, ema


def test_several_state_dicts_the_default_is_said_and_a_key_picks_another(tmp_path: Path) -> None:
    path, sd, ema = _with_ema(tmp_path)
    default = load_checkpoint(path)
    assert_same(default.state_dict, sd)
    assert default.note is not None
    assert "'state_dict', 'state_dict_ema'" in default.note and "--checkpoint-key" in default.note
    picked = load_checkpoint(path, "state_dict_ema")
    assert_same(picked.state_dict, ema)
    assert picked.note is None
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": sd, "epoch": 1}, plain)
    assert load_checkpoint(plain).note is None  # one state dict: nothing to say


def test_a_checkpoint_key_that_is_not_there_names_the_ones_that_are(tmp_path: Path) -> None:
    path, _, _ = _with_ema(tmp_path)
    with pytest.raises(CheckpointError, match="'state_dict', 'state_dict_ema'"):
        load_checkpoint(path, "model_ema")
    with pytest.raises(CheckpointError, match="no state dict under --checkpoint-key 'epoch'"):
        load_checkpoint(path, "epoch")
    only_ema = tmp_path / "ema.pt"
    torch.save({"model_ema": trained_state(bn_model())}, only_ema)
    with pytest.raises(CheckpointError, match="pass --checkpoint-key model_ema"):
        load_checkpoint(only_ema)
    save_checkpoint(tmp_path / "c.safetensors", trained_state(bn_model()), {})
    with pytest.raises(CheckpointError, match="safetensors file"):
        load_checkpoint(tmp_path / "c.safetensors", "state_dict")


# --- issue #26: OmegaConf configs and enums in torch.save files (Lightning's hyper_parameters) ---


def _hyperparameters() -> dict[str, object]:
    """What ``save_hyperparameters()`` keeps of a run configured by OmegaConf and argparse."""
    import argparse
    import pathlib

    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"lr": 0.1, "optim": {"name": "sgd", "betas": [0.9, 0.99], "nesterov": True},
         "data": {"root": "/data", "split": None}, "ref": "${lr}"}
    )  # fmt: skip
    return {"cfg": cfg, "lst": OmegaConf.create([1, 2]),
            "ns": argparse.Namespace(seed=0, out=pathlib.Path("runs")),
            "path": pathlib.Path("/data/x")}  # fmt: skip


def test_omegaconf_hyperparameters_are_read_as_data(tmp_path: Path) -> None:
    pytest.importorskip("omegaconf", reason="OmegaConf configs are read only with omegaconf")
    sd = trained_state(bn_model())
    path = tmp_path / "l.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": _hyperparameters(), "epoch": 1}, path)
    assert_same(load_checkpoint(path).state_dict, sd)


def test_a_config_as_the_hyperparameters_is_never_resolved(tmp_path: Path) -> None:
    """``save_hyperparameters(cfg)`` stores the DictConfig itself: a ``Mapping`` whose values,
    once read, resolve interpolations and raise for ``???``; hfft reads none of them."""
    omegaconf = pytest.importorskip("omegaconf", reason="OmegaConf configs need omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"lr": "???", "ref": "${missing}", "home": "${oc.env:HOME}", "nested": {"a": 1}}
    )
    sd = trained_state(bn_model())
    path = tmp_path / "c.ckpt"
    torch.save({"model": cfg, "state_dict": sd, "hyper_parameters": cfg,
                "hparams_type": omegaconf.DictConfig}, path)  # fmt: skip
    assert_same(load_checkpoint(path).state_dict, sd)
    torch.save(cfg, tmp_path / "only.pt")
    with pytest.raises(CheckpointError, match="holds a DictConfig, not a state dict"):
        load_checkpoint(tmp_path / "only.pt")


@pytest.mark.parametrize("container", ["dict", "DictConfig"])
def test_a_user_enum_is_refused_by_name_and_its_module_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, container: str
) -> None:
    import importlib
    import sys

    marker = tmp_path / "imported"
    name = f"user_colours_{container.lower()}"
    (tmp_path / f"{name}.py").write_text(
        "import enum, pathlib\n"
        "pathlib.Path(__file__).with_name('imported').touch()  # a side effect on import\n"
        "class Colour(enum.Enum):\n"
        "    RED = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # importable: hfft still must not import it
    colour = importlib.import_module(name).Colour.RED
    hp: object = {"colour": colour}
    if container == "DictConfig":
        omegaconf = pytest.importorskip("omegaconf", reason="a config needs omegaconf")
        hp = omegaconf.OmegaConf.create(hp)
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": hp}, tmp_path / "e.pt")
    marker.unlink()
    monkeypatch.delitem(sys.modules, name)
    with pytest.raises(CheckpointError, match=rf"\({name}\.Colour\)") as info:
        load_checkpoint(tmp_path / "e.pt")
    assert "an enum's .value" in str(info.value)
    assert not marker.exists() and name not in sys.modules


def test_without_omegaconf_a_config_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    pytest.importorskip("omegaconf", reason="writing the config needs omegaconf")
    sd = trained_state(bn_model())
    torch.save({"state_dict": sd, "hyper_parameters": _hyperparameters()}, tmp_path / "l.ckpt")
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # import omegaconf raises ImportError
    with pytest.raises(CheckpointError, match=r"pip install 'hfft\[lightning\]'") as info:
        load_checkpoint(tmp_path / "l.ckpt")
    assert str(info.value).count(". ") == 0  # one sentence
    plain = tmp_path / "plain.ckpt"  # a file without a config does not need it
    torch.save({"state_dict": sd, "hyper_parameters": {"lr": 0.1}}, plain)
    assert_same(load_checkpoint(plain).state_dict, sd)


@pytest.mark.slow
# lightning's own: torch deprecates a pytree class it uses, and 16 samples need no workers
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
@pytest.mark.parametrize("as_config", [False, True], ids=["init-arguments", "one-config"])
def test_a_lightning_trainer_checkpoint_with_a_config_is_read(
    tmp_path: Path, as_config: bool
) -> None:
    """A real ``Trainer.save_checkpoint`` file: ``save_hyperparameters()`` of a DictConfig, a
    Namespace and a Path (a plain dict of them), or of one DictConfig (stored as it is)."""
    pl = pytest.importorskip("lightning.pytorch", reason="a real checkpoint needs lightning")
    hp = _hyperparameters()

    class Tiny(pl.LightningModule):
        def __init__(self, cfg: object, ns: object, path: object, as_config: bool) -> None:
            super().__init__()
            if as_config:
                self.save_hyperparameters(cfg)
            else:
                self.save_hyperparameters(ignore=["as_config"])
            self.net = nn.Linear(4, 3)

        def training_step(self, batch: list[Tensor], _: int) -> Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    module = Tiny(hp["cfg"], hp["ns"], hp["path"], as_config)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=2, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    named = torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "tiny.ckpt"))
    assert "omegaconf.dictconfig.DictConfig" in named
    loaded = load_checkpoint(tmp_path / "tiny.ckpt")
    assert_same(loaded.state_dict, {f"net.{k}": v for k, v in module.net.state_dict().items()})
    assert loaded.optimizer_state is not None
