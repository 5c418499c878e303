"""K-FAC against curvlinops' KFACLinearOperator and the exact GGN, on tiny float64 models."""

from __future__ import annotations

import math

import pytest
import torch
from cases import CASES, LOSSES, make_problem, targets_for
from torch import Tensor, nn

from hfft.diagnostics.dense import dense, dense_ggn
from hfft.optim.kfac import FISHER_TYPES, KFAC

# curvlinops' seed for its Monte-Carlo labels: the same generator draws the same labels
CURVLINOPS_SEED = 2147483647


def _kfac(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, **kwargs: object) -> KFAC:
    gen = torch.Generator().manual_seed(CURVLINOPS_SEED)
    return KFAC.compute(model, loss_fn, x, y, list(model.parameters()), generator=gen, **kwargs)


def _dense(k: KFAC, model: nn.Module) -> Tensor:
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return dense(k.matvec, theta)


def _curvlinops(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, fisher: str) -> Tensor:
    from curvlinops import KFACLinearOperator

    params = list(model.parameters())
    op = KFACLinearOperator(
        model,
        loss_fn,
        params,
        [(x, y)],
        fisher_type=fisher,
        kfac_approx="expand",
        separate_weight_and_bias=False,  # hfft's A has a ones column for the bias
        seed=CURVLINOPS_SEED,
        check_deterministic=False,
    )
    dim = sum(p.numel() for p in params)
    return op @ torch.eye(dim, dtype=torch.float64)


@pytest.mark.parametrize("fisher", FISHER_TYPES)
@pytest.mark.parametrize(("kind", "loss_name"), CASES, ids=lambda c: str(c))
def test_factors_equal_curvlinops(kind: str, loss_name: str, fisher: str) -> None:
    model, x, y = make_problem(kind)
    y = targets_for(loss_name, y)
    loss_fn = LOSSES[loss_name]()
    k = _kfac(model, loss_fn, x, y, fisher=fisher)
    expected = _curvlinops(model, loss_fn, x, y, fisher)
    torch.testing.assert_close(_dense(k, model), expected, rtol=1e-6, atol=1e-10)
    assert k.covered == [n for n, _ in model.named_parameters()] and k.uncovered == []


@pytest.mark.parametrize("fisher", FISHER_TYPES)
def test_strided_dilated_convolution_equals_curvlinops(fisher: str) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.ReLU(inplace=True),  # the output gradient is the one before the in-place ReLU
        nn.Flatten(),
        nn.LazyLinear(4),
    ).double()
    x = torch.randn(5, 2, 5, 6, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    y = torch.randint(0, 4, (5,))
    loss_fn = nn.CrossEntropyLoss()
    k = _kfac(model, loss_fn, x, y, fisher=fisher)
    expected = _curvlinops(model, loss_fn, x, y, fisher)
    torch.testing.assert_close(_dense(k, model), expected, rtol=1e-6, atol=1e-10)


def _conv1d_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(4)
    one = nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(9, 4)
    ).double()
    two = nn.Sequential(
        nn.Conv2d(2, 3, (1, 3), stride=(1, 2), padding=(0, 1)),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(9, 4),
    ).double()
    with torch.no_grad():
        two[0].weight.copy_(one[0].weight.unsqueeze(2))
        two[0].bias.copy_(one[0].bias)
        two[3].load_state_dict(one[3].state_dict())
    return one, two


@pytest.mark.parametrize("fisher", FISHER_TYPES)
def test_conv1d_is_conv2d_of_height_one(fisher: str) -> None:
    one, two = _conv1d_pair()
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    loss_fn = nn.CrossEntropyLoss()
    k = _kfac(one, loss_fn, x, y, fisher=fisher)
    torch.testing.assert_close(
        _dense(k, one), _curvlinops(two, loss_fn, x.unsqueeze(2), y, fisher), rtol=1e-6, atol=1e-10
    )


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("bias", [True, False])
def test_one_dense_layer_and_one_example_is_the_exact_ggn(loss_name: str, bias: bool) -> None:
    torch.manual_seed(5)
    model = nn.Linear(4, 3, bias=bias).double()
    x = torch.randn(1, 4, dtype=torch.float64)
    y = targets_for(loss_name, torch.tensor([1]))
    loss_fn = LOSSES[loss_name]()
    k = _kfac(model, loss_fn, x, y, fisher="type-2")
    torch.testing.assert_close(
        _dense(k, model), dense_ggn(model, loss_fn, x, y), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("fisher", ["type-2", "empirical"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_chunks_sum_to_the_full_batch(kind: str, fisher: str) -> None:
    model, x, y = make_problem(kind, n=7)
    loss_fn = nn.CrossEntropyLoss()
    full = _dense(_kfac(model, loss_fn, x, y, fisher=fisher), model)
    chunked = _dense(_kfac(model, loss_fn, x, y, fisher=fisher, chunk_size=3), model)
    torch.testing.assert_close(chunked, full, rtol=1e-10, atol=1e-12)


def test_monte_carlo_labels_come_from_the_generator() -> None:
    model, x, y = make_problem("mlp", n=8)
    loss_fn = nn.CrossEntropyLoss()
    first, again = (_dense(_kfac(model, loss_fn, x, y, fisher="mc"), model) for _ in range(2))
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    other = torch.Generator().manual_seed(1)
    params = list(model.parameters())
    third = KFAC.compute(model, loss_fn, x, y, params, fisher="mc", generator=other)
    assert not torch.equal(_dense(third, model), first)


def test_class_last_cross_entropy_skips_ignored_positions() -> None:
    from hfft.optim.output_hessians import ClassLastCrossEntropy

    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5)).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64)  # (N, T, features): T positions share W
    y = torch.randint(0, 5, (2, 3))
    y[0, 1] = -100
    k = _kfac(model, ClassLastCrossEntropy(), x, y, fisher="type-2")
    # the last layer's output is z: G = Σ over kept positions of H = (diag p − p pᵀ)/#kept,
    # A = the mean over all N·T positions of [h 1][h 1]ᵀ
    z, h = model(x).detach(), model[:2](x).detach()
    p = torch.softmax(z, dim=-1)[y != -100]
    hess = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    torch.testing.assert_close(k.blocks[1].G, hess.sum(0) / len(p), rtol=1e-12, atol=1e-14)
    rows = torch.cat([h.reshape(-1, 4), torch.ones(6, 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(k.blocks[1].A, rows.T @ rows / 6, rtol=1e-12, atol=1e-14)


def _block_model() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Conv1d(1, 2, 3, groups=1)
    ).double()
    x = torch.randn(5, 1, 3, dtype=torch.float64)
    return model, x, torch.randn(5, 2, 2, dtype=torch.float64)


def test_unsupported_layers_are_the_identity() -> None:
    model, x, y = _block_model()
    params = list(model.parameters())
    k = KFAC.compute(model, nn.MSELoss(), x, y, params)
    assert k.covered == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert k.uncovered == ["1.weight", "1.bias"]
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)
    ln = slice(16, 24)  # LayerNorm's weight and bias in the flat vector
    assert torch.equal(k.matvec(v)[ln], torch.zeros(8, dtype=torch.float64))
    torch.testing.assert_close(k.inverse(0.5)(v)[ln], v[ln] / 0.5, rtol=0, atol=0)


def test_grouped_convolution_is_left_to_the_identity() -> None:
    model = nn.Sequential(nn.Conv1d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 3)).double()
    x, y = torch.randn(4, 2, 3, dtype=torch.float64), torch.randint(0, 3, (4,))
    k = KFAC.compute(model, nn.CrossEntropyLoss(), x, y, list(model.parameters()))
    assert k.uncovered == ["0.weight", "0.bias"]


def test_inverse_is_the_factored_tikhonov_damped_inverse() -> None:
    model, x, y = make_problem("mlp")
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    k = _kfac(model, loss_fn, x, y)
    lam, blocks = 0.3, []
    for block in k.blocks:  # the dense damped Kronecker product, block by block
        pi = math.sqrt((block.A.trace() / len(block.A)) / (block.G.trace() / len(block.G)))
        eye_a, eye_g = torch.eye(len(block.A)).double(), torch.eye(len(block.G)).double()
        g_damped, a_damped = block.G + math.sqrt(lam) / pi * eye_g, block.A + pi * lam**0.5 * eye_a
        blocks.append(torch.kron(g_damped, a_damped))  # row-major [W b]: rows ⊗ columns
    # the flat layout is [W1, b1, W2, b2] while a block orders [W b] row by row: permute
    order = torch.cat([_joint_order(p_w, p_b, offset) for p_w, p_b, offset in _pairs(params)])
    parts = torch.block_diag(*blocks)
    dense_damped = torch.empty_like(parts)
    dense_damped[order.unsqueeze(1), order.unsqueeze(0)] = parts
    inv = k.inverse(lam)
    v = torch.randn(len(order), dtype=torch.float64)
    torch.testing.assert_close(inv(dense_damped @ v), v, rtol=1e-9, atol=1e-10)
    # and matvec is the undamped Kronecker product in the same layout
    undamped = torch.block_diag(*(torch.kron(b.G, b.A) for b in k.blocks))
    dense_k = torch.empty_like(undamped)
    dense_k[order.unsqueeze(1), order.unsqueeze(0)] = undamped
    torch.testing.assert_close(k.matvec(v), dense_k @ v, rtol=1e-12, atol=1e-14)


def _pairs(params: list[Tensor]) -> list[tuple[Tensor, Tensor, int]]:
    out, offset = [], 0
    for w, b in zip(params[::2], params[1::2], strict=True):
        out.append((w, b, offset))
        offset += w.numel() + b.numel()
    return out


def _joint_order(w: Tensor, b: Tensor, offset: int) -> Tensor:
    """Flat positions of ``[W b]`` read row by row."""
    rows, cols = w.shape
    idx_w = offset + torch.arange(rows * cols).view(rows, cols)
    idx_b = offset + rows * cols + torch.arange(rows).view(rows, 1)
    return torch.cat([idx_w, idx_b], dim=1).reshape(-1)


def test_a_layer_called_twice_counts_its_positions_once_each() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(torch.tanh(self.lin(x)))

    model = Twice().double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 3, (4,))
    k = KFAC.compute(model, nn.CrossEntropyLoss(), x, y, list(model.parameters()))
    # A is the mean over both calls' inputs: its bias corner (the mean of 1·1) is 1
    assert float(k.blocks[0].A[-1, -1]) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize(
    ("loss_fn", "fisher", "message"),
    [
        (nn.BCEWithLogitsLoss(), "type-2", "K-FAC supports"),
        (nn.CrossEntropyLoss(label_smoothing=0.1), "type-2", "K-FAC supports"),
        (nn.CrossEntropyLoss(weight=torch.ones(3)), "type-2", "K-FAC supports"),
        (nn.CrossEntropyLoss(), "exact", "fisher must be one of"),
    ],
    ids=["bce", "label-smoothing", "class-weights", "fisher"],
)
def test_bad_arguments_are_one_sentence(loss_fn: nn.Module, fisher: str, message: str) -> None:
    model, x, y = make_problem("mlp")
    with pytest.raises(ValueError, match=message):
        KFAC.compute(model, loss_fn, x, y, list(model.parameters()), fisher=fisher)


def _my_loss(z: Tensor, y: Tensor) -> Tensor:
    return (z - y).abs().mean()


@pytest.mark.parametrize(
    ("loss_fn", "float_targets", "what"),
    [
        (nn.CrossEntropyLoss(), False, None),
        (nn.CrossEntropyLoss(reduction="sum", ignore_index=0), False, None),
        (nn.MSELoss(reduction="sum"), True, None),
        (nn.BCEWithLogitsLoss(), True, "BCEWithLogitsLoss"),
        (nn.CrossEntropyLoss(weight=torch.ones(3)), False, "cross-entropy with class weights"),
        (nn.CrossEntropyLoss(label_smoothing=0.1), False, "cross-entropy with label smoothing"),
        (nn.CrossEntropyLoss(), True, "cross-entropy on class probabilities (soft targets)"),
        (nn.MSELoss(reduction="none"), True, "a loss with reduction='none'"),
        (_my_loss, True, "function _my_loss"),
    ],
    ids="ce ce-sum mse-sum bce weights smoothing soft-targets no-reduction function".split(),
)
def test_unsupported_loss_says_what_kfac_cannot_take(
    loss_fn: nn.Module, float_targets: bool, what: str | None
) -> None:
    from hfft.optim.kfac import unsupported_loss

    found = unsupported_loss(loss_fn, float_targets=float_targets)
    if what is None:
        assert found is None
    else:
        assert found is not None and found.startswith("K-FAC supports nn.CrossEntropyLoss on ")
        assert found.endswith(f"not this run's {what}")


def test_soft_targets_are_refused_by_compute() -> None:
    model, x, y = make_problem("mlp")
    soft = torch.softmax(torch.randn(y.shape[0], 3, dtype=torch.float64), dim=1)
    with pytest.raises(ValueError, match="cross-entropy on class probabilities"):
        KFAC.compute(model, nn.CrossEntropyLoss(), x, soft, list(model.parameters()))


def test_damping_must_be_positive() -> None:
    model, x, y = make_problem("mlp")
    k = KFAC.compute(model, nn.CrossEntropyLoss(), x, y, list(model.parameters()))
    with pytest.raises(ValueError, match="damping must be positive"):
        k.inverse(0.0)


def test_hooks_are_removed() -> None:
    model, x, y = make_problem("cnn")
    KFAC.compute(model, nn.CrossEntropyLoss(), x, y, list(model.parameters()))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
