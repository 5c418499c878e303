"""A user's own project, as hfft meets it: data factories, model factories, a plain training loop.

Nothing here uses hfft but the generator of a folder of PNG images (from hfft's
streaming benchmark). The end-to-end tests (``test_user_problems.py``) train
these models with :func:`plain_training`, ``torch.save`` their state dicts and
point hfft's commands at this file (``--model tests/user_problems.py:…``,
``--data tests/user_problems.py:…``), as a user would with theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from hfft.diagnostics import stream_bench

SEED = 0


def _split(x, y, test: float = 0.25, seed: int = SEED):
    """Seeded train/test split of tensors (the user's own)."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(test * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


def _standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-6)


# --- tabular classification: wine (train, test), breast cancer (train, valid, test) ---------


def wine():
    from sklearn.datasets import load_wine

    d = load_wine()
    x = _standardised(torch.tensor(d.data, dtype=torch.float32))
    return _split(x, torch.tensor(d.target))


def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = _standardised(torch.tensor(d.data, dtype=torch.float32))
    (train_x, train_y), test = _split(x, torch.tensor(d.target), test=0.2)
    (train, valid) = _split(train_x, train_y, test=0.2, seed=1)
    return train, valid, test


def tabular_mlp(features: int = 13, classes: int = 3, width: int = 32):
    return nn.Sequential(nn.Linear(features, width), nn.Tanh(), nn.Linear(width, classes))


# --- multi-label: three yes/no properties of each digit; a loss of the user's own ---------


def digit_properties():
    """scikit-learn's digits as 64 features, with 0/1 labels: even, greater than 4, prime."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    k = torch.tensor(d.target)
    y = torch.stack([k % 2 == 0, k > 4, (k == 2) | (k == 3) | (k == 5) | (k == 7)], 1)
    return _split(x, y.float(), test=0.2)


def smoothed_cross_entropy(outputs, targets):
    """The user's own loss: cross-entropy with label smoothing 0.1."""
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


# --- regression: diabetes, MSE --------------------------------------------------------------


def diabetes():
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = _standardised(torch.tensor(d.data, dtype=torch.float32))
    y = torch.tensor(d.target, dtype=torch.float32).unsqueeze(1)
    y = (y - y.mean()) / y.std()  # the user's target scaling
    return _split(x, y)


def regression_mlp(width: int = 32):
    return nn.Sequential(nn.Linear(10, width), nn.Tanh(), nn.Linear(width, 1))


# --- sequences: a token classifier with dict inputs, a per-token language model -------------

VOCAB, LENGTH = 12, 10


def _token_sequences(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(LENGTH // 2, LENGTH + 1, (n,), generator=g)
    mask = torch.arange(LENGTH)[None, :] < lengths[:, None]
    tokens = tokens * mask  # token 0 pads
    label = ((tokens == 1).sum(1) > (tokens == 2).sum(1)).long()
    return tokens, mask, label


def token_classes():
    """Inputs are dicts: {"tokens": (N, T) int64, "mask": (N, T) bool}; labels (N,)."""
    tokens, mask, label = _token_sequences(600, SEED)
    (tr, te) = (slice(0, 480), slice(480, None))
    return ({"tokens": tokens[tr], "mask": mask[tr]}, label[tr]), (
        {"tokens": tokens[te], "mask": mask[te]},
        label[te],
    )


class TokenClassifier(nn.Module):
    """Embedding → LSTM → the hidden state at the last real token → two classes."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, 2)

    def forward(self, batch):
        hidden, _ = self.lstm(self.embed(batch["tokens"]))
        last = batch["mask"].sum(1) - 1
        return self.head(hidden[torch.arange(len(last)), last])


def next_tokens():
    """Sequences counting up by a per-sequence step; targets are the next tokens, the last
    position ignored (-100)."""
    g = torch.Generator().manual_seed(SEED)
    n = 600
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    step = torch.randint(1, 3, (n, 1), generator=g)
    seq = (start + step * torch.arange(LENGTH + 1)) % VOCAB
    x, y = seq[:, :-1].clone(), seq[:, 1:].clone()
    y[:, -1] = -100
    return (x[:480], y[:480]), (x[480:], y[480:])


class TinyLanguageModel(nn.Module):
    """Embedding + positions → one TransformerEncoder layer (causal) → logits (N, T, V)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH, width))
        layer = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(LENGTH))

    def forward(self, tokens):
        h = self.embed(tokens) + self.position
        return self.head(self.encoder(h, mask=self.causal, is_causal=True))


# --- images: torchvision's resnet18 on digits upsampled by the user's factory ---------------


def digits_rgb32():
    """scikit-learn's digits as 3×32×32 images in [0, 1] (the user's own preprocessing)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return _split(x.repeat(1, 3, 1, 1), torch.tensor(d.target), test=0.2)


# the images: generated PNGs in a folder; the user's factory reads them with ImageFolder
write_image_folder = stream_bench.write_image_folder
image_folder = stream_bench.image_folder


def image_folder_without_transform(root):
    """An ImageFolder whose items are PIL images: hfft cannot batch them."""
    from torchvision.datasets import ImageFolder

    return ImageFolder(f"{root}/train"), ImageFolder(f"{root}/test")


def small_cnn(in_channels: int = 3, num_classes: int = 3):
    """The user's own small CNN for 16×16 images."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


# --- the user's plain loop --------------------------------------------------------------------


def plain_training(model, data, loss_fn, *, epochs: int, lr: float, batch: int = 32):
    """SGD with momentum over shuffled batches; how a user trains before trying hfft."""
    (x, y) = data[0]
    n = len(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i : i + batch]
            xb = {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
    return model


@torch.no_grad()
def own_evaluation(model, x, y, loss_fn, class_dim: int | None = 1):
    """The user's own loss (and accuracy) on a split, in eval mode."""
    model.eval()
    out = model(x)
    loss = float(loss_fn(out, y))
    if class_dim is None:
        return loss, None
    keep = y != -100
    correct = ((out.argmax(class_dim) == y) & keep).sum()
    return loss, float(correct / keep.sum())


# --- the checkpoints of docs/user-problems.md ---------------------------------------------------


def _class_last(loss_fn):
    """The language model's outputs are (N, T, V): the user permutes them for their loss."""
    return lambda out, y: loss_fn(out.transpose(1, 2), y)


def save_examples(folder, names=()) -> None:
    """Train each example (or those ``names``, e.g. ``wine``) with the user's plain loop and
    ``torch.save`` its state dict."""
    from pathlib import Path

    from torchvision.models import resnet18

    ce = nn.CrossEntropyLoss()
    cases = {
        "wine.pt": (lambda: tabular_mlp(), wine, ce, 5, 0.02, 32),
        "breast_cancer.pt": (lambda: tabular_mlp(30, 2), breast_cancer, ce, 3, 0.01, 32),
        "diabetes.pt": (regression_mlp, diabetes, nn.MSELoss(), 1, 0.002, 32),
        "properties.pt": (
            lambda: tabular_mlp(64, 3),
            digit_properties,
            nn.BCEWithLogitsLoss(),
            1,
            0.05,
            32,
        ),
        "tokens.pt": (TokenClassifier, token_classes, ce, 2, 0.05, 32),
        "lm.pt": (TinyLanguageModel, next_tokens, _class_last(ce), 2, 0.05, 32),
        "resnet18.pt": (lambda: resnet18(num_classes=10), digits_rgb32, ce, 1, 0.01, 64),
    }
    unknown = {f"{n}.pt" for n in names} - set(cases)
    if unknown:
        raise SystemExit(f"no example {', '.join(sorted(unknown))}; there are {', '.join(cases)}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, (build, data, loss_fn, epochs, lr, batch) in cases.items():
        if names and name.removesuffix(".pt") not in names:
            continue
        torch.manual_seed(SEED)
        model = plain_training(build(), data(), loss_fn, epochs=epochs, lr=lr, batch=batch)
        torch.save(model.state_dict(), out / name)
        print(out / name)


if __name__ == "__main__":
    import sys

    # python tests/user_problems.py FOLDER [EXAMPLE …]: every example, or those named
    save_examples(sys.argv[1] if len(sys.argv) > 1 else "user-checkpoints", sys.argv[2:])
