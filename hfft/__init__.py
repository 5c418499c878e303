"""hfft: Hessian-free fine-tuning of SGD checkpoints.

The public names are imported lazily so that ``hfft --help`` does not pay for
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfft._version import __version__

if TYPE_CHECKING:
    from hfft.optim.cg import CGResult, conjugate_gradient
    from hfft.optim.curvature import CurvatureOperator, linearize_curvature
    from hfft.optim.optimizer import HessianFree, StepRecord

__all__ = [
    "CGResult",
    "CurvatureOperator",
    "HessianFree",
    "StepRecord",
    "__version__",
    "conjugate_gradient",
    "linearize_curvature",
]

_LAZY = {
    "HessianFree": "hfft.optim.optimizer",
    "StepRecord": "hfft.optim.optimizer",
    "CGResult": "hfft.optim.cg",
    "conjugate_gradient": "hfft.optim.cg",
    "CurvatureOperator": "hfft.optim.curvature",
    "linearize_curvature": "hfft.optim.curvature",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfft' has no attribute {name!r}")
