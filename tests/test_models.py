"""Tests of the model zoo: architectures, TF "same" padding, L2 masks, registry."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfft.models import (
    PROBLEMS,
    LazyFactory,
    TrainDefaults,
    get_problem,
    l2_mask,
    param_groups,
)
from hfft.models._layers import Conv2dSame, MaxPool2dSame, tf_same_padding
from hfft.models.deepobs import allcnnc, three_c_three_d, wrn164
from hfft.models.small import cnn, mlp


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- registry

DEFAULTS = [
    # name, dataset, lr, batch size, epochs, weight decay, momentum
    ("3c3d", "cifar10", 0.067966, 128, 100, 0.002, 0.0),
    ("allcnnc", "cifar100", 0.171234, 256, 350, 5e-4, 0.0),
    ("wrn164", "svhn", 0.025378, 128, 160, 5e-4, 0.0),
    ("mlp", "digits", 0.05, 128, 40, 1e-4, 0.9),
    ("cnn", "digits", 0.05, 128, 30, 1e-4, 0.9),
    ("cnn1d", "mnist1d", 0.02, 32, 100, 1e-3, 0.9),
    ("mlp1d", "mnist1d", 0.05, 128, 100, 1e-4, 0.9),
]


@pytest.mark.parametrize(
    ("name", "dataset", "lr", "batch_size", "epochs", "wd", "momentum"),
    DEFAULTS,
    ids=[row[0] for row in DEFAULTS],
)
def test_train_defaults(name, dataset, lr, batch_size, epochs, wd, momentum):
    expected = TrainDefaults(
        dataset=dataset,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        weight_decay=wd,
        momentum=momentum,
    )
    assert get_problem(name).defaults == expected
    assert get_problem(name).name == name


def test_registry_lists_exactly_the_problems():
    assert set(PROBLEMS) == {row[0] for row in DEFAULTS}


def test_get_problem_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'.*3c3d, allcnnc, wrn164"):
        get_problem("resnet")


def test_lazy_factory_reports_the_real_signature():
    import inspect

    assert inspect.signature(PROBLEMS["3c3d"].build) == inspect.signature(three_c_three_d)
    assert inspect.signature(PROBLEMS["mlp"].build) == inspect.signature(mlp)
    assert list(inspect.signature(LazyFactory).parameters) == ["module", "attr"]


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, hfft.models; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- architectures

COUNTS = [
    # name, build kwargs, parameters
    ("3c3d", {}, 895_210),
    ("allcnnc", {}, 1_387_108),
    ("wrn164", {}, 2_748_890),
    ("mlp", {}, 8 * 8 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10),
    ("mlp-w32-d1", {"width": 32, "depth": 1}, 64 * 32 + 32 + 32 * 10 + 10),
    ("cnn", {}, (9 * 16 + 16) + (16 * 9 * 32 + 32) + (32 * 4 * 64 + 64) + (64 * 10 + 10)),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), COUNTS, ids=[row[0] for row in COUNTS])
def test_parameter_count(name, kwargs, expected):
    assert n_params(get_problem(name.split("-")[0]).build(**kwargs)) == expected


SHAPES = [
    # name, build kwargs, input shape (N, C, H, W), outputs
    ("3c3d-cifar10", "3c3d", {}, (2, 3, 32, 32), 10),
    ("3c3d-cifar100", "3c3d", {"num_classes": 100}, (2, 3, 32, 32), 100),
    ("3c3d-mnist", "3c3d", {"in_channels": 1, "input_size": 28}, (2, 1, 28, 28), 10),
    ("allcnnc-cifar100", "allcnnc", {}, (2, 3, 32, 32), 100),
    ("allcnnc-svhn", "allcnnc", {"num_classes": 10}, (2, 3, 32, 32), 10),
    ("wrn164-svhn", "wrn164", {}, (2, 3, 32, 32), 10),
    ("wrn164-gray", "wrn164", {"in_channels": 1, "input_size": 28}, (2, 1, 28, 28), 10),
    ("mlp-digits", "mlp", {}, (3, 1, 8, 8), 10),
    ("mlp-cifar", "mlp", {"in_channels": 3, "input_size": 32}, (3, 3, 32, 32), 10),
    ("cnn-digits", "cnn", {}, (3, 1, 8, 8), 10),
    ("cnn-odd", "cnn", {"input_size": 7, "num_classes": 4}, (3, 1, 7, 7), 4),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "outputs"),
    [row[1:] for row in SHAPES],
    ids=[row[0] for row in SHAPES],
)
def test_output_shape(name, kwargs, shape, outputs):
    torch.manual_seed(0)
    model = get_problem(name).build(**kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (shape[0], outputs)


@pytest.mark.parametrize(
    ("build", "kwargs"),
    [
        (three_c_three_d, {"input_size": 6}),
        (allcnnc, {"input_size": 8}),
        (cnn, {"input_size": 3}),
        (cnn, {"width": 0}),
        (mlp, {"depth": 0}),
        (mlp, {"activation": "sigmoid"}),
    ],
    ids=["3c3d-too-small", "allcnnc-too-small", "cnn-too-small", "cnn-width-0", "mlp-depth-0",
         "mlp-bad-activation"],
)  # fmt: skip
def test_invalid_build_arguments(build, kwargs):
    with pytest.raises(ValueError, match=r"\.$"):
        build(**kwargs)


def test_allcnnc_dropout_relu_and_global_pool():
    model = allcnnc()
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]
    assert isinstance(model[0], nn.Dropout)  # on the input
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(convs) == len(relus) == 9
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.eval()(torch.randn(4, 3, 32, 32))
    assert (out >= 0).all()  # ReLU after the last conv, then a mean


def test_wrn164_structure():
    model = wrn164()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 13  # 2 per unit × 6 units + the final one
    assert all(bn.momentum == 0.1 and bn.eps == 1e-5 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is None for conv in convs)
    shortcuts = [u.shortcut for u in model.units if u.shortcut is not None]
    assert [s.kernel_size for s in shortcuts] == [(1, 1)] * 3
    assert [s.out_channels for s in shortcuts] == [64, 128, 256]
    assert [s.stride for s in shortcuts] == [(1, 1), (2, 2), (2, 2)]


def test_small_models_are_deterministic():
    for build in (mlp, cnn):
        model = build()
        kinds = (nn.Dropout, nn.modules.batchnorm._NormBase)
        assert not any(isinstance(m, kinds) for m in model.modules())
        torch.manual_seed(0)
        x = torch.randn(5, 1, 8, 8)
        model.train()
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_small_model_activation(activation):
    layers = {type(m).__name__.lower() for m in mlp(activation=activation).modules()}
    assert activation in layers


# --------------------------------------------------------------------------- TF "same"

PADDING = [
    # id, input, kernel, stride, (before, after)
    ("k3s2-even", 32, 3, 2, (0, 1)),
    ("k3s2-odd", 7, 3, 2, (1, 1)),
    ("k3s1", 32, 3, 1, (1, 1)),
    ("k3s2-28", 28, 3, 2, (0, 1)),
    ("k1s2", 32, 1, 2, (0, 0)),
    ("k4s1", 8, 4, 1, (1, 2)),
    ("k5s1", 6, 5, 1, (2, 2)),
    ("k2s2-odd", 5, 2, 2, (0, 1)),
    ("k3s3", 9, 3, 3, (0, 0)),
]


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [row[1:] for row in PADDING],
    ids=[row[0] for row in PADDING],
)
def test_tf_same_padding(size, kernel, stride, expected):
    before, after = tf_same_padding(size, kernel, stride)
    assert (before, after) == expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


CONV_CASES = [
    # id, input side, kernel, stride, explicit padding (left, right, top, bottom)
    ("k3s2-asymmetric", 32, 3, 2, (0, 1, 0, 1)),
    ("k3s1-symmetric", 32, 3, 1, (1, 1, 1, 1)),
    ("k3s2-odd", 7, 3, 2, (1, 1, 1, 1)),
    ("k4s1-asymmetric", 8, 4, 1, (1, 2, 1, 2)),
    ("k1s2-none", 32, 1, 2, (0, 0, 0, 0)),
]


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad"),
    [row[1:] for row in CONV_CASES],
    ids=[row[0] for row in CONV_CASES],
)
def test_conv2d_same_matches_explicit_padding(size, kernel, stride, pad):
    torch.manual_seed(0)
    conv = Conv2dSame(3, 5, kernel, stride).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, stride)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(size / stride),) * 2
    torch.testing.assert_close(out, expected)


def test_conv2d_same_on_32_gives_16_and_pads_after_only():
    torch.manual_seed(0)
    conv = Conv2dSame(1, 1, 3, 2, bias=False).double()
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    out = conv(x)
    assert out.shape == (1, 1, 16, 16)
    # The first output window starts at pixel 0 (nothing padded before) ...
    torch.testing.assert_close(out[0, 0, 0, 0], (conv.weight[0, 0] * x[0, 0, :3, :3]).sum())
    # ... and the last one covers pixels 30, 31 and one zero after.
    last = (conv.weight[0, 0, :2, :2] * x[0, 0, 30:, 30:]).sum()
    torch.testing.assert_close(out[0, 0, -1, -1], last)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad"),
    [(28, 3, 2, (0, 1, 0, 1)), (12, 3, 2, (0, 1, 0, 1)), (7, 3, 2, (1, 1, 1, 1))],
    ids=["28-asymmetric", "12-asymmetric", "7-symmetric"],
)
def test_maxpool2d_same_ignores_padding(size, kernel, stride, pad):
    torch.manual_seed(0)
    # All inputs negative: zero padding would leak zeros into the border maxima.
    x = -1.0 - torch.rand(2, 3, size, size, dtype=torch.float64)
    out = MaxPool2dSame(kernel, stride)(x)
    expected = F.max_pool2d(F.pad(x, pad, value=-math.inf), kernel, stride)
    torch.testing.assert_close(out, expected)
    assert out.shape[-2:] == (math.ceil(size / stride),) * 2
    assert (out <= -1.0).all()


def test_3c3d_pools_to_three_by_three():
    model = three_c_three_d()
    assert model[10].in_features == 3 * 3 * 128  # the first dense layer


# --------------------------------------------------------------------------- init


def test_3c3d_init():
    torch.manual_seed(0)
    model = three_c_three_d()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0
    dense = model[10]  # 1152 × 512, Xavier-uniform
    bound = math.sqrt(6.0 / (1152 + 512))
    assert dense.weight.abs().max() <= bound
    assert dense.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    conv = model[6]  # 96 → 128, 3×3, Xavier-normal
    std = math.sqrt(2.0 / (96 * 9 + 128 * 9))
    assert conv.weight.std().item() == pytest.approx(std, rel=0.05)


def test_allcnnc_init():
    torch.manual_seed(0)
    model = allcnnc()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.all(conv.bias == 0.1) for conv in convs)
    conv = convs[4]  # 192 → 192, 3×3, Xavier-normal
    std = math.sqrt(2.0 / (2 * 192 * 9))
    assert conv.weight.std().item() == pytest.approx(std, rel=0.05)


def test_wrn164_init():
    torch.manual_seed(0)
    model = wrn164()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert torch.count_nonzero(model.fc.bias) == 0
    conv = model.units[3].conv2  # 128 → 128, 3×3, Xavier-uniform
    bound = math.sqrt(6.0 / (2 * 128 * 9))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


# --------------------------------------------------------------------------- L2 mask


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(2))
        self.matrix = nn.Parameter(torch.ones(2, 2))


MASKS = [
    # id, model, {name: decays}
    (
        "linear",
        nn.Linear(3, 2),
        {"weight": True, "bias": False},
    ),
    (
        "conv-bn-linear",
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 1)),
        {"0.weight": True, "0.bias": False, "1.weight": False, "1.bias": False,
         "3.weight": True, "3.bias": False},
    ),
    (
        "mixed",
        _Mixed(),
        {"embed.weight": True, "norm.weight": False, "norm.bias": False, "bn.weight": False,
         "bn.bias": False, "fc.weight": True, "fc.bias": False, "scale": False, "matrix": True},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "expected"), [row[1:] for row in MASKS], ids=[r[0] for r in MASKS]
)
def test_l2_mask(model, expected):
    mask = l2_mask(model)
    assert mask == expected
    assert list(mask) == [name for name, _ in model.named_parameters()]


def test_l2_mask_wrn164_decays_only_conv_and_dense_weights():
    model = wrn164()
    mask = l2_mask(model)
    modules = dict(model.named_modules())
    for name, decays in mask.items():
        module_name, _, param_name = name.rpartition(".")
        module = modules[module_name]
        expected = isinstance(module, (nn.Conv2d, nn.Linear)) and param_name == "weight"
        assert decays == expected, name
    assert sum(mask.values()) == 1 + 12 + 3 + 1  # stem, unit convs, shortcuts, dense


def test_l2_mask_counts_a_shared_parameter_once():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert l2_mask(model) == {"0.weight": True, "0.bias": False}


def test_param_groups():
    model = three_c_three_d()
    groups = param_groups(model, 0.002)
    assert [g["weight_decay"] for g in groups] == [0.002, 0.0]
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in weights]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in biases]
    torch.optim.SGD(groups, lr=0.1)  # a valid torch.optim argument


@pytest.mark.parametrize(
    ("model", "decays"),
    [(nn.Linear(3, 2, bias=False), [0.5]), (nn.BatchNorm1d(3), [0.0])],
    ids=["only-weights", "only-norm"],
)
def test_param_groups_omits_an_empty_group(model, decays):
    assert [g["weight_decay"] for g in param_groups(model, 0.5)] == decays


# --------------------------------------------------------------------------- digits


@pytest.fixture
def one_thread():
    # Tiny models gain nothing from threads, and spinning intra-op threads on
    # a busy 2-core machine slow them down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_small_model_learns_digits(name, one_thread):
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x))
    n_train = int(0.8 * len(x))
    train, test = perm[:n_train], perm[n_train:]
    problem = get_problem(name)
    hp = problem.defaults
    model = problem.build()
    opt = torch.optim.SGD(param_groups(model, hp.weight_decay), lr=hp.lr, momentum=hp.momentum)
    start = time.perf_counter()
    for _ in range(hp.epochs):
        order = train[torch.randperm(n_train)]
        for i in range(0, n_train, hp.batch_size):
            batch = order[i : i + hp.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.95, f"{name}: {accuracy:.3f} after {elapsed:.1f}s"
