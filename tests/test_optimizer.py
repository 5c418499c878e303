"""The HessianFree optimizer: exact steps against dense linear algebra, and its rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from cases import make_problem
from helpers import flat_params
from torch import nn

import hfft.optim.hf_step as hf_step
from hfft import HessianFree
from hfft.diagnostics.dense import dense_ggn, loss_of_flat
from hfft.optim.curvature import split_batch
from hfft.optim.preconditioner import empirical_fisher_diagonal

EXACT = dict(
    adapt_damping=False,
    cg_max_iter=500,
    cg_tol=1e-13,
    martens_criterion=False,
    cg_decay_x0=0.0,
    use_cg_backtracking=False,
    use_linesearch=False,
    lr=1.0,
)


def groups(model: nn.Module, wd: float) -> list[dict]:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}]


def wd_vector(model: nn.Module, wd: float) -> torch.Tensor:
    # flat order of the optimizer: weights group first, then biases
    w = [torch.full((p.numel(),), wd) for n, p in model.named_parameters() if n.endswith("weight")]
    b = [torch.zeros(p.numel()) for n, p in model.named_parameters() if n.endswith("bias")]
    return torch.cat(w + b).double()


def grouped_flat(model: nn.Module) -> torch.Tensor:
    named = list(model.named_parameters())
    order = [p for n, p in named if n.endswith("weight")] + [
        p for n, p in named if n.endswith("bias")
    ]
    return torch.cat([p.detach().reshape(-1) for p in order])


def permutation(model: nn.Module) -> torch.Tensor:
    """Index map from the model's flat order to the optimizer's grouped order."""
    offsets, start = {}, 0
    for n, p in model.named_parameters():
        offsets[n] = torch.arange(start, start + p.numel())
        start += p.numel()
    named = [n for n, _ in model.named_parameters()]
    order = [n for n in named if n.endswith("weight")] + [n for n in named if n.endswith("bias")]
    return torch.cat([offsets[n] for n in order])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("wd", [0.0, 0.1], ids=lambda w: f"wd={w}")
def test_one_exact_step_is_the_damped_gauss_newton_step(kind: str, wd: float) -> None:
    model, x, y = make_problem(kind, n=8)
    loss_fn = nn.CrossEntropyLoss()
    lam = 0.3
    perm = permutation(model)
    theta = flat_params(model)[perm]
    g_mat = dense_ggn(model, loss_fn, x, y)[perm][:, perm]
    grad = torch.func.grad(loss_of_flat(model, loss_fn, x, y))(flat_params(model))[perm]
    wdv = wd_vector(model, wd)
    expected = theta - torch.linalg.solve(
        g_mat + torch.diag(wdv) + lam * torch.eye(theta.numel(), dtype=torch.float64),
        grad + wdv * theta,
    )
    opt = HessianFree(groups(model, wd), damping=lam, **EXACT)
    record = opt.step(model, loss_fn, batch=(x, y))
    assert record.accepted
    torch.testing.assert_close(grouped_flat(model), expected, rtol=1e-7, atol=1e-9)


def test_one_exact_hessian_step() -> None:
    model, x, y = make_problem("mlp", n=8)
    loss_fn = nn.CrossEntropyLoss()
    f = loss_of_flat(model, loss_fn, x, y)
    theta = flat_params(model)
    h = torch.func.hessian(f)(theta)
    lam = 1.0 + float(-torch.linalg.eigvalsh(h).min().clamp(max=0))  # keep H + λI positive
    expected = theta - torch.linalg.solve(
        h + lam * torch.eye(theta.numel()).double(), torch.func.grad(f)(theta)
    )
    opt = HessianFree(model.parameters(), curvature="hessian", damping=lam, **EXACT)
    opt.step(model, loss_fn, batch=(x, y))
    torch.testing.assert_close(flat_params(model), expected, rtol=1e-8, atol=1e-10)


def test_newton_step_on_a_quadratic() -> None:
    # linear least squares: GGN = Hessian, so λ → 0 and full CG is Newton's method
    torch.manual_seed(3)
    model = nn.Linear(5, 2).double()
    x, y = torch.randn(40, 5).double(), torch.randn(40, 2).double()
    loss_fn = nn.MSELoss(reduction="sum")
    opt = HessianFree(model.parameters(), damping=1e-10, **EXACT)
    opt.step(model, loss_fn, batch=(x, y))
    x1 = torch.cat([x, torch.ones(40, 1).double()], dim=1)
    w_star = torch.linalg.lstsq(x1, y).solution
    torch.testing.assert_close(model.weight.detach(), w_star[:5].T, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(model.bias.detach(), w_star[5], rtol=1e-7, atol=1e-8)


def test_damping_follows_lm_rule_of_recorded_rho() -> None:
    model, x, y = make_problem("mlp", n=30)
    opt = HessianFree(model.parameters(), damping=1.0)
    for _ in range(4):
        r = opt.step(
            model, nn.CrossEntropyLoss(), batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:])
        )
        expected = r.damping * (1.5 if r.rho < 0.25 else 2 / 3 if r.rho > 0.75 else 1.0)
        if not r.accepted:
            expected = max(expected, 1.5 * r.damping)
        assert r.next_damping == pytest.approx(expected)
        assert opt.damping == pytest.approx(r.next_damping)


def test_rho_is_the_measured_over_predicted_reduction() -> None:
    model, x, y = make_problem("mlp", n=30)
    opt = HessianFree(model.parameters(), use_cg_backtracking=False, use_linesearch=False)
    r = opt.step(model, nn.CrossEntropyLoss(), batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    assert r.rho == pytest.approx((r.loss_after - r.loss_before) / r.cg_q)


def test_step_rejected_when_no_step_size_decreases_eval_loss() -> None:
    # B̄'s targets are the model's own outputs: θ is B̄'s exact minimiser (loss 0),
    # so no step along B's direction can pass the Armijo test
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    x, y = torch.randn(10, 4).double(), torch.randn(10, 2).double()
    x_bar = torch.randn(10, 4).double()
    with torch.no_grad():
        y_bar = model(x_bar)
    before = flat_params(model).clone()
    opt = HessianFree(model.parameters(), damping=1e-3)
    r = opt.step(model, nn.MSELoss(), batch=(x, y), eval_batch=(x_bar, y_bar))
    assert r.loss_before == 0.0
    assert not r.accepted
    assert r.reject_reason == "no step size passed the line search"
    assert r.linesearch_tries == 20
    assert torch.equal(flat_params(model), before)
    assert r.loss_after == r.loss_before
    assert r.next_damping >= 1.5 * r.damping


def test_non_finite_batch_is_rejected_and_parameters_stay_finite() -> None:
    model, x, y = make_problem("mlp")
    x_bad = x.clone()
    x_bad[0, 0] = math.nan
    before = flat_params(model).clone()
    opt = HessianFree(model.parameters())
    r = opt.step(model, nn.CrossEntropyLoss(), batch=(x_bad, y), eval_batch=(x, y))
    assert not r.accepted
    assert r.reject_reason == "non-finite loss or gradient"
    assert torch.equal(flat_params(model), before)
    assert r.next_damping == pytest.approx(1.5)


def test_warm_start_uses_decayed_previous_final_iterate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = hf_step.conjugate_gradient

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        seen.append((args[2], res.x))
        return res

    monkeypatch.setattr(hf_step, "conjugate_gradient", spy)
    model, x, y = make_problem("mlp", n=30)
    opt = HessianFree(model.parameters())
    for _ in range(2):
        opt.step(model, nn.CrossEntropyLoss(), batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    assert seen[0][0] is None
    torch.testing.assert_close(seen[1][0], 0.95 * seen[0][1])


def test_state_dict_round_trip_reproduces_the_next_step() -> None:
    model, x, y = make_problem("cnn", n=30)
    loss_fn = nn.CrossEntropyLoss()
    opt = HessianFree(model.parameters(), damping=2.0)
    for _ in range(2):
        opt.step(model, loss_fn, batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    twin = copy.deepcopy(model)
    opt2 = HessianFree(twin.parameters())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.damping == opt.damping
    r1 = opt.step(model, loss_fn, batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    r2 = opt2.step(twin, loss_fn, batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    assert (r1.step, r1.cg_iterations, r1.damping) == (r2.step, r2.cg_iterations, r2.damping)
    torch.testing.assert_close(flat_params(model), flat_params(twin))


@pytest.mark.parametrize(
    "options",
    [{"chunk_size": 7}, {"chunk_size": 7, "cache_chunks": True}, {"backend": "backpack"}],
    ids=["chunked", "chunked-cached", "backpack"],
)
def test_variants_take_the_same_step(options: dict) -> None:
    model, x, y = make_problem("cnn", n=30)
    twin = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss()
    batches = dict(batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    r1 = HessianFree(model.parameters(), weight_decay=0.01).step(model, loss_fn, **batches)
    r2 = HessianFree(twin.parameters(), weight_decay=0.01, **options).step(twin, loss_fn, **batches)
    assert r1.cg_iterations == r2.cg_iterations
    assert r1.loss_after == pytest.approx(r2.loss_after, rel=1e-10)
    torch.testing.assert_close(flat_params(model), flat_params(twin), rtol=1e-9, atol=1e-11)


def test_empirical_fisher_diagonal_matches_per_sample_gradients() -> None:
    model, x, y = make_problem("cnn", n=9)
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    diag = empirical_fisher_diagonal(
        model, loss_fn, split_batch(x, y, 4, nn.CrossEntropyLoss()), params, "mean", vmap_chunk=3
    )
    per_sample = torch.stack(
        [
            torch.func.grad(loss_of_flat(model, loss_fn, x[i : i + 1], y[i : i + 1]))(
                flat_params(model)
            )
            for i in range(9)
        ]
    )
    torch.testing.assert_close(diag, per_sample.pow(2).mean(0))


def test_preconditioner_reduces_cg_iterations_on_ill_conditioned_problem() -> None:
    # features on scales from 1 to 100: the GGN's diagonal carries the ill-conditioning
    torch.manual_seed(0)
    d = 50
    x = torch.randn(500, d).double() * torch.logspace(0, 2, d).double()
    y = torch.randn(500, 3).double()
    records = {}
    for pre in (None, "empirical-fisher"):
        torch.manual_seed(1)
        model = nn.Linear(d, 3).double()
        opt = HessianFree(
            model.parameters(),
            damping=1e-4,
            cg_tol=1e-6,
            martens_criterion=False,
            preconditioner=pre,
        )
        records[pre] = opt.step(model, nn.MSELoss(), batch=(x, y))
    plain, pre = records[None], records["empirical-fisher"]
    assert pre.cg_stop_reason == plain.cg_stop_reason == "residual"
    assert pre.cg_iterations < 0.5 * plain.cg_iterations, (pre.cg_iterations, plain.cg_iterations)
    assert pre.cg_q == pytest.approx(plain.cg_q, rel=1e-6)  # same solution


def test_eval_mode_default_makes_dropout_model_deterministic() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    model.train()
    x, y = torch.randn(20, 4).double(), torch.randint(0, 3, (20,))
    twin = copy.deepcopy(model)
    r1 = HessianFree(model.parameters()).step(model, nn.CrossEntropyLoss(), batch=(x, y))
    r2 = HessianFree(twin.parameters()).step(twin, nn.CrossEntropyLoss(), batch=(x, y))
    assert model.training and twin.training  # mode restored
    assert r1.loss_after == r2.loss_after
    torch.testing.assert_close(flat_params(model), flat_params(twin), rtol=0, atol=0)


def test_a_few_steps_train_a_classifier() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 2)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR-like, needs the hidden layer
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = HessianFree(model.parameters())
    records = [
        opt.step(
            model, nn.CrossEntropyLoss(), batch=(x[:200], y[:200]), eval_batch=(x[200:], y[200:])
        )
        for _ in range(15)
    ]
    assert records[-1].loss_after < 0.5 * records[0].loss_before
    assert all(math.isfinite(r.loss_after) for r in records)
    assert records[0].to_dict()["step"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"curvature": "fisher"}, "curvature"),
        ({"damping": 0.0}, "damping"),
        ({"cg_max_iter": 0}, "cg_max_iter"),
        ({"cg_decay_x0": 1.5}, "cg_decay_x0"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"preconditioner": "shampoo"}, "preconditioner"),
        ({"curvature_fraction": 0.0}, "curvature_fraction"),
        ({"curvature_fraction": 1.5}, "curvature_fraction"),
        ({"damping_rule": "wolfe"}, "damping_rule"),
        ({"rho_batch": "test"}, "rho_batch"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"backend": "jax"}, "backend"),
        ({"model_mode": "test"}, "model_mode"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_invalid_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HessianFree(nn.Linear(2, 2).parameters(), **kwargs)


@pytest.mark.parametrize(
    ("chunk_size", "shapes"), [(None, 1), (7, 2), (5, 1)], ids=["full", "7+7+6", "5x4"]
)
def test_prepare_traces_ahead_and_step_reuses_it(chunk_size: int | None, shapes: int) -> None:
    model, x, y = make_problem("mlp", n=20)
    opt = HessianFree(model.parameters(), chunk_size=chunk_size)
    assert opt.prepare(model, x) > 0
    assert len(opt._lin_cache._cache) == shapes
    opt.step(model, nn.CrossEntropyLoss(), batch=(x, y))
    assert len(opt._lin_cache._cache) == shapes


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_step_leaves_batchnorm_statistics_and_modes_alone(mode: str) -> None:
    model = bn_model()
    model.train()
    model[1].eval()  # a mixed-mode model: each module's mode must come back
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = torch.randn(30, 4).double(), torch.randint(0, 3, (30,))
    r = HessianFree(model.parameters(), model_mode=mode).step(
        model, nn.CrossEntropyLoss(), batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:])
    )
    assert math.isfinite(r.loss_after)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert model.training and not model[1].training
    assert model[1].track_running_stats


def test_step_times_add_up() -> None:
    model, x, y = make_problem("cnn", n=8)
    opt = HessianFree(model.parameters(), cg_max_iter=5, preconditioner="empirical-fisher")
    r = opt.step(model, nn.CrossEntropyLoss(), batch=(x, y), eval_batch=(x[:4], y[:4]))
    assert r.accepted
    assert 0 < r.time_products <= r.time_cg
    assert r.time_preconditioner > 0
    assert r.time_backtracking + r.time_linesearch <= r.time_eval
    parts = r.time_gradient + r.time_preconditioner + r.time_cg + r.time_eval
    assert parts <= r.time_total


def test_step_runs_in_ieee_float32_and_restores_the_flags() -> None:
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    seen = []

    def loss_fn(z, t):
        seen.append((conv.fp32_precision, matmul.fp32_precision))
        return nn.functional.cross_entropy(z, t)

    model, x, y = make_problem("mlp")
    HessianFree(model.parameters(), cg_max_iter=2).step(model, loss_fn, batch=(x, y))
    assert seen and all(s == ("ieee", "ieee") for s in seen)
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    seen.clear()
    HessianFree(model.parameters(), cg_max_iter=2, tf32=True).step(model, loss_fn, batch=(x, y))
    assert seen and all(s == ("tf32", "tf32") for s in seen)
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def _host_reads_of_a_step(monkeypatch: pytest.MonkeyPatch, cg_iterations: int) -> int:
    """Reads of tensor values by the host (each one a device sync on a GPU) in one step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = 0

    class Scalars(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal reads
            if func is torch.ops.aten._local_scalar_dense.default:  # float(), item(), bool()
                reads += 1
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        nonlocal reads
        reads += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    model, x, y = make_problem("cnn", n=8)
    opt = HessianFree(
        model.parameters(),
        cg_max_iter=cg_iterations,
        cg_tol=0.0,
        martens_criterion=False,
        use_cg_backtracking=False,  # B̄ evaluations of more iterates would add reads
        use_linesearch=False,
    )
    opt.prepare(model, x)
    with Scalars():
        record = opt.step(model, nn.CrossEntropyLoss(), batch=(x, y))
    assert record.cg_iterations == cg_iterations
    return reads


def test_one_host_device_synchronisation_per_cg_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    few, many = _host_reads_of_a_step(monkeypatch, 3), _host_reads_of_a_step(monkeypatch, 9)
    assert (many - few) / 6 == 1.0


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["one-chunk", "chunked"])
def test_objective_is_what_a_step_measures_on_the_eval_batch(chunk_size: int | None) -> None:
    model, x, y = make_problem("cnn", n=10, seed=3)
    loss_fn = nn.CrossEntropyLoss()
    wd = 0.1
    opt = HessianFree(groups(model, wd), cg_max_iter=5, chunk_size=chunk_size)
    batch, eval_batch = (x[:6], y[:6]), (x[6:], y[6:])
    before = opt.objective(model, loss_fn, eval_batch)
    theta = flat_params(model)
    with torch.no_grad():
        data_loss = float(loss_fn(model(x[6:]), y[6:]))
    expected = data_loss + 0.5 * wd * float(
        sum((p.detach() ** 2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
    )
    assert before == pytest.approx(expected, rel=1e-12)
    record = opt.step(model, loss_fn, batch=batch, eval_batch=eval_batch)
    assert record.loss_before == before
    assert torch.equal(theta, flat_params(model)) != record.accepted
    assert opt.objective(model, loss_fn, eval_batch) == pytest.approx(record.loss_after, rel=1e-12)


class _Interrupt:
    """A forward hook that raises KeyboardInterrupt at the k-th forward pass on B̄."""

    def __init__(self, eval_size: int, at: int) -> None:
        self.eval_size, self.at, self.calls = eval_size, at, 0

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if inputs[0].shape[0] == self.eval_size:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt


@pytest.mark.parametrize("at", [1, 2, 3, 6], ids=["f0", "rho", "backtracking", "linesearch"])
def test_an_interrupt_inside_a_step_puts_theta_back(at: int) -> None:
    # the step's B̄ evaluations write trial points into the parameters; an interrupt
    # in any of them must not leave one there (lr 1000 makes the line search try many)
    model, x, y = make_problem("mlp", n=8)
    x_bar, y_bar = torch.randn(5, 4).double(), torch.randint(0, 3, (5,))
    opt = HessianFree(model.parameters(), lr=1000.0, linesearch_beta=0.99, linesearch_max_tries=50)
    opt.step(model, nn.CrossEntropyLoss(), batch=(x, y), eval_batch=(x_bar, y_bar))
    before = flat_params(model).clone()
    hook = model.register_forward_hook(_Interrupt(eval_size=5, at=at))
    with pytest.raises(KeyboardInterrupt):
        opt.step(model, nn.CrossEntropyLoss(), batch=(x, y), eval_batch=(x_bar, y_bar))
    hook.remove()
    assert torch.equal(flat_params(model), before)


def test_per_group_options_other_than_weight_decay_are_refused() -> None:
    # a group's damping was silently ignored (the step runs with one λ)
    model = nn.Linear(3, 2)
    with pytest.raises(
        ValueError, match="only weight_decay per parameter group; 'damping' applies"
    ):
        HessianFree([{"params": [model.weight], "damping": 99.0}, {"params": [model.bias]}])
    opt = HessianFree([{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias]}])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize("name", ["lstm", "transformer", "no-forward-mode"])
def test_hf_steps_on_recurrent_and_attention_models(name: str) -> None:
    from test_curvature import SEQUENCE_MODELS

    build, shape = SEQUENCE_MODELS[name]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(16, *shape[1:]), torch.randint(0, 3, (16,))
    opt = HessianFree(model.parameters(), cg_max_iter=20)
    opt.prepare(model, x)
    record = opt.step(model, nn.CrossEntropyLoss(), batch=(x, y), eval_batch=(x, y))
    assert record.accepted and record.loss_after < record.loss_before
    expected = "reverse-over-reverse" if name == "no-forward-mode" else "traced linearisation"
    assert opt.product_path.startswith(expected)
    assert torch.backends.mkldnn.enabled and torch.backends.mha.get_fastpath_enabled()  # restored


# -- the HF variants of the literature (issue #28) ---------------------------------------------


@pytest.mark.parametrize("fraction", [0.5, 0.25], ids=lambda f: f"fraction={f}")
def test_subsampled_curvature_step_solves_with_the_curvature_of_the_first_part(
    fraction: float,
) -> None:
    # Byrd et al. 2011: the gradient on all of B, the GGN on its first ⌈f·|B|⌉ samples
    model, x, y = make_problem("mlp", n=8)
    loss_fn, lam, k = nn.CrossEntropyLoss(), 0.3, math.ceil(fraction * 8)
    theta = flat_params(model)
    g_sub = dense_ggn(model, loss_fn, x[:k], y[:k])
    grad = torch.func.grad(loss_of_flat(model, loss_fn, x, y))(theta)
    expected = theta - torch.linalg.solve(g_sub + lam * torch.eye(theta.numel()).double(), grad)
    opt = HessianFree(model.parameters(), damping=lam, curvature_fraction=fraction, **EXACT)
    record = opt.step(model, loss_fn, batch=(x, y))
    assert record.accepted
    with torch.no_grad():
        assert record.batch_loss == pytest.approx(float(loss_fn(model_at(model, theta)(x), y)))
    torch.testing.assert_close(flat_params(model), expected, rtol=1e-7, atol=1e-9)


def model_at(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with the flat parameters ``flat``."""
    other = copy.deepcopy(model)
    hf_step.write_flat(list(other.parameters()), flat)
    return other


def test_subsampled_curvature_takes_fewer_sample_products() -> None:
    # the point of it: a product costs a fraction of the batch; same gradient either way
    model, x, y = make_problem("mlp", n=40)
    records = {}
    for fraction in (1.0, 0.25):
        m = copy.deepcopy(model)
        opt = HessianFree(m.parameters(), curvature_fraction=fraction, chunk_size=10)
        records[fraction] = opt.step(m, nn.CrossEntropyLoss(), batch=(x[:20], y[:20]))
    assert records[0.25].grad_norm == pytest.approx(records[1.0].grad_norm, rel=1e-10)
    assert records[0.25].batch_loss == pytest.approx(records[1.0].batch_loss, rel=1e-12)


def test_rho_on_the_curvature_batch_is_measured_on_b() -> None:
    model, x, y = make_problem("mlp", n=30)
    loss_fn = nn.CrossEntropyLoss()
    start = copy.deepcopy(model)
    opt = HessianFree(
        model.parameters(), rho_batch="curvature", use_cg_backtracking=False, use_linesearch=False
    )
    r = opt.step(model, loss_fn, batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
    # no backtracking, no line search: the step is the last CG iterate, so ρ on B is
    # (f_B(θ + p) − f_B(θ)) / q(p), with f_B at θ + p the model's loss on B now
    with torch.no_grad():
        f_new = float(loss_fn(model(x[:20]), y[:20]))
        f_old = float(loss_fn(start(x[:20]), y[:20]))
    assert r.batch_loss == pytest.approx(f_old, rel=1e-10)
    assert r.rho == pytest.approx((f_new - f_old) / r.cg_q, rel=1e-8)
    # ... and the LM rule follows that ρ
    expected = r.damping * (1.5 if r.rho < 0.25 else 2 / 3 if r.rho > 0.75 else 1.0)
    assert r.next_damping == pytest.approx(expected)


def test_trust_region_keeps_the_step_inside_a_radius_that_rho_adapts() -> None:
    model, x, y = make_problem("mlp", n=40)
    loss_fn = nn.CrossEntropyLoss()
    opt = HessianFree(model.parameters(), damping=1e-3, damping_rule="trust-region")
    records = []
    for _ in range(6):
        before = flat_params(model)
        r = opt.step(model, loss_fn, batch=(x[:25], y[:25]), eval_batch=(x[25:], y[25:]))
        records.append((r, float(torch.linalg.vector_norm(flat_params(model) - before))))
    assert records[0][0].radius is None  # the first step sets the scale
    for r, moved in records[1:]:
        assert r.radius is not None and moved <= r.radius * (1 + 1e-9)
        assert r.damping == r.next_damping == 1e-3  # λ stays under a trust region
    for (r, _), (nxt, _) in zip(records[1:], records[2:], strict=False):  # noqa: RUF007
        if not r.accepted or r.rho < 0.25:
            assert nxt.radius is not None and nxt.radius <= r.radius / 4 * (1 + 1e-12)
    assert any(r.cg_stop_reason == "radius" for r, _ in records)


def test_kfac_preconditioner_changes_cgs_path_not_its_solution() -> None:
    # exact CG finds the same damped Gauss-Newton step with or without it
    model, x, y = make_problem("mlp", n=40)
    loss_fn = nn.CrossEntropyLoss()
    found = {}
    for pre in (None, "kfac"):
        m = copy.deepcopy(model)
        hp = {**EXACT, "cg_tol": 1e-10}
        r = HessianFree(m.parameters(), damping=1e-2, preconditioner=pre, **hp).step(
            m, loss_fn, batch=(x, y)
        )
        found[pre] = (flat_params(m), r.cg_iterations)
    torch.testing.assert_close(found["kfac"][0], found[None][0], rtol=1e-6, atol=1e-8)
    assert found["kfac"][1] != found[None][1]


def test_a_rejected_first_step_quarters_the_trust_region_whatever_rho_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # docs/optimizer.md: Δ is quartered after a rejected step; on the first (unconstrained)
    # step that is a quarter of its length, not ρ's verdict (which may double it)
    import hfft.optim.optimizer as optimizer_module

    model, x, y = make_problem("mlp", n=40)
    opt = HessianFree(
        model.parameters(), damping=1.0, damping_rule="trust-region", rho_batch="curvature"
    )
    monkeypatch.setattr(optimizer_module, "_not_taken", lambda *args: "rejected by the test")
    r = opt.step(model, nn.CrossEntropyLoss(), batch=(x[:25], y[:25]), eval_batch=(x[25:], y[25:]))
    assert not r.accepted and r.radius is None and r.rho >= 0.25  # ρ alone: no shrinking
    length = float(torch.linalg.vector_norm(torch.cat([opt.state[p]["cg_x"].reshape(-1)
                                                       for p in model.parameters()])))  # fmt: skip
    assert opt.state["hf"]["radius"] == pytest.approx(length / 4)


def test_rho_on_b_is_not_counted_as_an_evaluation_of_b_bar() -> None:
    model, x, y = make_problem("mlp", n=30)
    counts = {}
    for rho_batch in ("eval", "curvature"):
        m = copy.deepcopy(model)
        opt = HessianFree(m.parameters(), rho_batch=rho_batch, use_cg_backtracking=False)
        r = opt.step(m, nn.CrossEntropyLoss(), batch=(x[:20], y[:20]), eval_batch=(x[20:], y[20:]))
        counts[rho_batch] = r.eval_batch_evaluations
    assert counts["curvature"] == counts["eval"]


def test_subsampled_curvature_takes_the_gradient_pass_even_when_the_share_is_all_of_b(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # data-parallel ranks hold shards that differ by one sample: ⌈f·n⌉ may be all of one
    # rank's shard and not of another's; every rank must still run the same all-reduces
    # (batch_gradient's among them) and normalise S alike, so the choice is the option's
    calls = []
    real = hf_step.batch_gradient
    monkeypatch.setattr(hf_step, "batch_gradient", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, x, y = make_problem("mlp", n=9)
    opt = HessianFree(model.parameters(), curvature_fraction=0.9)  # ⌈0.9 · 9⌉ = 9
    opt.step(model, nn.CrossEntropyLoss(), batch=(x, y))
    assert calls == [1]
