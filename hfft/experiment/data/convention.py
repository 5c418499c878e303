"""The model's calling convention: how hfft's one call per batch meets the user's ``forward``.

Everywhere — the GGN products, HF's two batches, every baseline, ``selftest`` —
hfft calls a model as ``model(batch)`` and needs a tensor of outputs back.
Models are written otherwise: a ``transformers`` model takes its inputs as
keywords (``model(input_ids=…, attention_mask=…)``) and returns a
``ModelOutput`` with ``.logits``; others return a dict or a tuple.

:func:`adopt_convention` looks once, on the first batch, at the model's
``forward`` and at what it returns, and installs on the model a forward
pre-hook (a dict batch whose keys ``forward`` names becomes keyword arguments)
and a forward hook (the outputs are reduced to their logits). Hooks, not a
wrapper module: the parameter names stay the model's own, so checkpoints,
``functional_call`` states and saved weights are unchanged, and every call —
``torch.func`` transforms and copies of the model (SWA's average) included —
goes through them.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from hfft.optim.batches import Batchable

__all__ = ["Convention", "adopt_convention", "keyword_names", "reduce_outputs"]

#: The hooks installed on each model, so that adopting again replaces them.
_INSTALLED: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Convention:
    """How a model is called and what is taken of its outputs.

    Attributes:
        keywords: The keys of a dict batch passed as keyword arguments (empty: the
            batch is the one argument).
        returned: The type name of what ``forward`` returns.
        taken: What hfft takes of it (``".logits"``, ``"['logits']"``, ``"[0]"``), or
            ``None`` when it returns a tensor.
    """

    keywords: tuple[str, ...] = ()
    returned: str = "Tensor"
    taken: str | None = None

    def call(self) -> str:
        """The call as a paragraph names it: ``model(**batch)`` or ``model(batch)``."""
        return "model(**batch)" if self.keywords else "model(batch)"

    def note(self) -> str | None:
        """One line saying what differs from ``model(batch)`` returning a tensor."""
        said = []
        if self.keywords:
            names = ", ".join(f"{k}=…" for k in self.keywords)
            said.append(f"the batch's dict goes to forward as keywords ({names})")
        if self.taken is not None:
            said.append(f"the model returns a {self.returned}, of which hfft takes {self.taken}")
        return "calling convention: " + "; ".join(said) if said else None


def keyword_names(model: nn.Module, inputs: Batchable) -> tuple[str, ...]:
    """The keys of a dict batch when ``forward`` names every one of them, else ``()``.

    Then the batch goes to the model as keyword arguments (the ``transformers``
    convention: ``forward(input_ids=None, attention_mask=None, …)``); otherwise
    as its one argument, as hfft always passed it (``forward(self, batch)``).
    """
    if not isinstance(inputs, Mapping) or not inputs:
        return ()
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name for p in params if p.kind in kinds}
    keys = tuple(inputs)
    return keys if all(isinstance(k, str) and k in named for k in keys) else ()


def reduce_outputs(out: Any) -> tuple[Any, str | None]:
    """The logits of what a model returns, and how they were taken (``None``: as returned).

    A ``ModelOutput`` or any object with a tensor ``.logits``, a dict with a tensor
    under ``"logits"``, or a tuple or list whose first element is a tensor (a
    ``transformers`` model with ``return_dict=False``) gives that tensor; anything
    else is returned as it is, for the caller to refuse.
    """
    from torch import Tensor

    if isinstance(out, Tensor):
        return out, None
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        attribute = isinstance(getattr(out, "logits", None), Tensor)  # a ModelOutput
        return out["logits"], ".logits" if attribute else "['logits']"
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits, ".logits"
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0], "[0]"
    return out, None


def adopt_convention(
    model: nn.Module, inputs: Batchable, first_call: Callable[[Convention], Any]
) -> tuple[Any, Convention]:
    """Fit hfft's calls to the model's convention, on its first forward pass.

    Installs the hooks (replacing those of an earlier adoption) so that every
    later ``model(batch)`` passes a dict batch as keywords when ``forward``
    names its keys, and returns the logits of a ``ModelOutput``, dict or tuple.

    Args:
        model: The user's model (hooks are added to it).
        inputs: A few training samples, as every batch is passed.
        first_call: Calls the model on ``inputs`` (with the keyword hook installed)
            and returns what it returned; it gets the convention for its messages.

    Returns:
        The first outputs, reduced, and the :class:`Convention`.
    """
    for handle in _INSTALLED.pop(model, []):
        handle.remove()
    handles = []
    keywords = keyword_names(model, inputs)
    if keywords:
        handles.append(model.register_forward_pre_hook(_as_keywords, with_kwargs=True))
    _INSTALLED[model] = handles
    out = first_call(Convention(keywords))
    reduced, taken = reduce_outputs(out)
    if taken is not None:
        handles.append(model.register_forward_hook(_logits))
    return reduced, Convention(keywords, type(out).__name__, taken)


def _as_keywords(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """``model(batch)`` → ``model(**batch)``; any other call as it is."""
    if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
        return (), dict(args[0])
    return None


def _logits(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    return reduce_outputs(out)[0]
