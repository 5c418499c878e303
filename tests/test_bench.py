"""The benchmark: every operation measured, ratios consistent, steps identical."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfft.diagnostics import instruments
from hfft.diagnostics.bench import LABELS, bench_model, check_targets
from hfft.diagnostics.instruments import interleaved_medians
from hfft.diagnostics.step_bench import BREAKDOWN, bench_hf_step


def _problem(n: int = 16) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).eval()
    return model, torch.randn(n, 1, 6, 6), torch.randint(0, 5, (n,))


@pytest.fixture(scope="module")
def result():
    # a tiny model allocates less than the resident-memory counters resolve:
    # count tensors through the profiler instead (tests/test_measure.py covers both)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instruments, "_resident_peak", lambda fn: None)
        model, x, y = _problem()
        return bench_model(model, x, y, name="tiny", rounds=1, cg_iterations=4)


def test_every_operation_is_timed_and_measured(result) -> None:
    assert set(result.seconds) == set(LABELS)
    assert all(s > 0 for s in result.seconds.values())
    assert result.ratios["gradient"] == 1.0
    for key in LABELS:
        if not key.startswith(("ggn_setup", "sgd_step")):
            assert key in result.flops
        if not key.startswith("ggn_setup"):
            assert result.peak_bytes[key] > 0


def test_flops_reflect_the_arithmetic_of_each_product(result) -> None:
    f = result.flops
    assert f["gradient"] == 1.0
    # Jv (≈ 2 forwards, one fewer at the first layer) plus a backward: between 1 and 2
    assert 1.0 < f["ggn_product[func]"] < 2.0
    # BackPACK's R-op costs an extra backward pass on top
    assert f["ggn_product[backpack]"] > f["ggn_product[func]"]
    # a chunked product re-linearises 3 of its 4 chunks (the last one of the previous
    # product is still linearised): three quarters of a forward more than the plain one
    assert f["ggn_product[chunked]"] == pytest.approx(
        f["ggn_product[func]"] + 0.75 * f["forward"], rel=0.05
    )
    # a quarter of the batch costs a quarter of the arithmetic
    assert f["ggn_product[one chunk]"] == pytest.approx(f["ggn_product[func]"] / 4, rel=0.05)
    # the fallback's J v is two backward passes instead of one tangent pass
    assert f["ggn_product[reverse-over-reverse]"] > f["ggn_product[func]"]
    assert result.ratios["reverse-over-reverse / func product"] == pytest.approx(
        result.seconds["ggn_product[reverse-over-reverse]"] / result.seconds["ggn_product[func]"]
    )


def test_step_breakdown_adds_up_and_backends_agree(result) -> None:
    step = result.step
    assert step["cg_iterations"] == 4
    for backend in ("func", "backpack"):
        parts = step["breakdown"][backend]
        assert set(parts) == set(BREAKDOWN)
        assert all(v >= 0 for v in parts.values())
        assert sum(parts.values()) == pytest.approx(step["seconds"][backend], rel=1e-6)
        assert step["records"][backend]["cg_iterations"] == 4
        assert step["records"][backend]["products"] >= 4
        assert step["peak_bytes"][backend] > 0
    assert step["relative_difference"]["backpack"] < 1e-4


def test_targets_are_checked_against_their_bounds(result) -> None:
    targets = check_targets(result)
    assert set(targets) == {
        "product / gradient",
        "BackPACK product / func product",
        "BackPACK step / func step",
        "SGD step speed, hfft / plain",
        "chunked product time / unchunked",
        "chunked peak memory / one chunk",
    }
    value, bound, met = targets["product / gradient"]
    assert value == pytest.approx(result.seconds["ggn_product[func]"] / result.seconds["gradient"])
    assert met == (value <= 1.2)
    assert result.to_dict()["targets"]["product / gradient"]["target"] == bound


def test_step_of_the_two_backends_differs_only_by_rounding_in_float64() -> None:
    model, x, y = _problem(8)
    model = model.double()
    out = bench_hf_step(
        model, x.double(), y, nn.CrossEntropyLoss(), cg_iterations=6, measure_memory=False
    )
    assert out["relative_difference"]["backpack"] < 1e-10
    rec = out["records"]
    assert rec["func"]["cg_chosen_iterate"] == rec["backpack"]["cg_chosen_iterate"]
    assert rec["func"]["alpha"] == rec["backpack"]["alpha"]


def test_stages_are_reported_in_order() -> None:
    from io import StringIO

    from rich.console import Console

    from hfft.cli.render.bench import bench_status

    model, x, y = _problem(8)
    stages: list[str] = []
    bench_model(
        model,
        x,
        y,
        name="tiny",
        rounds=1,
        cg_iterations=2,
        measure_memory=False,
        on_stage=stages.append,
    )
    assert [s.split(": ")[1].split(" ")[0] for s in stages] == ["timing", "counting", "one"]
    with bench_status(quiet=True) as hook:
        assert hook is None
    with bench_status(console=Console(file=StringIO())) as hook:
        assert hook is not None
        hook("tiny: timing operations")


def test_interleaved_rounds_alternate_the_order_after_the_warm_up() -> None:
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    seconds = interleaved_medians(fns, cuda=False, rounds=3, warmup=1)
    # warm-up forwards, then rounds 1, 2, 3: backwards, forwards, backwards
    assert "".join(calls) == "abc" + "cba" + "abc" + "cba"
    assert set(seconds) == set("abc") and all(t >= 0 for t in seconds.values())


def test_no_memory_measures_no_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # `hfft bench --no-memory` measured the HF step's peak memory anyway
    calls: list[object] = []
    monkeypatch.setattr(instruments, "peak_memory", lambda fn, device: calls.append(fn) or 1)
    model, x, y = _problem()
    out = bench_model(model, x, y, rounds=1, cg_iterations=2, measure_memory=False)
    assert calls == [] and out.peak_bytes == {} and out.step["peak_bytes"] == {}
