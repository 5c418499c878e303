"""Peak memory and FLOP counting of one call."""

from __future__ import annotations

import torch

from hfft._measure import count_flops, peak_memory

MB = 2**20


def test_peak_memory_counts_tensors_alive_together() -> None:
    def fn() -> torch.Tensor:
        a = torch.ones(MB)  # 4 MiB
        b = torch.ones(MB)  # 4 MiB
        del a
        c = torch.ones(2 * MB)  # 8 MiB, alive with b: peak 12 MiB
        return b.sum() + c.sum()

    peak = peak_memory(fn, torch.device("cpu"))
    assert 12 * MB <= peak <= 12 * MB + 4096


def test_peak_memory_ignores_what_existed_before() -> None:
    big = torch.ones(4 * MB)
    peak = peak_memory(lambda: big.mul_(2), torch.device("cpu"))
    assert peak < MB


def test_count_flops_of_a_matrix_product_and_its_backward() -> None:
    a = torch.randn(8, 5, requires_grad=True)
    b = torch.randn(5, 3)
    assert count_flops(lambda: a @ b) == 2 * 8 * 5 * 3
    # backward of a @ b w.r.t. a is one more product of the same size
    assert count_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 8 * 5 * 3)
