"""Tests of model specs: ``--model-arg`` parsing, factory loading, model building."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from torch import nn

from hfft.experiment.data.datasets import DATASETS
from hfft.experiment.data.factories import (
    ModelSpecError,
    build_model,
    load_factory,
    parse_model_args,
)
from hfft.models import PROBLEMS
from hfft.models.small import cnn, mlp

DATA = {"num_classes": 10, "in_channels": 1, "input_size": 8}

# --------------------------------------------------------------------------- model args

PARSE_CASES = [
    # id, items, parsed
    ("int", ["width=64"], {"width": 64}),
    ("negative-int", ["shift=-3"], {"shift": -3}),
    ("float", ["p=0.5"], {"p": 0.5}),
    ("scientific", ["eps=1e-3"], {"eps": 1e-3}),
    ("str", ["act=relu"], {"act": "relu"}),
    ("true", ["flag=true"], {"flag": True}),
    ("false-any-case", ["flag=False"], {"flag": False}),
    ("none", ["norm=none"], {"norm": None}),
    ("null", ["norm=NULL"], {"norm": None}),
    ("quoted-number", ['name="1"'], {"name": "1"}),
    ("single-quoted", ["name='true'"], {"name": "true"}),
    ("equals-in-value", ["expr=a=b"], {"expr": "a=b"}),
    ("spaces", [" width = 8 "], {"width": 8}),
    ("several", ["width=64", "act=relu", "p=0.5", "flag=true"],
     {"width": 64, "act": "relu", "p": 0.5, "flag": True}),
    ("empty", [], {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("items", "expected"), [row[1:] for row in PARSE_CASES], ids=[row[0] for row in PARSE_CASES]
)
def test_parse_model_args(items, expected):
    parsed = parse_model_args(items)
    assert parsed == expected
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]


PARSE_ERRORS = [
    # id, items, message
    ("no-equals", ["width"], "not of the form KEY=VALUE"),
    ("no-key", ["=3"], "invalid name"),
    ("bad-key", ["1x=3"], "invalid name"),
    ("dashed-key", ["num-layers=3"], "invalid name"),
    ("no-value", ["width="], "has no value"),
    ("repeated", ["width=1", "width=2"], "more than once"),
]


@pytest.mark.parametrize(
    ("items", "message"), [row[1:] for row in PARSE_ERRORS], ids=[row[0] for row in PARSE_ERRORS]
)
def test_parse_model_args_errors(items, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_model_args(items)


# --------------------------------------------------------------------------- load_factory

USER_FILE = """
from torch import nn

NOT_CALLABLE = 3


def make(num_classes, width=4):
    layers = [nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def shapeless(hidden=5):
    return nn.Linear(7, hidden)


def with_kwargs(**kwargs):
    assert "num_classes" not in kwargs
    return nn.Linear(2, kwargs.get("out", 1))


def not_a_module(num_classes):
    return "model"


def broken():
    raise RuntimeError("boom")


def exits():
    import sys

    sys.exit(0)


class Factory:
    @staticmethod
    def create(num_classes, input_size):
        return nn.Linear(input_size, num_classes)
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(USER_FILE)
    return path


def test_load_factory_from_file(user_file):
    factory = load_factory(f"{user_file}:make")
    model = factory(num_classes=3, width=6)
    assert isinstance(model, nn.Module)
    assert model[-1].out_features == 3


def test_load_factory_from_file_with_sibling_import(tmp_path):
    (tmp_path / "helpers_for_hfft_test.py").write_text("WIDTH = 11\n")
    path = tmp_path / "model_with_import.py"
    path.write_text(
        textwrap.dedent(
            """
            from torch import nn
            from helpers_for_hfft_test import WIDTH

            def make():
                return nn.Linear(2, WIDTH)
            """
        )
    )
    assert load_factory(f"{path}:make")().out_features == 11


def test_load_factory_dotted_attribute(user_file):
    model = load_factory(f"{user_file}:Factory.create")(num_classes=4, input_size=9)
    assert model.in_features == 9


def test_load_factory_from_module_path():
    assert load_factory("hfft.models.small:mlp") is mlp


LOAD_ERRORS = [
    # id, spec (with {file} for the user file), message
    ("no-colon", "hfft.models.small", "neither a registered name nor of the form"),
    ("empty-attribute", "hfft.models.small:", "neither a registered name nor of the form"),
    ("file-not-found", "{dir}/missing.py:make", "does not exist"),
    ("module-not-importable", "hfft_no_such_module_xyz:make", "Cannot import module"),
    ("not-a-module-path", "not a module:make", "is not a Python module path"),
    ("attribute-missing-in-module", "hfft.models.small:nope", "has no attribute 'nope'"),
    ("attribute-missing-in-file", "{file}:nope", "has no attribute 'nope'"),
    ("not-callable", "{file}:NOT_CALLABLE", "is a int, not a callable"),
    ("file-fails-to-load", "{broken}:make", "raised ZeroDivisionError"),
]


@pytest.mark.parametrize(
    ("spec", "message"), [row[1:] for row in LOAD_ERRORS], ids=[row[0] for row in LOAD_ERRORS]
)
def test_load_factory_errors(spec, message, user_file, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("1 / 0\n")
    spec = spec.format(file=user_file, dir=tmp_path, broken=broken)
    with pytest.raises(ModelSpecError, match=message):
        load_factory(spec)


def test_errors_are_value_errors():
    assert issubclass(ModelSpecError, ValueError)


# --------------------------------------------------------------------------- build_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_build_registered_model():
    model = build_model("3c3d", {}, {"num_classes": 10, "in_channels": 3, "input_size": 32})
    assert n_params(model) == 895_210


def test_build_registered_model_with_args():
    model = build_model("mlp", {"width": 32, "depth": 1}, DATA)
    assert n_params(model) == n_params(mlp(width=32, depth=1))


def test_build_user_factory_passes_the_data_arguments_it_names(user_file):
    model = build_model(f"{user_file}:make", {"width": 6}, {**DATA, "num_classes": 3})
    assert model[-1].out_features == 3
    assert model[1].out_features == 6
    model = build_model(f"{user_file}:Factory.create", {}, DATA)
    assert (model.in_features, model.out_features) == (8, 10)


def test_build_user_factory_without_data_arguments(user_file):
    assert build_model(f"{user_file}:shapeless", {}, DATA).out_features == 5


def test_build_user_factory_with_var_kwargs_gets_only_model_args(user_file):
    assert build_model(f"{user_file}:with_kwargs", {"out": 4}, DATA).out_features == 4


def test_a_model_argument_named_like_a_data_argument_wins():
    # torchvision.models:resnet18(**kwargs) takes num_classes only from --model-arg
    assert build_model("mlp", {"num_classes": 3}, DATA)[-1].out_features == 3


def test_build_from_module_path():
    model = build_model("hfft.models.small:cnn", {"width": 4}, DATA)
    assert n_params(model) == n_params(cnn(width=4))


BUILD_ERRORS = [
    # id, spec, model args, message
    ("unknown-name", "resnet50", {}, r"Unknown model 'resnet50'; use one of 3c3d, "),
    ("unknown-arg-registered", "mlp", {"widht": 3}, r"does not take the argument 'widht'"),
    ("unknown-arg-user", "{file}:make", {"depth": 3}, r"it takes: num_classes, width\."),
    ("not-a-module", "{file}:not_a_module", {}, "returned a str, not a torch.nn.Module"),
    ("factory-raises", "{file}:broken", {}, "raised RuntimeError: boom"),
    ("registered-bad-value", "mlp", {"activation": "swish"}, "Unknown activation 'swish'"),
    ("factory-exits", "{file}:exits", {}, r"hfft called it as exits\(\); it raised SystemExit: 0"),
]


@pytest.mark.parametrize(
    ("spec", "args", "message"),
    [row[1:] for row in BUILD_ERRORS],
    ids=[row[0] for row in BUILD_ERRORS],
)
def test_build_model_errors(spec, args, message, user_file):
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec.format(file=user_file), args, DATA)


def test_modelspec_imports_without_torch():
    code = (
        "import sys, hfft.experiment.data.factories\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_file_that_exits_on_import_fails_to_load(tmp_path):
    # a script that parses its arguments on import must not end hfft as if it had finished
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ModelSpecError, match="hfft imported it; it raised SystemExit: 0"):
        load_factory(f"{script}:make")


def test_a_registered_model_builds_on_the_meta_device():
    model = build_model("mlp", {"width": 10**9}, DATA, device="meta")  # 256 GB if allocated
    assert next(model.parameters()).is_meta


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_every_registered_model_builds_on_the_meta_device(name: str):
    # a checkpoint's metadata is checked against the checkpoint on "meta" before any memory
    info = DATASETS[PROBLEMS[name].defaults.dataset.partition(":")[0]]
    data = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    model = build_model(name, {}, {**data, "input_size": info.input_size}, device="meta")
    assert all(p.is_meta for p in model.parameters())
