"""HF's peers (issue #28): soap and muon, and the suites that add them with kfac.

SOAP and Muon are held to their libraries' own loops on the same seeded batches
(bitwise); each of the three runs through ``finetune`` reproducibly, putting
back the last accepted weights when interrupted inside a step. K-FAC's own
runner is tested in ``test_kfac_runner.py``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hfft.experiment.data.sampling import BatchSampler
from hfft.experiment.data.splits import DataSplits
from hfft.experiment.interrupts import Interrupted
from hfft.experiment.run.finetune import FinetuneConfig, finetune
from hfft.experiment.strategies.registry import (
    StartingFacts,
    StrategyUnavailable,
    parse_strategy,
)
from hfft.experiment.strategies.runners import SGDSettings
from hfft.experiment.strategies.second_order import (
    MuonRunner,
    SOAPRunner,
    check_muon,
    check_soap,
)
from hfft.models import param_groups

CE = nn.CrossEntropyLoss()


def splits_of(x: torch.Tensor, y: torch.Tensor) -> DataSplits:
    """Every split the same data (the runners only train on ``train``)."""
    classes = int(y.max()) + 1 if y.dtype == torch.int64 else 1
    return DataSplits(
        name="test", train_x=x, train_y=y, valid_x=x, valid_y=y, train_eval_x=x,
        train_eval_y=y, test_x=x, test_y=y, num_classes=classes,
        input_shape=tuple(x.shape[1:]), augment=None, normalization=None, seed=0,
    )  # fmt: skip


def settings(**given: Any) -> SGDSettings:
    """Rate 0.1, batch 16, momentum 0.9, L2 0.01 (so that every weight-decay path acts)."""
    base: dict[str, Any] = dict(loss_fn=CE, lr=0.1, batch_size=16, momentum=0.9,
                                weight_decay=0.01, seed=3)  # fmt: skip
    return SGDSettings(**{**base, **given})


def conv_problem(n: int = 96) -> tuple[nn.Module, DataSplits]:
    """A Conv1d (a 3-D kernel) and a Linear (a matrix), on signals of length 6."""
    torch.manual_seed(0)
    x, y = torch.randn(n, 1, 6), torch.randint(0, 3, (n,))
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3))
    return model, splits_of(x, y)


def _sgd_batches(splits: DataSplits, seed: int, size: int, steps: int) -> list[torch.Tensor]:
    sampler = BatchSampler(splits.num_train, seed=seed)
    return [sampler.next_batch(size) for _ in range(steps)]


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --- soap and muon: their libraries' own loops on the same batches ---------------------


def test_soap_is_pytorch_optimizers_soap_on_sgds_batches() -> None:
    from pytorch_optimizer import SOAP

    model, splits = conv_problem()
    twin = copy.deepcopy(model)
    runner = SOAPRunner(parse_strategy("soap:precondition_frequency=2"), model, splits,
                        settings())  # fmt: skip
    for _ in range(5):  # its first step only sets up the preconditioner; then QR updates
        runner.step(0.0)
    opt = SOAP(param_groups(twin, 0.01), lr=3e-3, betas=(0.95, 0.95), precondition_frequency=2)
    for idx in _sgd_batches(splits, seed=3, size=16, steps=5):
        opt.zero_grad()
        CE(twin(splits.train_x[idx]), splits.train_y[idx]).backward()
        opt.step()
    assert _same_weights(model, twin) and not _same_weights(model, conv_problem()[0])
    report = runner.report()["soap"]
    assert report["lr"] == 3e-3 and report["weight_decay"] == 0.01
    assert report["lr_source"].startswith("pytorch-optimizer's default")
    assert report["weight_decay_mode"] == "decoupled (AdamW-style)"


def test_muon_takes_the_matrices_and_sgd_the_rest_on_sgds_batches() -> None:
    model, splits = conv_problem()
    twin = copy.deepcopy(model)
    runner = MuonRunner(parse_strategy("muon"), model, splits, settings())
    for _ in range(4):
        runner.step(0.0)
    conv, lin = twin[0], twin[3]
    muon = torch.optim.Muon([{"params": [lin.weight], "weight_decay": 0.01}], lr=1e-3,
                            momentum=0.95, adjust_lr_fn="match_rms_adamw")  # fmt: skip
    sgd = torch.optim.SGD(
        [{"params": [conv.weight], "weight_decay": 0.01},
         {"params": [conv.bias, lin.bias], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9,
    )  # fmt: skip
    for idx in _sgd_batches(splits, seed=3, size=16, steps=4):
        muon.zero_grad()
        sgd.zero_grad()
        CE(twin(splits.train_x[idx]), splits.train_y[idx]).backward()
        muon.step()
        sgd.step()
    assert _same_weights(model, twin) and not _same_weights(model, conv_problem()[0])
    report = runner.report()["muon"]
    assert (report["muon_tensors"], report["muon_parameters"]) == (1, 24)  # 3 × 8
    assert (report["sgd_tensors"], report["sgd_parameters"]) == (3, 6 + 2 + 3)
    assert report["adjust_lr_fn"] == "match_rms_adamw" and report["sgd_lr"] == 0.1
    # the decay the twin's Muon applied (bitwise the same weights), and how
    assert report["weight_decay"] == 0.01 and report["weight_decay_mode"].startswith("decoupled")


def test_muon_records_no_decay_where_the_problem_has_none() -> None:
    # torch.optim.Muon's own default is 0.1: the recorded 0 must be what it applies
    model, splits = conv_problem()
    twin = copy.deepcopy(model)
    runner = MuonRunner(parse_strategy("muon"), model, splits, settings(weight_decay=0.0))
    runner.step(0.0)
    muon = torch.optim.Muon([twin[3].weight], lr=1e-3, weight_decay=0.0,
                            adjust_lr_fn="match_rms_adamw")  # fmt: skip
    idx = _sgd_batches(splits, seed=3, size=16, steps=1)[0]
    CE(twin(splits.train_x[idx]), splits.train_y[idx]).backward()
    muon.step()
    assert torch.equal(model[3].weight, twin[3].weight)
    assert runner.report()["muon"]["weight_decay"] == 0.0


def test_muon_leaves_embeddings_to_sgd() -> None:
    model = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randint(0, 5, (32, 2)), torch.randint(0, 3, (32,))
    report = MuonRunner(parse_strategy("muon"), model, splits_of(x, y), settings()).report()
    assert (report["muon"]["muon_tensors"], report["muon"]["sgd_tensors"]) == (1, 2)


# --- checks, suites ----------------------------------------------------------------------


def test_checks_refuse_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = StartingFacts(n_train=100, lr=None, batch_size=16, eval_batch_size=None)
    with pytest.raises(ValueError, match=r"muon needs the training learning rate.*pass --lr"):
        check_muon(parse_strategy("muon"), facts)
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # not installed
    # unavailable whatever its options: a suite that added soap leaves it out (test_compare)
    with pytest.raises(StrategyUnavailable, match=r"pip install 'hfft\[second-order\]'"):
        check_soap(parse_strategy("soap"), facts)


def test_the_second_order_suite() -> None:
    from hfft.analysis.compare import default_strategies
    from hfft.cli.common import suite_help

    labels = [s.label for s in default_strategies(5000, suite="second-order")]
    assert labels == ["sgd", "sgd-div10", "sgd-cosine", "hf:m=512", "hf:m=1024", "hf:m=2048",
                      "kfac", "soap", "muon"]  # fmt: skip
    extended = [s.label for s in default_strategies(5000, suite="extended")]
    assert extended[-3:] == ["kfac", "soap", "muon"]
    assert "second-order: sgd, sgd-div10, sgd-cosine, hf at its default sizes and kfac" in (
        suite_help()
    )


# --- finetune: reproducible, and interrupts put back the last accepted weights -------------


def _run(ckpt: Path, out: Path, strategy: str, budget: str) -> dict:
    cfg = FinetuneConfig(checkpoint=str(ckpt), out=str(out), strategy=strategy, budget=budget,
                         eval_points=2, eval_batch_size=256)  # fmt: skip
    return json.loads(finetune(cfg).metrics_path.read_text())


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int) -> None:
    """``owner.name`` raises KeyboardInterrupt at its ``call``-th call, after it has run."""
    real, calls = getattr(owner, name), {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(owner, name, interrupted)


def _kfac_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    import hfft.optim.kfac_step as module

    # batch_loss runs twice a step (f₀, then the trial point): the 6th is step 3's trial
    _interrupt_at(monkeypatch, module, "batch_loss", 6)


def _soap_update(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_optimizer import SOAP

    _interrupt_at(monkeypatch, SOAP, "step", 3)  # step 3, after SOAP's update


def _muon_update(monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_at(monkeypatch, torch.optim.Muon, "step", 3)  # step 3, before SGD's part


@pytest.mark.parametrize(
    ("strategy", "interrupt"),
    [("kfac:m=256", _kfac_trial), ("soap", _soap_update), ("muon", _muon_update)],
    ids=["kfac", "soap", "muon"],
)
def test_an_interrupt_inside_a_step_keeps_the_last_accepted_weights(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str,
    interrupt: Any,
) -> None:  # fmt: skip
    ckpt = trained_run / "ckpt-02.safetensors"
    done = [_run(ckpt, tmp_path / f"run{i}", strategy, "2steps") for i in range(2)]
    weights = [load_file(tmp_path / f"run{i}" / "final.safetensors") for i in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # reproducible
    steps = [[{k: v for k, v in e.items() if k != "seconds"} for e in d["steps"]] for d in done]
    assert steps[0] == steps[1] and done[0]["status"] == "completed"
    interrupt(monkeypatch)
    with pytest.raises(Interrupted):
        _run(ckpt, tmp_path / "cut", strategy, "500steps")
    log = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert log["status"] == "interrupted" and len(log["steps"]) == 2
    cut = load_file(tmp_path / "cut" / "final.safetensors")
    assert all(torch.equal(cut[k], weights[0][k]) for k in cut)


def test_hf_with_the_kfac_preconditioner_is_refused_under_torchrun_before_any_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hfft.experiment.strategies.make import check_strategy
    from hfft.optim import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match=r"hf:preconditioner=kfac runs in one process only"):
        check_strategy(parse_strategy("hf:m=32,preconditioner=kfac"), 100, lr=0.1,
                       batch_size=8, eval_batch_size=None)  # fmt: skip
    check_strategy(parse_strategy("hf:m=32"), 100, lr=0.1, batch_size=8, eval_batch_size=None)
