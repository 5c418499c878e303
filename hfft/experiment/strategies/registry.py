"""Every strategy, declared once: the registry of :class:`StrategyEntry`.

An entry says everything hfft needs to know about a strategy: its name, the
line it has in ``--help``, its options (type, default, bounds, help), the
check against the data and the checkpoint, the runner it builds, what is
evaluated and saved, what it adds to ``metrics.json`` and the ``compare``
suites it belongs to. The command-line help, ``compare``'s suites, the
validation of options and ``docs/strategies.md`` are made from the entries;
nothing else decides what a strategy is by its name (a plot's colours and
``study``'s choice of Figure 1's strategies aside).

The built-in entries are in :mod:`hfft.experiment.strategies.catalog`. A new
strategy is one module: its runner (a :class:`~hfft.experiment.strategies.runners.Runner`)
and ``register(StrategyEntry(...))``.

A strategy on the command line is parsed once (:func:`parse_strategy`) into a
typed, frozen :class:`Strategy` that is passed down::

    sgd
    sgd-cosine:lr=0.01,batch_size=256
    hf:m=2048,damping=0.5,curvature=hessian,preconditioner=empirical-fisher
    auto:m=256,interval=0.1,hf_cg_max_iter=50

Plain Python: importing this module (or the catalog) does not import torch;
an entry may name its builder and check as ``"module:function"`` inside
:mod:`hfft.experiment.strategies`, imported when a run needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from hfft.experiment.strategies.options import Option, format_value

if TYPE_CHECKING:
    from torch import nn

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.strategies.interface import Runner, SGDSettings
    from hfft.optim.output_hessians import Loss

__all__ = [
    "KINDS",
    "SUITES",
    "RunnerContext",
    "StartingFacts",
    "Strategy",
    "StrategyEntry",
    "StrategyUnavailable",
    "canonical_label",
    "entries",
    "entry",
    "entry_of",
    "kind_of",
    "parse_strategy",
    "register",
    "suite_members",
    "typed_strategies",
]

KINDS = ("first-order", "hf", "auto", "second-order")
"""What reports group a strategy as: a first-order method, Hessian-free, ``auto``, or a
second-order method other than HF (``kfac``: neither a time-to-target reference, as the
first-order ones are, nor given HF's progress notes)."""

SUITES = ("paper", "extended", "second-order")
"""``compare --suite``: ``paper`` (the paper's strategies), ``extended`` (also the
late-phase methods a practitioner would try) and ``second-order`` (SGD with a constant,
divided and cosine rate, HF at its default sizes and the second-order and preconditioned
peers of HF: ``kfac``, ``soap``, ``muon``)."""

_OWN = "hfft.experiment.strategies."


@dataclass(frozen=True)
class StartingFacts:
    """What a strategy is checked against before any run: the training samples, the
    checkpoint's SGD rate and batch size (``None`` where it records none),
    ``--eval-batch-size``, and the run's loss (``None``: not known to the caller) with
    whether its targets are floating point (regression, multi-label, class probabilities):
    what a method that knows only some losses (K-FAC) asks."""

    n_train: int
    lr: float | None
    batch_size: int | None
    eval_batch_size: int | None
    loss_fn: Loss | None = None
    float_targets: bool = False


class StrategyUnavailable(ValueError):
    """A strategy that cannot run on this problem or installation whatever its options (a
    loss it does not support, a package not installed), in one sentence: refused when
    named, left out with a note when a ``compare`` suite added it."""


@dataclass(frozen=True)
class RunnerContext:
    """What a runner is built from: the model and its data, the checkpoint's SGD
    settings and the run's evaluation points, B̄ size and saved optimizer state."""

    model: nn.Module
    splits: DataSplits
    settings: SGDSettings
    eval_batch_size: int | None
    evaluations: int
    optimizer_state: dict[str, Any] | None = None


Builder = Callable[["Strategy", RunnerContext], "Runner"]
Checker = Callable[["Strategy", StartingFacts], None]


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy, declared once.

    Attributes:
        name: The name typed on the command line (``hf``, ``sgd-cosine``).
        summary: One line for ``--help`` and ``docs/strategies.md``.
        options: Its ``key=value`` options in the order labels list them.
        build: ``build(strategy, context) -> Runner``, or ``"module:function"``
            inside :mod:`hfft.experiment.strategies`.
        check: ``check(strategy, facts)`` raising a one-sentence ``ValueError``
            when the strategy cannot run on the data, a :class:`StrategyUnavailable`
            where no option would help (same forms as ``build``).
        kind: One of :data:`KINDS`.
        suites: The ``compare --suite`` values that include it.
        batch_option: The option that sets its batch size (``m``, ``batch_size``).
        data_parallel: Whether it runs under ``torchrun``.
        settings: Fixed parameters its builder reads (the SGD schedule).
        log: The top-level ``metrics.json`` entry its runner's report adds.
        evaluates: What is evaluated and saved, in words.
        example: A typical use, for the help (``sgd:lr=0.01``).
        baseline: Whether ``compare``'s time to target may take its final value as the
            target (the best such strategy's).
    """

    name: str
    summary: str
    options: Mapping[str, Option]
    build: Builder | str
    check: Checker | str | None = None
    kind: str = "first-order"
    suites: tuple[str, ...] = ()
    batch_option: str | None = None
    data_parallel: bool = True
    settings: Mapping[str, Any] = field(default_factory=dict)
    log: str | None = None
    evaluates: str = "the trained weights"
    example: str = ""
    baseline: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"strategy {self.name!r}: kind must be one of {', '.join(KINDS)}")
        unknown = set(self.suites) - set(SUITES)
        if unknown:
            raise ValueError(f"strategy {self.name!r}: unknown suites {sorted(unknown)}")
        if self.batch_option is not None and self.batch_option not in self.options:
            raise ValueError(f"strategy {self.name!r}: no option {self.batch_option!r}")

    def builder(self) -> Builder:
        """The function that builds the runner."""
        return cast(Builder, _resolve(self.build))

    def checker(self) -> Checker | None:
        """The function that checks the strategy against the data, if any."""
        return None if self.check is None else cast(Checker, _resolve(self.check))


def _resolve(target: Callable[..., Any] | str) -> Any:
    if callable(target):
        return target
    module, _, path = target.partition(":")
    if not module.startswith(_OWN):  # never code named by anything but hfft itself
        raise ValueError(f"a strategy's builder must be in {_OWN}*, not {module!r}")
    found: Any = importlib.import_module(module)
    for attr in path.split("."):  # a function, or a class's method: SWARunner.build
        found = getattr(found, attr)
    return found


_ENTRIES: dict[str, StrategyEntry] = {}


def register(new: StrategyEntry) -> StrategyEntry:
    """Add a strategy; its name must be new.

    Raises:
        ValueError: If a strategy of that name is registered already.
    """
    _load_catalog()
    if new.name in _ENTRIES:
        raise ValueError(f"a strategy named {new.name!r} is registered already")
    _ENTRIES[new.name] = new
    return new


def unregister(name: str) -> None:
    """Remove a strategy added with :func:`register` (tests that register their own)."""
    _ENTRIES.pop(name, None)


_loaded = False


def _load_catalog() -> None:
    global _loaded
    if not _loaded:
        _loaded = True  # first: the catalog registers through register(), which loads it
        try:
            importlib.import_module(_OWN + "catalog")
        except BaseException:
            _loaded = False
            raise


def entries() -> tuple[StrategyEntry, ...]:
    """Every registered strategy, in registration order (the built-in ones first)."""
    _load_catalog()
    return tuple(_ENTRIES.values())


def entry(name: str) -> StrategyEntry | None:
    """The strategy called ``name``, or ``None``."""
    _load_catalog()
    return _ENTRIES.get(name)


def entry_of(label: str) -> StrategyEntry | None:
    """The entry of a recorded strategy label (``hf:m=2048`` gives ``hf``'s), or ``None``
    for a strategy not registered here."""
    return entry(label.partition(":")[0].strip().lower())


def kind_of(label: str) -> str | None:
    """The kind (:data:`KINDS`) of a recorded strategy label, or ``None`` if unregistered."""
    found = entry_of(label)
    return None if found is None else found.kind


def suite_members(suite: str) -> tuple[StrategyEntry, ...]:
    """The strategies of ``compare --suite SUITE``, in registration order.

    Raises:
        ValueError: For an unknown suite.
    """
    if suite not in SUITES:
        raise ValueError(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    return tuple(e for e in entries() if suite in e.suites)


def _unknown_strategy(name: str) -> ValueError:
    names = ", ".join(e.name for e in entries())
    return ValueError(
        f"unknown strategy {name!r}; use one of {names}, optionally with "
        "key=value options as in hf:m=2048,damping=0.5 or sgd:lr=0.01"
    )


def _table(name: str) -> dict[str, Option]:
    found = entry(name)
    if found is None:
        raise _unknown_strategy(name)
    return dict(found.options)


def _unknown_option(name: str, key: str) -> ValueError:
    if key in ("weight_decay", "hf_weight_decay"):  # auto's HF options have the prefix hf_
        return ValueError(
            f"option {key} cannot be set for strategy {name!r}: it belongs to the "
            "objective and comes from the problem of the checkpoint"
        )
    return ValueError(
        f"unknown option {key!r} for strategy {name!r}; the accepted options are "
        f"{', '.join(_table(name))}"
    )


def _bad_value(name: str, key: str, value: Any) -> ValueError:
    return ValueError(
        f"option {key} of strategy {name!r} must be {_table(name)[key].describe()}, got {value!r}"
    )


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy and its options.

    Attributes:
        name: A registered strategy (:func:`hfft.experiment.strategies.registry.entries`).
        options: Typed option values, keys from its entry's options. Options not
            given take their defaults (:meth:`get`).

    Raises:
        ValueError: If the name, an option or a value is not accepted.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        table = _table(self.name)
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
    def entry(self) -> StrategyEntry:
        """The registry's entry of this strategy."""
        found = entry(self.name)
        if found is None:  # unregistered after it was built
            raise _unknown_strategy(self.name)
        return found

    def get(self, key: str) -> Any:
        """The option ``key`` as given, else its declared default (``None``: none declared).

        Raises:
            KeyError: If the strategy has no such option.
        """
        return self.options[key] if key in self.options else self.entry.options[key].default

    @property
    def is_hf(self) -> bool:
        """Whether this is a Hessian-free strategy (its entry's kind)."""
        return self.entry.kind == "hf"

    @property
    def is_auto(self) -> bool:
        """Whether this is an ``auto`` strategy (SGD, then HF; its entry's kind)."""
        return self.entry.kind == "auto"

    @property
    def label(self) -> str:
        """The canonical text, options in table order: ``hf:m=2048,damping=0.5``."""
        if not self.options:
            return self.name
        items = ",".join(f"{key}={format_value(value)}" for key, value in self.options.items())
        return f"{self.name}:{items}"

    @property
    def batch_size(self) -> int | None:
        """The batch size given (the entry's ``batch_option``: ``m`` for ``hf``) or None."""
        key = self.entry.batch_option
        value = None if key is None else self.options.get(key)
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
    table = _table(name)
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


def typed_strategies(given: Iterable[Strategy | str]) -> tuple[Strategy, ...]:
    """Strategies for a configuration: a library caller's text parsed (once, here), each
    strategy once.

    Raises:
        ValueError: For a strategy that does not parse, or one given twice.
    """
    typed = tuple(s if isinstance(s, Strategy) else parse_strategy(s) for s in given)
    labels = [s.label for s in typed]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice is not None:
        raise ValueError(f"strategy {twice} is given twice; give each strategy once")
    return typed


def canonical_label(text: Any) -> Any:
    """A recorded strategy text as its label (older records kept the text as typed:
    ``auto:m=256,interval=0.2`` is ``auto:interval=0.2,m=256``); anything that does not
    parse is returned unchanged, so that it compares unequal."""
    try:
        return parse_strategy(text).label if isinstance(text, str) else text
    except ValueError:
        return text
