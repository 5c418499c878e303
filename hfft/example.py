"""Library example: SGD training, then Hessian-free steps, in your own loop.

Run with ``python -m hfft.example``. Uses scikit-learn's bundled 8×8 digits
(real data, no download) and a small MLP; takes a few seconds on a CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn


def load_digits_tensors(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Digits as float tensors in [0, 1]: (x_train, y_train, x_test, y_test), 80/20 split."""
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32) / 16.0
    y = torch.tensor(y_np, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on ``(x, y)`` in eval mode."""
    model.eval()
    out = model(x)
    loss = float(nn.functional.cross_entropy(out, y))
    acc = float((out.argmax(1) == y).float().mean())
    model.train()
    return loss, acc


def shadowing_folder() -> Path | None:
    """The folder that ``import hfft`` found instead of this package, or None.

    A folder named ``hfft`` in the current directory comes first on ``sys.path``
    under ``python -m``: without an ``__init__.py`` it becomes a namespace package
    (no ``__file__``) that has none of hfft's names, yet this module is still
    found beside the installed package.
    """
    found = sys.modules.get("hfft")
    file = getattr(found, "__file__", None)
    if found is None or (file and Path(file).resolve().parent == Path(__file__).resolve().parent):
        return None
    where = [*getattr(found, "__path__", []), *([file] if file else [])]
    return Path(where[0]).resolve() if where else Path("hfft").resolve()


def main(sgd_epochs: int = 20, hf_steps: int = 10, seed: int = 0) -> None:
    """Train an MLP with SGD, then continue with Hessian-free steps."""
    shadow = shadowing_folder()
    if shadow is not None:
        print(
            f"hfft: error: the folder {shadow} hides the installed hfft package (Python finds it "
            "first, from the current directory); run from another folder or rename that folder.",
            file=sys.stderr,
        )
        sys.exit(2)
    from hfft import HessianFree

    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_tensors(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    start = time.perf_counter()
    for _ in range(sgd_epochs):
        for idx in torch.randperm(len(x_tr)).split(128):
            sgd.zero_grad()
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            sgd.step()
    loss, acc = evaluate(model, x_te, y_te)
    print(
        f"SGD, {sgd_epochs} epochs ({time.perf_counter() - start:.1f} s): "
        f"test loss {loss:.4f}, test accuracy {acc:.2%}"
    )

    # weight decay on the weights only: biases go in a group without L2
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups: list[dict] = [{"params": weights, "weight_decay": 1e-4}, {"params": biases}]
    hf = HessianFree(groups)
    for _ in range(hf_steps):
        # two disjoint batches: B for gradient and curvature, B̄ for the step checks
        perm = torch.randperm(len(x_tr))
        b, b_bar = perm[:512], perm[512:1024]
        rec = hf.step(
            model, loss_fn, batch=(x_tr[b], y_tr[b]), eval_batch=(x_tr[b_bar], y_tr[b_bar])
        )
        loss, acc = evaluate(model, x_te, y_te)
        print(
            f"HF step {rec.step:2d}: B̄ loss {rec.loss_before:.4f} → {rec.loss_after:.4f}, "
            f"λ {rec.damping:.3g}, CG {rec.cg_iterations} ({rec.cg_stop_reason}), "
            f"α {rec.alpha:.3g}, {rec.time_total:.2f} s | test loss {loss:.4f}, accuracy {acc:.2%}"
        )


if __name__ == "__main__":
    main()
