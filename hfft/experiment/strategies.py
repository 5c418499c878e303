"""Fine-tuning strategies as typed on the command line.

A strategy is a name with optional ``key=value`` options::

    sgd
    sgd-cosine:lr=0.01,batch_size=256
    hf:m=2048,damping=0.5,curvature=hessian,preconditioner=empirical-fisher
    auto:m=256,interval=0.1,hf_cg_max_iter=50

The options of ``hf`` are the batch size ``m`` of the curvature batch B and the
keyword arguments of :class:`hfft.optim.optimizer.HessianFree`, except
``weight_decay``, which comes from the problem. :data:`HF_OPTIONS` lists them
with their types in one place; a test holds it to the constructor's signature.

``auto`` (:mod:`hfft.experiment.auto`) runs constant-rate SGD and switches to HF; its
options (:data:`AUTO_OPTIONS`) are the switching rule's, the SGD options, ``m``
and every other HF option with the prefix ``hf_``.

The late-phase methods a practitioner would also try (:data:`EXTENDED_STRATEGIES`,
:mod:`hfft.experiment.late_phase`) are built on the libraries that maintain
them: ``swa`` (``torch.optim.swa_utils``), ``lbfgs`` (``torch.optim.LBFGS``),
``adam`` and ``adamw`` (``torch.optim``) and ``sgd-schedulefree``
(the ``schedulefree`` package).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AUTO_OPTIONS",
    "EXTENDED_STRATEGIES",
    "HF_OPTIONS",
    "SGD_OPTIONS",
    "SGD_STRATEGIES",
    "STRATEGIES",
    "Option",
    "Strategy",
    "parse_strategy",
]

SGD_STRATEGIES = ("sgd", "sgd-div10", "sgd-cosine", "sgd-plateau")
EXTENDED_STRATEGIES = ("swa", "lbfgs", "adam", "adamw", "sgd-schedulefree")
STRATEGIES = (*SGD_STRATEGIES, "hf", "auto", *EXTENDED_STRATEGIES)

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")

# Ranges a number must lie in, as (test, words for the error message).
_RANGES = {
    "positive": (lambda x: x > 0, "> 0"),
    "nonnegative": (lambda x: x >= 0, ">= 0"),
    "unit": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "open-unit": (lambda x: 0 < x < 1, "in (0, 1)"),
    "at-least-one": (lambda x: x >= 1, ">= 1"),
    "half-open-unit": (lambda x: 0 <= x < 1, "in [0, 1)"),
}


@dataclass(frozen=True)
class Option:
    """The type of one strategy option.

    Attributes:
        type: ``int``, ``float``, ``bool`` or ``str``.
        choices: The accepted strings, for ``str`` options.
        nullable: Whether ``none`` (Python ``None``) is accepted.
        range: A key of the accepted numeric ranges (``positive``,
            ``nonnegative``, ``unit``, ``open-unit``, ``half-open-unit``,
            ``at-least-one``), or ``None``.
        help: One line for the command-line help.
    """

    type: type
    help: str
    choices: tuple[str, ...] = ()
    nullable: bool = False
    range: str | None = None

    def describe(self) -> str:
        """What values are accepted, e.g. ``an integer > 0`` or ``one of ggn, hessian``."""
        if self.type is str:
            return f"one of {', '.join((*self.choices, 'none') if self.nullable else self.choices)}"
        words = {int: "an integer", float: "a number", bool: "true or false"}[self.type]
        if self.range is not None:
            words += f" {_RANGES[self.range][1]}"
        return f"{words} or none" if self.nullable else words

    def check(self, value: Any) -> bool:
        """Whether a typed value is acceptable."""
        if value is None:
            return self.nullable
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is str:
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return self.range is None or bool(_RANGES[self.range][0](value))

    def parse(self, text: str) -> Any:
        """The typed value of ``text``, or raise ``ValueError`` (without a message)."""
        word = text.strip().lower()
        if self.nullable and word == "none":
            return None
        value: Any
        if self.type is bool:
            if word not in _TRUE + _FALSE:
                raise ValueError
            value = word in _TRUE
        elif self.type is str:
            value = word
        else:
            value = self.type(word)  # int("1.5") and float("x") raise ValueError
        if not self.check(value):
            raise ValueError
        return value


HF_OPTIONS: dict[str, Option] = {
    "m": Option(int, "size of the batch B (gradient and curvature)", range="positive"),
    "curvature": Option(str, "curvature matrix", choices=("ggn", "hessian")),
    "damping": Option(float, "initial Tikhonov damping λ", range="positive"),
    "adapt_damping": Option(bool, "adapt λ with the Levenberg-Marquardt rule"),
    "cg_max_iter": Option(int, "most CG iterations per step", range="positive"),
    "cg_tol": Option(float, "CG relative residual tolerance", range="nonnegative"),
    "martens_criterion": Option(bool, "stop CG on Martens' relative progress test"),
    "cg_decay_x0": Option(float, "decay of the previous CG solution as start", range="unit"),
    "use_cg_backtracking": Option(bool, "backtrack over CG iterates"),
    "lr": Option(float, "step size multiplier", range="positive"),
    "use_linesearch": Option(bool, "Armijo line search on the step"),
    "preconditioner": Option(
        str, "CG preconditioner", choices=("empirical-fisher",), nullable=True
    ),
    "chunk_size": Option(int, "examples per chunk of the batch", nullable=True, range="positive"),
    "backend": Option(str, "curvature-product back-end", choices=("func", "backpack")),
    "model_mode": Option(str, "module mode during HF products", choices=("eval", "train", "keep")),
    "cache_chunks": Option(bool, "keep every chunk's linearisation"),
    "preconditioner_exponent": Option(float, "exponent of the preconditioner", range="nonnegative"),
    "linesearch_beta": Option(float, "line-search step shrink factor", range="open-unit"),
    "linesearch_c": Option(float, "Armijo sufficient-decrease constant", range="open-unit"),
    "linesearch_max_tries": Option(int, "most line-search trials", range="positive"),
    "tf32": Option(bool, "allow TF32 convolutions and matmuls on CUDA (off: IEEE float32)"),
    "max_damping": Option(
        float, "largest λ (none: 1e4 × damping)", nullable=True, range="positive"
    ),
}
"""Options of the ``hf`` strategy: ``m`` and the keywords of ``HessianFree``."""

SGD_OPTIONS: dict[str, Option] = {
    "lr": Option(float, "learning rate α (default: the checkpoint's)", range="positive"),
    "batch_size": Option(int, "batch size (default: the checkpoint's)", range="positive"),
    "momentum": Option(float, "momentum (default: the checkpoint's)", range="half-open-unit"),
}
"""Options of the SGD strategies; the defaults come from the checkpoint."""


AUTO_RULE_OPTIONS: dict[str, Option] = {
    "interval": Option(
        float, "budget fraction of SGD before each HF probe (the window)", range="open-unit"
    ),
    "first": Option(
        float,
        "budget fraction of SGD before the first probe (default: interval; 0: probe at once)",
        range="half-open-unit",
    ),
    "margin": Option(
        float,
        "switch only when HF's loss decrease per second exceeds margin × SGD's (0: no rate test)",
        range="nonnegative",
    ),
    "backoff": Option(
        float, "factor by which the window grows after each rolled-back probe", range="at-least-one"
    ),
    "rho_min": Option(
        float,
        "roll a probe back whose reduction ratio ρ is below rho_min (0: no such test)",
        range="nonnegative",
    ),
    "switch_back": Option(
        bool, "try SGD again when HF slows down (a trial, rolled back if it does not pay)"
    ),
    "stall": Option(
        float,
        "HF has slowed down when its rate over a window is below stall × its best rate "
        "(or below SGD's last rate)",
        range="open-unit",
    ),
}
"""Options of the switching rule of ``auto`` (see :mod:`hfft.experiment.auto` for the defaults)."""

AUTO_HF_PREFIX = "hf_"

AUTO_OPTIONS: dict[str, Option] = {
    **AUTO_RULE_OPTIONS,
    **SGD_OPTIONS,
    "m": HF_OPTIONS["m"],
    **{AUTO_HF_PREFIX + key: option for key, option in HF_OPTIONS.items() if key != "m"},
}
"""Options of ``auto``: the rule's, the SGD phase's, ``m`` and the other HF options as ``hf_*``."""


SWA_OPTIONS: dict[str, Option] = {
    **SGD_OPTIONS,
    "swa_lr": Option(float, "the rate SWALR anneals to (default: α/2)", range="positive"),
    "start": Option(
        float, "budget fraction at which averaging starts (default 0.5)", range="half-open-unit"
    ),
    "anneal_steps": Option(
        int, "steps over which SWALR anneals from α to swa_lr (default 10)", range="positive"
    ),
}
"""Options of ``swa``: SGD's, and SWALR's rate, the start of averaging and the anneal."""

LBFGS_OPTIONS: dict[str, Option] = {
    "m": Option(int, "batch of each step (default: HF's m)", range="positive"),
    "lr": Option(float, "step length (default 1, as torch.optim.LBFGS)", range="positive"),
    "history_size": Option(int, "curvature pairs kept (default 10)", range="positive"),
    "max_iter": Option(int, "iterations per step, all on its batch (default 10)", range="positive"),
}
"""Options of ``lbfgs`` (strong-Wolfe line search, one batch per step)."""

ADAM_OPTIONS: dict[str, Option] = {
    "lr": Option(
        float, "learning rate (default 1e-3, not tuned to the checkpoint)", range="positive"
    ),
    "batch_size": SGD_OPTIONS["batch_size"],
    "beta1": Option(float, "first-moment decay (default 0.9)", range="half-open-unit"),
    "beta2": Option(float, "second-moment decay (default 0.999)", range="half-open-unit"),
    "eps": Option(float, "denominator term (default 1e-8)", range="positive"),
    "schedule": Option(
        str, "learning-rate schedule (default constant)", choices=("constant", "cosine")
    ),
}
"""Options of ``adam`` and ``adamw``."""

SCHEDULEFREE_OPTIONS: dict[str, Option] = {
    "lr": SGD_OPTIONS["lr"],
    "batch_size": SGD_OPTIONS["batch_size"],
    "momentum": Option(
        float, "interpolation β of schedule-free SGD (default 0.9)", range="half-open-unit"
    ),
    "warmup_steps": Option(int, "linear warm-up steps (default 0)", range="nonnegative"),
}
"""Options of ``sgd-schedulefree`` (``schedulefree.SGDScheduleFree``)."""

_OPTIONS = {
    "hf": HF_OPTIONS,
    "auto": AUTO_OPTIONS,
    "swa": SWA_OPTIONS,
    "lbfgs": LBFGS_OPTIONS,
    "adam": ADAM_OPTIONS,
    "adamw": ADAM_OPTIONS,
    "sgd-schedulefree": SCHEDULEFREE_OPTIONS,
}


def _options_of(name: str) -> dict[str, Option]:
    return _OPTIONS.get(name, SGD_OPTIONS)


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _unknown_strategy(name: str) -> ValueError:
    return ValueError(
        f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}, optionally with "
        "key=value options as in hf:m=2048,damping=0.5 or sgd:lr=0.01"
    )


def _unknown_option(name: str, key: str) -> ValueError:
    if key in ("weight_decay", AUTO_HF_PREFIX + "weight_decay"):
        return ValueError(
            f"option {key} cannot be set for strategy {name!r}: it belongs to the "
            "objective and comes from the problem of the checkpoint"
        )
    return ValueError(
        f"unknown option {key!r} for strategy {name!r}; the accepted options are "
        f"{', '.join(_options_of(name))}"
    )


def _bad_value(name: str, key: str, value: Any) -> ValueError:
    return ValueError(
        f"option {key} of strategy {name!r} must be {_options_of(name)[key].describe()}, "
        f"got {value!r}"
    )


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy and its options.

    Attributes:
        name: One of :data:`STRATEGIES`.
        options: Typed option values, keys from :data:`HF_OPTIONS` for ``hf``,
            :data:`AUTO_OPTIONS` for ``auto`` and :data:`SGD_OPTIONS`
            otherwise. Options not given take their defaults
            (``HessianFree``'s, the checkpoint's for SGD, :mod:`hfft.experiment.auto`'s).

    Raises:
        ValueError: If the name, an option or a value is not accepted.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise _unknown_strategy(self.name)
        table = _options_of(self.name)
        for key, value in self.options.items():
            if key not in table:
                raise _unknown_option(self.name, key)
            if not table[key].check(value):
                raise _bad_value(self.name, key, value)
        # A private copy in table order with floats as floats, so that equal
        # strategies have equal labels and a label parses back to its strategy.
        options = {
            key: float(self.options[key])
            if table[key].type is float and self.options[key] is not None
            else self.options[key]
            for key in table
            if key in self.options
        }
        object.__setattr__(self, "options", options)

    @property
    def is_hf(self) -> bool:
        """Whether this is the Hessian-free strategy."""
        return self.name == "hf"

    @property
    def is_auto(self) -> bool:
        """Whether this is ``auto`` (SGD, then HF)."""
        return self.name == "auto"

    def parts(self) -> tuple[Strategy, Strategy]:
        """The constant-rate ``sgd`` and the ``hf`` strategy that ``auto`` is made of.

        Raises:
            ValueError: If this strategy is not ``auto``.
        """
        if not self.is_auto:
            raise ValueError(f"strategy {self.name!r} has no SGD and HF parts; only auto has")
        sgd = {k: v for k, v in self.options.items() if k in SGD_OPTIONS}
        hf = {
            k.removeprefix(AUTO_HF_PREFIX): v
            for k, v in self.options.items()
            if k == "m" or k.startswith(AUTO_HF_PREFIX)
        }
        return Strategy("sgd", sgd), Strategy("hf", hf)

    @property
    def label(self) -> str:
        """The canonical text, options in table order: ``hf:m=2048,damping=0.5``."""
        if not self.options:
            return self.name
        items = ",".join(f"{key}={_format(value)}" for key, value in self.options.items())
        return f"{self.name}:{items}"

    @property
    def batch_size(self) -> int | None:
        """The batch size given (``m`` for ``hf`` and ``lbfgs``, else ``batch_size``) or None."""
        value = self.options.get("m" if self.name in ("hf", "lbfgs") else "batch_size")
        return None if value is None else int(value)

    def __str__(self) -> str:
        return self.label


def parse_strategy(text: str) -> Strategy:
    """A :class:`Strategy` from ``name`` or ``name:key=value,key=value``.

    Names and values are case-insensitive; in keys ``-`` may stand for ``_``
    (``cg-max-iter=100``). Booleans accept true/false, 1/0 and yes/no;
    ``preconditioner`` and ``chunk_size`` accept ``none``.

    Args:
        text: The strategy as typed, e.g. ``hf:m=2048,damping=0.5``.

    Returns:
        The strategy with typed options.

    Raises:
        ValueError: If the strategy, an option or a value is not accepted, or
            an option is given twice.
    """
    name, colon, rest = text.partition(":")
    name = name.strip().lower()
    if name not in STRATEGIES:
        raise _unknown_strategy(name)
    table = _options_of(name)
    options: dict[str, Any] = {}
    for item in rest.split(",") if colon else ():
        key, equals, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not equals or not key:
            raise ValueError(
                f"option {item.strip()!r} of strategy {name!r} is not key=value; write options "
                "as in hf:m=2048,damping=0.5"
            )
        if key not in table:
            raise _unknown_option(name, key)
        if key in options:
            raise ValueError(f"option {key} of strategy {name!r} is given twice")
        try:
            options[key] = table[key].parse(value)
        except ValueError:
            raise _bad_value(name, key, value.strip()) from None
    return Strategy(name, options)
