"""One ``key=value`` option of a strategy: its type, bounds, default and help.

An :class:`Option` parses and checks its values with the same ranges as the
run settings (:mod:`hfft.experiment.limits`); a strategy's entry in the
registry (:mod:`hfft.experiment.strategies.registry`) lists its options.

Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hfft.experiment import limits

__all__ = ["Option", "format_value"]

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class Option:
    """The type of one strategy option.

    Attributes:
        type: ``int``, ``float``, ``bool`` or ``str``.
        choices: The accepted strings, for ``str`` options.
        nullable: Whether ``none`` (Python ``None``) is accepted.
        range: The interval a number must lie in (one of :mod:`hfft.experiment.limits`'
            ranges, the same that check the run settings), or ``None``.
        default: The value a strategy takes when the option is not given, or
            ``None`` where it comes from elsewhere (the checkpoint, another
            option, ``HessianFree``'s signature), which ``help`` then says.
        help: One line for the command-line help.
    """

    type: type
    help: str
    choices: tuple[str, ...] = ()
    nullable: bool = False
    range: limits.Range | None = None
    default: Any = None

    def describe(self) -> str:
        """What values are accepted, e.g. ``an integer > 0`` or ``one of ggn, hessian``."""
        if self.type is str:
            return f"one of {', '.join((*self.choices, 'none') if self.nullable else self.choices)}"
        words = {int: "an integer", float: "a number", bool: "true or false"}[self.type]
        if self.range is not None:
            words += f" {self.range.words}"
        return f"{words} or none" if self.nullable else words

    def check(self, value: Any) -> bool:
        """Whether a typed value is acceptable."""
        if value is None:
            return self.nullable
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is str:
            return isinstance(value, str) and value in self.choices
        return limits.accepts(self.type, self.range or limits.ANY, value)

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


def format_value(value: Any) -> str:
    """An option value as a label writes it: ``none``, ``true``, ``0.5``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
