"""timm's architectures by name: ``--model timm:resnet18``, ``timm.create_model`` without weights.

The name must be one of ``timm.list_models()``, a fixed list of library code; a
name or argument that would make timm download or read weights is refused in one
sentence, because hfft loads the weights from the checkpoint the user gives. timm
is imported only when a ``timm:`` model is used (the ``hf`` extra).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping
from typing import Any

from hfft._text import clipped
from hfft.experiment.data.user_code import ModelSpecError

__all__ = ["TIMM", "TIMM_REFUSED", "check_timm_model", "timm_factory"]

TIMM = "timm:"
"""Prefix of a model of timm's registry, ``timm:resnet18``: ``timm.create_model(NAME,
pretrained=False, …)`` builds it, library code from a fixed list of architectures."""

TIMM_REFUSED = {
    "pretrained": "would download timm's pretrained weights",
    "pretrained_cfg": "names pretrained weights (a tag, URL, file or Hub repository) for timm",
    "pretrained_cfg_overlay": "can point timm at weights by URL, file or Hub repository",
    "checkpoint_path": "names a file timm would load weights from",
    "cache_dir": "names the folder timm downloads into",
}
"""``timm.create_model`` arguments that name weights to download or read, and why each is
refused: hfft loads the weights from the checkpoint you give and never downloads."""


def check_timm_model(spec: str, model_args: Mapping[str, Any]) -> str:
    """The architecture a ``timm:NAME`` spec names, checked with its model arguments.

    NAME must be one of ``timm.list_models()``: registered architectures, a
    fixed list of library code, so that a checkpoint's metadata may name one
    (:func:`hfft.experiment.run.starting_point.trusted_metadata`). What would
    make timm download or read weights is refused: a Hub or folder source
    (``hf-hub:``, ``local-dir:``, any name with a path separator), a
    pretrained tag (``resnet18.a1_in1k``) and the arguments of
    :data:`TIMM_REFUSED`; hfft loads the weights from the checkpoint. timm is
    imported only here, on the first ``timm:`` model.

    Args:
        spec: ``timm:NAME``.
        model_args: The keyword arguments for ``timm.create_model``.

    Returns:
        NAME.

    Raises:
        ModelSpecError: One sentence, for each of the above, an unknown name
            (with close matches), timm not installed, or ``in_channels`` (timm
            calls it ``in_chans``).
    """
    name = spec.removeprefix(TIMM)
    if any(c in name for c in ":/\\"):
        raise ModelSpecError(
            f"Model {clipped(spec)!r} names weights to download or files (hf-hub:, local-dir:, "
            "a path); hfft builds timm models by architecture name only and loads their "
            "weights from the checkpoint you give."
        )
    known = _timm().list_models()
    base, dot, tag = name.partition(".")
    if dot and base in known:
        raise ModelSpecError(
            f"Model {clipped(spec)!r} names timm's pretrained weights {clipped(tag, 40)!r}, "
            f"which hfft never downloads; name the architecture, timm:{base}, and give the "
            "weights as the checkpoint."
        )
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3) if len(name) <= 100 else []
        hint = f"; close ones: {', '.join(close)}" if close else ""
        raise ModelSpecError(
            f"timm has no model {clipped(name)!r}{hint} (timm.list_models() lists its "
            f"{len(known)} architectures)."
        )
    for key in model_args:
        if key in TIMM_REFUSED:
            raise ModelSpecError(
                f"Model argument {key!r} {TIMM_REFUSED[key]}; hfft loads a timm model's "
                "weights from the checkpoint you give and never downloads."
            )
    if "in_channels" in model_args:
        raise ModelSpecError(
            "timm models take in_chans, not in_channels: pass --model-arg in_chans=N."
        )
    return name


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelSpecError("timm models need the hf extra: pip install 'hfft[hf]'.") from None
    return timm


def timm_factory(
    spec: str, model_args: dict[str, Any], data_args: dict[str, Any]
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """``timm.create_model`` for NAME without weights, and the data's sizes in timm's names."""
    name = check_timm_model(spec, model_args)
    sizes = {"num_classes": data_args.get("num_classes"), "in_chans": data_args.get("in_channels")}
    kwargs = {**{k: v for k, v in sizes.items() if v is not None}, **model_args}
    return functools.partial(_timm().create_model, name, pretrained=False), kwargs
