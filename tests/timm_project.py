"""A user's timm project, as hfft meets it: a data factory, a plain loop, timm's CheckpointSaver.

Nothing here imports hfft. :func:`train_and_save` trains one of timm's
registered architectures (its tiny ``test_resnet`` by default) on scikit-learn's
digits as 1×16×16 images with a plain loop, keeps an EMA copy of the weights
(``timm.utils.ModelEmaV3``) and saves both with ``timm.utils.CheckpointSaver``,
as timm's own ``train.py`` does: a ``torch.save``'d dict with ``epoch``,
``arch``, ``state_dict``, ``state_dict_ema``, ``optimizer``, ``version``,
``metric`` and the script's ``args`` (an ``argparse.Namespace``). The end-to-end
tests (``test_timm.py``) and the worked example of ``docs/user-problems.md``
point hfft at those files (``--model timm:test_resnet``, ``--data
tests/timm_project.py:digits``), as a user would at theirs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

SEED = 0
ARCH = "test_resnet"
CLASSES = 10


def digits(n: int | None = None):
    """scikit-learn's digits as 1×16×16 images in [0, 1]: (train, valid, test), 60/20/20 %."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))[:n]
    a, b = int(0.6 * len(perm)), int(0.8 * len(perm))
    return tuple((x[i], y[i]) for i in (perm[:a], perm[a:b], perm[b:]))


def few_digits():
    """160 of the digits (96 train, 32 valid, 32 test): quick end-to-end tests."""
    return digits(160)


def train_and_save(folder, *, arch: str = ARCH, data=digits, epochs: int = 3, batch: int = 32):
    """SGD with momentum over shuffled batches, an EMA of the weights, and timm's
    CheckpointSaver after every epoch (ranked by validation accuracy).

    Returns:
        The folder's ``last.pth.tar`` (``model_best.pth.tar`` beside it).
    """
    import timm
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(SEED)
    (x, y), (valid_x, valid_y), _ = data()
    model = timm.create_model(arch, num_classes=CLASSES, in_chans=1)
    ema = ModelEmaV3(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(model=arch, lr=0.05, batch_size=batch, output=folder)
    saver = CheckpointSaver(model, opt, args=args, model_ema=ema, checkpoint_dir=str(folder))
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - batch + 1, batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            ema.update(model)
        _, accuracy = own_evaluation(model, valid_x, valid_y)
        saver.save_checkpoint(epoch, metric=accuracy)
    return folder / "last.pth.tar"


@torch.no_grad()
def own_evaluation(model, x, y):
    """The user's own cross-entropy and accuracy on a split, in eval mode."""
    model.eval()
    out = model(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def evaluate_file(path, key: str = "state_dict", arch: str = ARCH, data=digits):
    """The user's evaluation of a saved checkpoint on the test split, loaded as they would."""
    import timm

    model = timm.create_model(arch, num_classes=CLASSES, in_chans=1)
    # their own file, which they trust: timm.models.load_checkpoint, with weights_only=True,
    # refuses its args (a Namespace holding a Path)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)[key])
    _, _, (test_x, test_y) = data()
    return own_evaluation(model, test_x, test_y)


if __name__ == "__main__":
    import sys

    # python tests/timm_project.py FOLDER [EPOCHS]: trains, then prints the user's test figures
    last = train_and_save(sys.argv[1], epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    for key in ("state_dict", "state_dict_ema"):
        loss, accuracy = evaluate_file(last, key)
        print(f"{last} [{key}]: test loss {loss:.4f}, accuracy {accuracy:.1%}")
