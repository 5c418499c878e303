"""Strategy parsing, its option table, and the table's agreement with HessianFree."""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import pytest

from hfft.experiment.strategies.auto import parts
from hfft.experiment.strategies.catalog import AUTO_OPTIONS, HF_OPTIONS, SGD_OPTIONS
from hfft.experiment.strategies.registry import Strategy, entries, parse_strategy

SGD_STRATEGIES = ("sgd", "sgd-div10", "sgd-cosine", "sgd-plateau")

FULL_HF = (
    "hf:m=1024,damping=0.5,curvature=hessian,preconditioner=empirical-fisher,chunk_size=512,"
    "cg_max_iter=100,martens_criterion=false,cg_tol=1e-8,adapt_damping=no,cg_decay_x0=0,"
    "use_cg_backtracking=0,lr=0.5,use_linesearch=yes,backend=backpack,model_mode=train,"
    "cache_chunks=true,preconditioner_exponent=1,linesearch_beta=0.5,linesearch_c=0.1,"
    "linesearch_max_tries=5"
)


def test_names() -> None:
    assert tuple(e.name for e in entries()) == (
        *SGD_STRATEGIES,
        "hf",
        "auto",
        "swa",
        "lbfgs",
        "adam",
        "adamw",
        "sgd-schedulefree",
        "kfac",
        "soap",
        "muon",
    )


@pytest.mark.parametrize(
    ("text", "name", "options", "label"),
    [
        ("sgd", "sgd", {}, "sgd"),
        ("sgd-cosine", "sgd-cosine", {}, "sgd-cosine"),
        (" SGD-Plateau ", "sgd-plateau", {}, "sgd-plateau"),
        ("hf", "hf", {}, "hf"),
        ("hf:m=2048", "hf", {"m": 2048}, "hf:m=2048"),
        ("hf:damping=0.5,m=2048", "hf", {"m": 2048, "damping": 0.5}, "hf:m=2048,damping=0.5"),
        ("hf:damping=1", "hf", {"damping": 1.0}, "hf:damping=1.0"),
        (
            "hf: m = 64 , cg-max-iter=10",
            "hf",
            {"m": 64, "cg_max_iter": 10},
            "hf:m=64,cg_max_iter=10",
        ),
        (
            "hf:preconditioner=none,chunk_size=None",
            "hf",
            {"preconditioner": None, "chunk_size": None},
            "hf:preconditioner=none,chunk_size=none",
        ),
        ("hf:curvature=Hessian", "hf", {"curvature": "hessian"}, "hf:curvature=hessian"),
        ("hf:cg_tol=1e-8", "hf", {"cg_tol": 1e-8}, "hf:cg_tol=1e-08"),
        (
            "sgd:momentum=0.9,lr=0.01,batch_size=128",
            "sgd",
            {"lr": 0.01, "batch_size": 128, "momentum": 0.9},
            "sgd:lr=0.01,batch_size=128,momentum=0.9",
        ),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_parse_strategy(text: str, name: str, options: dict[str, Any], label: str) -> None:
    strategy = parse_strategy(text)
    assert strategy == Strategy(name, options)
    assert strategy.options == options
    assert strategy.label == label == str(strategy)
    assert parse_strategy(label) == strategy
    assert strategy.is_hf == (name == "hf")


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("TRUE", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("No", False),
    ],
)
def test_booleans(word: str, value: bool) -> None:
    assert parse_strategy(f"hf:use_linesearch={word}").options == {"use_linesearch": value}


def test_full_hf_strategy() -> None:
    strategy = parse_strategy(FULL_HF)
    assert strategy.batch_size == 1024
    assert {k: v for k, v in strategy.options.items() if k != "m"} == {
        "curvature": "hessian",
        "damping": 0.5,
        "adapt_damping": False,
        "cg_max_iter": 100,
        "cg_tol": 1e-8,
        "martens_criterion": False,
        "cg_decay_x0": 0.0,
        "use_cg_backtracking": False,
        "lr": 0.5,
        "use_linesearch": True,
        "preconditioner": "empirical-fisher",
        "chunk_size": 512,
        "backend": "backpack",
        "model_mode": "train",
        "cache_chunks": True,
        "preconditioner_exponent": 1.0,
        "linesearch_beta": 0.5,
        "linesearch_c": 0.1,
        "linesearch_max_tries": 5,
    }
    assert parse_strategy(strategy.label) == strategy


def test_sgd_options() -> None:
    strategy = parse_strategy("sgd-div10:batch_size=32,lr=0.2")
    assert strategy.batch_size == 32
    assert strategy.options == {"lr": 0.2, "batch_size": 32}
    assert parse_strategy("sgd").batch_size is None


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError) as err:
        parse_strategy("rmsprop:lr=0.1")
    assert str(err.value) == (
        "unknown strategy 'rmsprop'; use one of sgd, sgd-div10, sgd-cosine, sgd-plateau, hf, "
        "auto, swa, lbfgs, adam, adamw, sgd-schedulefree, kfac, soap, muon, optionally with "
        "key=value options as in hf:m=2048,damping=0.5 or sgd:lr=0.01"
    )


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError) as err:
        parse_strategy("sgd:m=12")
    assert str(err.value) == (
        "unknown option 'm' for strategy 'sgd'; the accepted options are lr, batch_size, momentum"
    )
    with pytest.raises(ValueError, match="accepted options are m, curvature, damping, "):
        parse_strategy("hf:foo=1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hf:m=1.5", "option m of strategy 'hf' must be an integer > 0, got '1.5'"),
        ("hf:m=0", "option m of strategy 'hf' must be an integer > 0, got '0'"),
        ("hf:damping=nan", "option damping of strategy 'hf' must be a number > 0, got 'nan'"),
        ("hf:cg_decay_x0=2", "must be a number in \\[0, 1\\], got '2'"),
        ("hf:linesearch_beta=1", "must be a number in \\(0, 1\\), got '1'"),
        ("hf:adapt_damping=maybe", "must be true or false, got 'maybe'"),
        ("hf:curvature=fisher", "must be one of ggn, hessian, got 'fisher'"),
        ("hf:preconditioner=shampoo", "must be one of empirical-fisher, kfac, none, got 'shampoo'"),
        ("hf:curvature_fraction=0", "curvature_fraction"),
        ("hf:damping_rule=wolfe", "damping_rule"),
        ("hf:chunk_size=-1", "must be an integer > 0 or none, got '-1'"),
        ("hf:curvature=none", "must be one of ggn, hessian, got 'none'"),
        ("sgd:momentum=1", "must be a number in \\[0, 1\\), got '1'"),
        ("hf:m", "option 'm' of strategy 'hf' is not key=value"),
        ("hf:", "option '' of strategy 'hf' is not key=value"),
        ("hf:m=1,,damping=1", "option '' of strategy 'hf' is not key=value"),
        ("hf:m=1,m=2", "option m of strategy 'hf' is given twice"),
        ("hf:weight_decay=0.1", "weight_decay cannot be set .* comes from the problem"),
        ("auto:hf_weight_decay=0.1", "hf_weight_decay cannot be set .* comes from the problem"),
        ("auto:interval=1", "option interval of strategy 'auto' must be a number in \\(0, 1\\)"),
        ("auto:interval=0", "must be a number in \\(0, 1\\), got '0'"),
        ("auto:first=1", "option first of strategy .auto. must be a number in \\[0, 1\\)"),
        ("auto:margin=-1", "option margin of strategy 'auto' must be a number >= 0, got '-1'"),
        ("auto:margin=inf", "must be a number >= 0, got 'inf'"),
        ("auto:backoff=0.5", "option backoff of strategy 'auto' must be a number >= 1, got '0.5'"),
        ("auto:hf_m=64", "unknown option 'hf_m' for strategy 'auto'"),
        ("auto:damping=1", "unknown option 'damping' for strategy 'auto'"),
        ("auto:hf_damping=0", "option hf_damping of strategy 'auto' must be a number > 0"),
    ],
)
def test_bad_options(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_strategy(text)


def test_auto_strategy_and_its_parts() -> None:
    strategy = parse_strategy("auto: HF-CG-Max-Iter=50, m=256, margin=2, interval=.2, lr=0.01")
    assert strategy.is_auto and not strategy.is_hf
    assert strategy.label == "auto:interval=0.2,margin=2.0,lr=0.01,m=256,hf_cg_max_iter=50"
    assert parse_strategy("auto:backoff=2").options == {"backoff": 2.0}
    assert parse_strategy(strategy.label) == strategy
    sgd, hf = parts(strategy)
    # lr belongs to SGD; HF's options lose their prefix; the rule's go to neither part
    assert sgd == Strategy("sgd", {"lr": 0.01})
    assert hf == Strategy("hf", {"m": 256, "cg_max_iter": 50})
    assert parts(parse_strategy("auto")) == (Strategy("sgd"), Strategy("hf"))
    assert parse_strategy("auto:batch_size=32,m=64").batch_size == 32


def test_auto_options_table() -> None:
    rule = ["interval", "first", "margin", "backoff", "rho_min", "switch_back", "stall"]
    head = [*rule, "lr", "batch_size", "momentum", "m"]
    assert list(AUTO_OPTIONS)[: len(head)] == head
    hf_keys = [k.removeprefix("hf_") for k in list(AUTO_OPTIONS)[len(head) :]]
    assert hf_keys == [k for k in HF_OPTIONS if k != "m"]
    assert all(AUTO_OPTIONS["hf_" + k] == HF_OPTIONS[k] for k in hf_keys)


def test_strategy_validates_and_normalises() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        Strategy("newton")
    with pytest.raises(ValueError, match="unknown option"):
        Strategy("sgd", {"damping": 1.0})
    with pytest.raises(ValueError, match="must be an integer > 0"):
        Strategy("hf", {"m": 2.0})
    with pytest.raises(ValueError, match="must be true or false"):
        Strategy("hf", {"use_linesearch": 1})
    options = {"damping": 2, "m": 8}
    strategy = Strategy("hf", options)
    assert strategy.options == {"m": 8, "damping": 2.0}
    assert isinstance(strategy.options["damping"], float)
    options["m"] = 16  # the strategy keeps its own copy
    assert strategy.label == "hf:m=8,damping=2.0"
    assert hash(strategy) == hash(parse_strategy("hf:damping=2,m=8"))


def test_hf_options_match_hessian_free_signature() -> None:
    from hfft.optim.curvature import BACKENDS, CURVATURES
    from hfft.optim.optimizer import MODEL_MODES, HessianFree
    from hfft.optim.preconditioner import PRECONDITIONERS

    parameters = dict(inspect.signature(HessianFree.__init__).parameters)
    for name in ("self", "params", "weight_decay"):
        del parameters[name]
    assert list(HF_OPTIONS) == ["m", *parameters]
    for name, parameter in parameters.items():
        option = HF_OPTIONS[name]
        annotation = option.type.__name__ + (" | None" if option.nullable else "")
        assert parameter.annotation == annotation, name
        assert option.check(parameter.default), name
        assert option.default == parameter.default, name  # the entry shows HessianFree's
    assert HF_OPTIONS["curvature"].choices == CURVATURES
    assert HF_OPTIONS["backend"].choices == BACKENDS
    assert HF_OPTIONS["model_mode"].choices == MODEL_MODES
    assert HF_OPTIONS["preconditioner"].choices == PRECONDITIONERS


def test_sgd_options_table() -> None:
    assert list(SGD_OPTIONS) == ["lr", "batch_size", "momentum"]


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys, hfft.experiment.run.budget, hfft.experiment.strategies.schedules, "
        "hfft.experiment.strategies.options, hfft.experiment.strategies.registry, "
        "hfft.experiment.strategies.catalog, hfft.experiment.strategies.reference, "
        "hfft.experiment.strategies.interface, hfft.experiment.strategies.hf_progress\n"
        "from hfft.experiment.strategies.registry import entries, parse_strategy\n"
        "entries(); parse_strategy('hf:m=64')\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_docs_strategies_page_is_the_registry() -> None:
    from pathlib import Path

    from hfft.experiment.strategies.reference import strategies_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"
    assert page.read_text() == strategies_markdown(), (
        "docs/strategies.md is stale: python -m hfft.experiment.strategies.reference > "
        "docs/strategies.md"
    )


def test_every_entry_is_whole() -> None:
    from hfft.experiment.records import RunnerReport

    for e in entries():
        assert e.summary and not e.summary.endswith("."), e.name
        assert callable(e.builder()), e.name  # the named builders resolve
        assert e.check is None or callable(e.checker()), e.name
        assert e.log is None or e.log in RunnerReport.__optional_keys__, e.name
        for key, option in e.options.items():
            assert option.default is None or option.check(option.default), (e.name, key)


def test_the_hf_step_entry_is_the_step_record() -> None:
    import dataclasses

    from hfft.optim.step_record import StepFields, StepRecord

    fields = [f.name for f in dataclasses.fields(StepRecord)]
    assert list(StepFields.__annotations__) == fields  # same fields, same order


def test_a_record_of_the_strategy_as_typed_is_the_same_run(tmp_path) -> None:
    """Records written before the strategy was typed once kept the text as typed
    (``auto:m=256,interval=0.2``); a rerun still recognises its own folder."""
    import json

    from hfft.experiment.run.finetune import FinetuneConfig, same_finetune_run
    from hfft.experiment.strategies.registry import canonical_label

    config = FinetuneConfig(checkpoint="c.safetensors", strategy="auto:m=256,interval=0.2")
    assert config.record()["strategy"] == "auto:interval=0.2,m=256"
    older = {**config.record(), "strategy": "AUTO: m=256, interval=.2"}
    (tmp_path / "metrics.json").write_text(json.dumps({"config": older}))
    assert same_finetune_run(tmp_path, config.key())
    other = FinetuneConfig(checkpoint="c.safetensors", strategy="auto:m=512,interval=0.2")
    assert not same_finetune_run(tmp_path, other.key())
    assert canonical_label("no-such-strategy") == "no-such-strategy"
    assert canonical_label(3) == 3


def test_the_usage_table_names_every_registered_strategy() -> None:
    import re
    from pathlib import Path

    usage = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    start = usage.index("| strategy | what it does |")
    rows = usage[start : usage.index("\n\n", start)].splitlines()[2:]
    named = [n for row in rows for n in re.findall(r"`([a-z0-9-]+)`", row.split("|")[1])]
    assert named == [e.name for e in entries()]


def test_a_strategy_given_twice_is_refused_before_anything_runs() -> None:
    from hfft.analysis.compare import CompareConfig

    with pytest.raises(ValueError, match="strategy sgd is given twice"):
        CompareConfig(checkpoints=("c.safetensors",), strategies=("sgd", "SGD"))


def test_a_learning_rate_option_is_bounded_like_lr() -> None:
    for text in ("sgd:lr=1e39", "adam:lr=1e39", "sgd-schedulefree:lr=1e39"):
        with pytest.raises(ValueError, match="lr of strategy"):
            parse_strategy(text)
    assert parse_strategy("sgd:lr=3e38").options == {"lr": 3e38}


def test_a_failed_catalog_import_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from hfft.experiment.strategies import registry

    calls = []
    real = importlib.import_module

    def failing(name: str, *args: Any) -> Any:
        calls.append(name)
        raise ImportError("broken")

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(importlib, "import_module", failing)
    with pytest.raises(ImportError):
        registry.entries()
    assert registry._loaded is False  # the next call tries again
    monkeypatch.setattr(importlib, "import_module", real)
    assert registry.entries()[0].name == "sgd"
    assert calls == ["hfft.experiment.strategies.catalog"]
