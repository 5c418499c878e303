"""hfft's first calls into code the user named, and one paragraph when one fails.

hfft runs a user's code only where the command line names it: the model
factory, the data factory, the loss (``--model``, ``--data``, ``--loss``
``file.py:fn``), and the model's ``forward``. The first of these calls happen
before any work (:func:`hfft.experiment.run.starting_point.fit_task` runs one
forward pass on two training samples), and a failure there is the user's to
fix, not a bug of hfft's: it becomes a :class:`UserCodeError` whose message is
one short paragraph — what hfft called and with what, the user's exception in
one line, and what to do. The exception itself is its ``__cause__``; the
command line prints its traceback only with ``--debug`` (or ``HFFT_DEBUG=1``).

Any exception counts as the failure of the call, ``SystemExit`` too: a factory
that calls ``sys.exit(0)`` must not end hfft as if it had finished. Only
``KeyboardInterrupt`` (Ctrl-C, and SIGTERM as hfft raises it) passes, to stop
the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hfft._text import clipped

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from hfft.optim.batches import Batchable

__all__ = [
    "DEBUG_HINT",
    "ModelSpecError",
    "UserCodeError",
    "calling",
    "describe_batch",
    "first_loss",
    "first_outputs",
    "model_dtype",
    "raised",
]

DEBUG_HINT = "pass --debug for the traceback"
"""How a paragraph ends: where the user's traceback is."""


class ModelSpecError(ValueError):
    """A model name, factory spec or model argument the user got wrong."""


class UserCodeError(ValueError):
    """Code the user named failed when hfft first called it (one short paragraph).

    A ``ValueError`` like every other mistake in the input: exit code 2 and
    nothing written. ``__cause__`` is the user's exception.
    """


def raised(err: BaseException) -> str:
    """The user's exception in one line: ``RuntimeError: boom``, ``SystemExit: 0``."""
    text = str(err) if not isinstance(err, SystemExit) else repr(err.code)
    text = clipped(text, 200).rstrip(".")  # the paragraph puts its own full stop after it
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def calling(
    what: str, advice: str, subject: str = "it", error: type[ValueError] = UserCodeError
) -> Iterator[None]:
    """Run one call into the user's code; its failure becomes ``error`` of one paragraph.

    Args:
        what: What hfft did, with what (``"hfft called model(batch) on 2 training samples, …"``).
        advice: What the user can do, one sentence without its full stop.
        subject: Who raised, as the paragraph says it (``"the model"``).
        error: The exception class raised (a ``ValueError``).

    Raises:
        error: ``"{what}; {subject} raised {exception}. {advice}
            (pass --debug for the traceback)."``, from the user's exception.
    """
    try:
        yield
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as err:  # SystemExit too: a factory's sys.exit(0) is its failure
        raise error(f"{what}; {subject} raised {raised(err)}. {advice} ({DEBUG_HINT}).") from err


def _tensor(t: Tensor) -> str:
    shape = "×".join(str(s) for s in t.shape) or "scalar"
    return f"{str(t.dtype).removeprefix('torch.')} {shape}"


def describe_batch(x: Any, most: int = 5) -> str:
    """A batch as a paragraph says it: ``a dict with keys input_ids (int64 2×16), …``.

    Args:
        x: A tensor, or a dict, tuple or list of them.
        most: The most entries named (the rest are counted).
    """
    import torch

    def leaf(v: Any) -> str:
        return _tensor(v) if isinstance(v, torch.Tensor) else f"a {type(v).__name__}"

    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {_tensor(x).split()[1]}"
    if isinstance(x, dict):
        named = [f"{clipped(str(k), 40)} ({leaf(v)})" for k, v in list(x.items())[:most]]
        head = f"a dict with keys {', '.join(named)}"
    elif isinstance(x, tuple | list):
        head = f"a {type(x).__name__} of {', '.join(leaf(v) for v in x[:most])}"
    else:
        return f"a {type(x).__name__}"
    rest = len(x) - most
    return f"{head} and {rest} more" if rest > 0 else head


def first_outputs(
    model: nn.Module, inputs: Batchable, dtype: torch.dtype | None, call: str = "model(batch)"
) -> Any:
    """hfft's first forward pass: ``model(inputs)`` in eval mode without gradients.

    The modules' modes are restored afterwards.

    Args:
        model: The model.
        inputs: A few training samples, as every batch will be passed: one argument
            (which the model's hooks may pass on as keywords,
            :mod:`hfft.experiment.data.convention`).
        dtype: The model's floating-point parameter dtype, if it has one (for the advice).
        call: How the paragraph names the call (``model(**batch)`` for keywords).

    Raises:
        UserCodeError: If the forward pass fails in any way.
    """
    import torch

    from hfft.optim.batches import batch_size

    n = batch_size(inputs)
    samples = f"{n} training sample{'s' if n != 1 else ''}"
    what = f"hfft called {call} on {samples}, {describe_batch(inputs)}"
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with calling(what, _forward_advice(inputs, dtype), "the model"), torch.no_grad():
            return model(inputs)
    finally:
        for module, training in modes.items():
            module.training = training


def first_loss(loss: Any, spec: str, outputs: Tensor, targets: Tensor) -> None:
    """hfft's first call of the user's loss: ``loss(outputs, targets)`` on a few samples.

    Raises:
        UserCodeError: If the loss fails in any way.
    """
    import torch

    what = (
        f"hfft called your loss {clipped(spec)}(outputs, targets) on {len(targets)} training "
        f"samples, outputs {_tensor(outputs)} and targets {_tensor(targets)}"
    )
    advice = "Make it take the model's outputs and the data's targets and return the mean loss"
    traced = outputs.detach().requires_grad_(outputs.is_floating_point())
    with calling(what, advice, "the loss"), torch.enable_grad():
        value = loss(traced, targets)
    if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point()):
        tensor = isinstance(value, torch.Tensor)
        got = f"{_tensor(value)} tensor" if tensor else type(value).__name__
        raise UserCodeError(
            f"{what}; the loss returned a {got}, not one number: hfft needs the mean loss as a "
            "scalar tensor that autograd can differentiate (reduce it with .mean())"
        )
    if traced.requires_grad and not value.requires_grad:
        raise UserCodeError(
            f"{what}; the loss returned a number that autograd cannot trace back to the "
            "outputs (detached, or rebuilt from .item()): hfft differentiates the loss "
            "through the model, so compute it with torch operations on the outputs"
        )


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating-point dtype of the model's parameters (of its buffers if it has none).

    ``None`` when it has no floating-point tensors, or several dtypes of them.
    """
    tensors: list[Tensor] = [p for p in model.parameters() if p.is_floating_point()]
    tensors = tensors or [b for b in model.buffers() if b.is_floating_point()]
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else None


def _forward_advice(inputs: Batchable, dtype: torch.dtype | None) -> str:
    floating = {t.dtype for t in _leaves(inputs) if t.is_floating_point()}
    if isinstance(inputs, dict):
        return (
            "hfft passes a dict batch as keywords when forward names every key "
            "(forward(self, input_ids, attention_mask)), else as one argument "
            "(forward(self, batch), reading batch[key]): make forward take it one of these ways"
        )
    if dtype is not None and floating - {dtype}:
        found = ", ".join(sorted(str(d).removeprefix("torch.") for d in floating))
        return (
            f"The inputs are {found} but the model's parameters "
            f"{str(dtype).removeprefix('torch.')}: convert one to the other"
        )
    return "Make the model take this batch, or check that --data names the data it was built for"


def _leaves(x: Batchable) -> list[Tensor]:
    from hfft.optim.batches import leaves

    try:
        return leaves(x)
    except TypeError:
        return []
