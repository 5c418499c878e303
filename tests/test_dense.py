"""The dense references themselves, against matrices written out by hand."""

from __future__ import annotations

import torch
from torch import nn

from hfft.diagnostics.dense import dense, dense_ggn, dense_hessian


def test_dense_ggn_of_a_linear_model_with_mse_is_the_gram_matrix() -> None:
    # z = W x + b, mean MSE over N·C elements: H = 2/(N·C) I, J per sample = [x ⊗ I, I], so
    # G = 2/(N·C) Σₙ [xₙxₙᵀ ⊗ I, xₙ ⊗ I; xₙᵀ ⊗ I, I] in the order (W row-major, b)
    torch.manual_seed(0)
    n, d, c = 5, 3, 2
    model = nn.Linear(d, c).double()
    x, y = torch.randn(n, d).double(), torch.randn(n, c).double()
    aug = torch.cat([x, torch.ones(n, 1).double()], dim=1)  # [x, 1]
    gram = 2.0 / (n * c) * aug.T @ aug  # (d+1) × (d+1)
    expected_wb = torch.kron(gram, torch.eye(c).double())  # over (input feature, output)
    # reorder from (feature, output) to the model's order: W[o, f] row-major, then b[o]
    order = [f * c + o for o in range(c) for f in range(d)] + [d * c + o for o in range(c)]
    expected = expected_wb[order][:, order]
    torch.testing.assert_close(dense_ggn(model, nn.MSELoss(), x, y), expected)
    # for a linear model the GGN is the Hessian
    torch.testing.assert_close(dense_hessian(model, nn.MSELoss(), x, y), expected)


def test_dense_of_a_matrix_is_the_matrix() -> None:
    a = torch.randn(4, 4).double()
    torch.testing.assert_close(dense(lambda v: a @ v, torch.zeros(4).double()), a)
