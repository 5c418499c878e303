"""Peak memory and FLOP counting of one call."""

from __future__ import annotations

import pytest
import torch

from hfft.diagnostics.instruments import _profiled_peak, _resident_peak, count_flops, peak_memory

MB = 2**20


def _twelve_mib_at_most() -> torch.Tensor:
    a = torch.ones(MB)  # 4 MiB
    b = torch.ones(MB)  # 4 MiB
    del a
    c = torch.ones(2 * MB)  # 8 MiB, alive with b: peak 12 MiB
    return b.sum() + c.sum()


def test_profiled_peak_counts_tensors_alive_together() -> None:
    assert 12 * MB <= _profiled_peak(_twelve_mib_at_most) <= 12 * MB + 4096


def test_resident_peak_sees_the_memory_touched() -> None:
    peak = _resident_peak(_twelve_mib_at_most)
    if peak is None:
        pytest.skip("no /proc resident-memory counters here")
    # 12 MiB of tensors, plus whatever the allocator and interpreter touch around them
    assert 8 * MB <= peak <= 24 * MB
    assert peak_memory(_twelve_mib_at_most, torch.device("cpu")) >= 8 * MB


def test_peak_memory_ignores_what_existed_before() -> None:
    big = torch.ones(16 * MB)  # 64 MiB, updated in place
    assert peak_memory(lambda: big.mul_(2), torch.device("cpu")) < 8 * MB
    assert _profiled_peak(lambda: big.mul_(2)) < MB


def test_count_flops_of_a_matrix_product_and_its_backward() -> None:
    a = torch.randn(8, 5, requires_grad=True)
    b = torch.randn(5, 3)
    assert count_flops(lambda: a @ b) == 2 * 8 * 5 * 3
    # backward of a @ b w.r.t. a is one more product of the same size
    assert count_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 8 * 5 * 3)
