"""Curvature products against dense torch.func matrices on tiny float64 models."""

from __future__ import annotations

import pytest
import torch
from cases import CASES as CASE_TABLE
from cases import LOSSES, MODELS, make_problem, targets_for
from helpers import flat_params
from torch import nn

from hfft.diagnostics.dense import dense, dense_ggn, loss_of_flat
from hfft.optim.batches import signature
from hfft.optim.curvature import (
    LinearizationCache,
    batch_gradient,
    linearize_curvature,
    split_batch,
)
from hfft.optim.output_hessians import ClassLastCrossEntropy

CASES = [(model, loss, backend) for model, loss in CASE_TABLE for backend in ("func", "backpack")]


@pytest.mark.parametrize(("kind", "loss_name", "backend"), CASES, ids=lambda c: str(c))
def test_ggn_products_equal_dense_ggn(kind: str, loss_name: str, backend: str) -> None:
    model, x, y = make_problem(kind)
    y = targets_for(loss_name, y)
    loss_fn = LOSSES[loss_name]()
    op = linearize_curvature(model, loss_fn, x, y, backend=backend)
    g_dense = dense_ggn(model, loss_fn, x, y)
    g_op = dense(op.matvec, flat_params(model))
    torch.testing.assert_close(g_op, g_dense, rtol=1e-9, atol=1e-11)
    # symmetric and positive semi-definite
    torch.testing.assert_close(g_op, g_op.T, rtol=1e-9, atol=1e-11)
    assert torch.linalg.eigvalsh(g_op).min() > -1e-10
    # loss and gradient
    f = loss_of_flat(model, loss_fn, x, y)
    theta = flat_params(model)
    assert op.loss == pytest.approx(float(f(theta)), rel=1e-12)
    torch.testing.assert_close(op.grad, torch.func.grad(f)(theta), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kind", "backend"),
    [(k, b) for k in MODELS for b in ("func", "backpack")],
    ids=lambda c: str(c),
)
def test_hessian_products_equal_dense_hessian(kind: str, backend: str) -> None:
    model, x, y = make_problem(kind)
    loss_fn = nn.CrossEntropyLoss()
    op = linearize_curvature(model, loss_fn, x, y, curvature="hessian", backend=backend)
    theta = flat_params(model)
    h_dense = torch.func.hessian(loss_of_flat(model, loss_fn, x, y))(theta)
    torch.testing.assert_close(dense(op.matvec, theta), h_dense, rtol=1e-9, atol=1e-11)


def test_backends_agree_on_random_vectors() -> None:
    model, x, y = make_problem("cnn", n=10)
    loss_fn = nn.CrossEntropyLoss()
    ops = [linearize_curvature(model, loss_fn, x, y, backend=b) for b in ("func", "backpack")]
    for _ in range(3):
        v = torch.randn(ops[0].grad.numel(), dtype=torch.float64)
        torch.testing.assert_close(ops[0].matvec(v), ops[1].matvec(v), rtol=1e-10, atol=1e-12)


def test_consecutive_products_are_identical() -> None:
    model, x, y = make_problem("cnn", n=10)
    op = linearize_curvature(model, nn.CrossEntropyLoss(), x, y)
    v = torch.randn(op.grad.numel(), dtype=torch.float64)
    assert torch.equal(op.matvec(v), op.matvec(v))
    assert op.num_products == 2


@pytest.mark.parametrize(("n", "backend"), [(11, "func"), (20, "func"), (11, "backpack")])
def test_chunked_products_are_the_same_bits_in_either_chunk_order(n: int, backend: str) -> None:
    """Re-linearised chunks are visited forwards, then backwards (the last chunk of
    one product stays linearised for the next); the tree sum gives the same bits."""
    model, x, y = make_problem("cnn", n=n, seed=1)
    loss_fn = nn.CrossEntropyLoss()
    kw = dict(chunk_size=4, backend=backend)
    chunked = linearize_curvature(model, loss_fn, x, y, **kw)
    cached = linearize_curvature(model, loss_fn, x, y, cache_chunks=True, **kw)
    v = torch.randn(chunked.grad.numel(), dtype=torch.float64)
    reference = cached.matvec(v)
    for _ in range(3):
        assert torch.equal(chunked.matvec(v), reference)


def test_generic_loss_uses_autograd_output_hessian() -> None:
    model, x, y = make_problem("mlp")

    def smooth_l1(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.smooth_l1_loss(z, nn.functional.one_hot(t, 3).double(), beta=5.0)

    op = linearize_curvature(model, smooth_l1, x, y)
    torch.testing.assert_close(
        dense(op.matvec, flat_params(model)),
        dense_ggn(model, smooth_l1, x, y),
        rtol=1e-9,
        atol=1e-11,
    )


CHUNK_CASES = [
    (loss, curvature, backend, cache)
    for loss in ("ce-mean", "ce-sum", "mse-mean")
    for curvature in ("ggn", "hessian")
    for backend in ("func", "backpack")
    for cache in (False, True)
]


@pytest.mark.parametrize(
    ("loss_name", "curvature", "backend", "cache"), CHUNK_CASES, ids=lambda c: str(c)
)
def test_chunked_equals_full_batch(
    loss_name: str, curvature: str, backend: str, cache: bool
) -> None:
    model, x, y = make_problem("cnn", n=11)  # 11 = 4 + 4 + 3: unequal chunks
    y = targets_for(loss_name, y)
    loss_fn = LOSSES[loss_name]()
    kw = dict(curvature=curvature, backend=backend)
    full = linearize_curvature(model, loss_fn, x, y, **kw)
    chunked = linearize_curvature(model, loss_fn, x, y, chunk_size=4, cache_chunks=cache, **kw)
    assert len(chunked.chunks) == 3
    assert chunked.loss == pytest.approx(full.loss, rel=1e-12)
    torch.testing.assert_close(chunked.grad, full.grad, rtol=1e-10, atol=1e-12)
    v = torch.randn(full.grad.numel(), dtype=torch.float64)
    torch.testing.assert_close(chunked.matvec(v), full.matvec(v), rtol=1e-10, atol=1e-12)


def test_split_batch_weights() -> None:
    x, y = torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)
    assert [c.weight for c in split_batch(x, y, 4, nn.CrossEntropyLoss())] == [0.4, 0.4, 0.2]
    assert [c.weight for c in split_batch(x, y, 4, nn.CrossEntropyLoss(reduction="sum"))] == [
        1.0,
        1.0,
        1.0,
    ]
    assert len(split_batch(x, y, None, nn.CrossEntropyLoss())) == 1
    with pytest.raises(ValueError, match="chunk_size"):
        split_batch(x, y, 0, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="samples"):
        split_batch(x, y[:3], 4, nn.CrossEntropyLoss())


class DataDependent(nn.Module):
    """A forward pass that branches on data values: cannot be traced once."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x)
        return z if float(z.detach().sum()) > 0 else -z


def test_untraceable_model_falls_back_to_exact_products() -> None:
    torch.manual_seed(1)
    model = DataDependent().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    cache = LinearizationCache()
    op = linearize_curvature(model, loss_fn, x, y, lin_cache=cache)
    assert cache.fallback_reason is not None
    torch.testing.assert_close(
        dense(op.matvec, flat_params(model)), dense_ggn(model, loss_fn, x, y), rtol=1e-9, atol=1e-11
    )


def test_traced_linearization_is_reused_across_steps() -> None:
    model, x, y = make_problem("mlp")
    cache = LinearizationCache()
    linearize_curvature(model, nn.CrossEntropyLoss(), x, y, lin_cache=cache)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    op = linearize_curvature(model, nn.CrossEntropyLoss(), x, y, lin_cache=cache)
    assert len(cache._cache) == 1
    torch.testing.assert_close(
        dense(op.matvec, flat_params(model)),
        dense_ggn(model, nn.CrossEntropyLoss(), x, y),
        rtol=1e-9,
        atol=1e-11,
    )


def test_trace_prepares_every_chunk_shape_of_the_batches_once() -> None:
    model, x, y = make_problem("mlp", n=10)
    params = list(model.parameters())
    cache = LinearizationCache()
    cache.trace(model, params, x, [10, 5], chunk_size=4)  # chunks of 4 and 2, of 4 and 1
    assert sorted(key[2] for key in cache._cache) == sorted(signature(x[:k]) for k in (1, 2, 4))
    linearize_curvature(model, nn.CrossEntropyLoss(), x, y, chunk_size=4, lin_cache=cache)
    assert len(cache._cache) == 3  # the step traced nothing more
    cache.trace(model, params, x, [10], chunk_size=None)  # one chunk: the whole batch
    assert len(cache._cache) == 4 and all(v is not None for v in cache._cache.values())


@pytest.mark.parametrize(
    "pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), nn.MaxPool2d(3, 1)]
)
def test_max_pool_runs_channels_last_on_cpu_with_the_same_products(pool: nn.Module) -> None:
    """The traced forward max-pools in channels-last layout: same GGN, same gradient."""
    from hfft.optim.trace import _max_pool_2d_channels_last

    torch.manual_seed(0)
    # ReLU before the pool makes ties (zeros) within windows common
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten())
    x = torch.randn(5, 2, 6, 6)
    model.append(nn.LazyLinear(3))
    model(x)
    model, x = model.double(), x.double()
    y = torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    cache = LinearizationCache()
    op = linearize_curvature(model, loss_fn, x, y, lin_cache=cache)
    (lin,) = cache._cache.values()
    assert any(n.target is _max_pool_2d_channels_last for n in lin.primal.graph.nodes)
    torch.testing.assert_close(
        dense(op.matvec, flat_params(model)), dense_ggn(model, loss_fn, x, y), rtol=1e-9, atol=1e-11
    )
    f = loss_of_flat(model, loss_fn, x, y)
    torch.testing.assert_close(op.grad, torch.func.grad(f)(flat_params(model)))


@pytest.mark.parametrize("kind", MODELS)
def test_linearised_forward_costs_one_forward_and_products_no_gradient(kind: str) -> None:
    """No arithmetic on the input's zero tangent, and no gradient inside products."""
    from hfft.diagnostics.instruments import count_flops

    model, x, y = make_problem(kind, n=8)
    loss_fn = nn.CrossEntropyLoss()
    forward = count_flops(lambda: model(x))
    gradient = count_flops(lambda: loss_fn(model(x), y).backward())
    cache = LinearizationCache()
    linearize_curvature(model, loss_fn, x, y, lin_cache=cache)  # traces, once per shape
    linearize_curvature(model, loss_fn, x[:2], y[:2], lin_cache=cache)
    setup = count_flops(lambda: linearize_curvature(model, loss_fn, x, y, lin_cache=cache))
    assert setup == gradient  # one forward (with the values Jv needs) and one backward
    whole = linearize_curvature(model, loss_fn, x, y, lin_cache=cache)
    chunked = linearize_curvature(model, loss_fn, x, y, chunk_size=2, lin_cache=cache)
    v = torch.randn(flat_params(model).numel(), dtype=torch.float64)
    product = count_flops(lambda: whole.matvec(v))
    # re-linearising a chunk costs one forward of it, and no backward of the loss; the
    # last chunk of one product (or of the setup) stays linearised for the next: 3 of 4
    for _ in range(3):
        assert count_flops(lambda: chunked.matvec(v)) == product + forward * 3 // 4
    chunked.release()  # nothing kept: all 4 once, then 3 of 4 again
    assert count_flops(lambda: chunked.matvec(v)) == product + forward
    assert count_flops(lambda: chunked.matvec(v)) == product + forward * 3 // 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"curvature": "fisher"}, "curvature"), ({"backend": "jax"}, "backend")],
    ids=["curvature", "backend"],
)
def test_invalid_options(kwargs: dict, match: str) -> None:
    model, x, y = make_problem("mlp")
    with pytest.raises(ValueError, match=match):
        linearize_curvature(model, nn.CrossEntropyLoss(), x, y, **kwargs)


def _positionwise_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Per-position outputs (N, T, C) with padded (ignored) target positions."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 6, 4).double(), torch.randint(0, 3, (8, 6))
    y[:3, 4:] = -100  # three sequences are shorter
    y[5, 0] = -100
    return model, x, y


LOSS_CASES = {
    "ce-ignore-index-weights": lambda: (
        *make_problem("mlp", n=8)[:2],
        torch.tensor([0, 1, 2, 1, 0, 2, 1, 1]),
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5]).double(), ignore_index=1),
    ),
    "positionwise-ce": lambda: (*_positionwise_problem(), ClassLastCrossEntropy()),
    "bce-multilabel": lambda: (
        *make_problem("mlp", n=8)[:2],
        torch.randint(0, 2, (8, 3)).double(),
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5]).double()),
    ),
}


@pytest.mark.parametrize("name", list(LOSS_CASES))
@pytest.mark.parametrize("backend", ["func", "backpack"])
def test_every_loss_gives_the_dense_ggn_in_any_chunking(name: str, backend: str) -> None:
    # chunks are weighted by their share of the loss's own normaliser: with 3 of 8 targets
    # ignored or class weights, n_c / N made the loss, gradient and products wrong
    model, x, y, loss_fn = LOSS_CASES[name]()
    full = linearize_curvature(model, loss_fn, x, y, backend=backend)
    torch.testing.assert_close(
        dense(full.matvec, flat_params(model)),
        dense_ggn(model, loss_fn, x, y),
        rtol=1e-9,
        atol=1e-11,
    )
    chunked = linearize_curvature(model, loss_fn, x, y, chunk_size=3, backend=backend)
    assert chunked.loss == pytest.approx(full.loss, rel=1e-12)
    with torch.no_grad():
        assert full.loss == pytest.approx(float(loss_fn(model(x), y)), rel=1e-12)
    torch.testing.assert_close(chunked.grad, full.grad, rtol=1e-10, atol=1e-12)
    v = torch.randn(full.grad.numel(), dtype=torch.float64)
    torch.testing.assert_close(chunked.matvec(v), full.matvec(v), rtol=1e-10, atol=1e-12)


class _TinyLSTM(nn.Module):
    def __init__(self, recurrent: type[nn.Module] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = recurrent(3, 4, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0][:, -1])


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(x).mean(dim=1))


class _NoForwardMode(torch.autograd.Function):
    """tanh with a backward but no forward-mode derivative (like some fused kernels)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class _NoForwardNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_NoForwardMode.apply(self.a(x)))


SEQUENCE_MODELS = {
    "lstm": (lambda: _TinyLSTM(), (6, 5, 3)),
    "gru": (lambda: _TinyLSTM(nn.GRU), (6, 5, 3)),
    "transformer": (_TinyTransformer, (6, 5, 8)),
    "no-forward-mode": (_NoForwardNet, (6, 4)),
}


@pytest.mark.parametrize("name", list(SEQUENCE_MODELS))
def test_recurrent_and_attention_models_give_the_dense_ggn(name: str) -> None:
    # LSTMs (oneDNN), Transformer encoders (fused fast path) and kernels without a
    # forward-mode derivative used to fail inside torch.func.jvp
    build, shape = SEQUENCE_MODELS[name]
    torch.manual_seed(0)
    model = build().double().eval()
    x, y = torch.randn(*shape).double(), torch.randint(0, 3, (shape[0],))
    cache = LinearizationCache()
    op = linearize_curvature(model, nn.CrossEntropyLoss(), x, y, lin_cache=cache)
    torch.testing.assert_close(
        dense(op.matvec, flat_params(model)),
        dense_ggn(model, nn.CrossEntropyLoss(), x, y),
        rtol=1e-9,
        atol=1e-11,
    )
    if name == "no-forward-mode":
        assert cache.no_forward_ad is not None  # reverse-over-reverse products
    # the fallback, asked for (as hfft bench times it), gives the same products
    forced = linearize_curvature(
        model, nn.CrossEntropyLoss(), x, y, lin_cache=LinearizationCache(reverse_only=True)
    )
    v = torch.randn(flat_params(model).numel(), dtype=torch.float64)
    torch.testing.assert_close(forced.matvec(v), op.matvec(v), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("chunk_size", [None, 3, 5], ids=lambda c: f"chunk={c}")
def test_batch_gradient_is_the_operators_gradient_in_any_chunking(chunk_size: int | None) -> None:
    model, x, y = make_problem("mlp", n=11)
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    op = linearize_curvature(model, loss_fn, x, y, params)
    loss, grad = batch_gradient(model, loss_fn, split_batch(x, y, chunk_size, loss_fn), params)
    assert loss == pytest.approx(op.loss, rel=1e-12)
    torch.testing.assert_close(grad, op.grad, rtol=1e-10, atol=1e-12)
