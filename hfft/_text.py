"""Text in one-line messages and table cells: short lists, and outside text cut.

A checkpoint's metadata and keys, or a user's exception message, may be of any
length and hold any characters; a message shows at most :data:`MOST` of them
on one line and marks a cut with "…", so that a 1 MB model name in a
checkpoint's header is not echoed whole to the terminal. Plain Python, no hfft
imports.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MOST", "clipped", "quoted", "short_list"]


def short_list(items: Sequence[str], most: int = 5, *, quoted: bool = False) -> str:
    """The first ``most`` items joined by commas, and how many more there are.

    ``short_list(["a", "b", "c"], 2)`` is ``"a, b and 1 more"``; with
    ``quoted`` each item is in single quotes; an empty list is ``"–"``.
    """
    if not items:
        return "–"
    shown = ", ".join(f"'{s}'" if quoted else s for s in items[:most])
    rest = len(items) - most
    return f"{shown} and {rest} more" if rest > 0 else shown


MOST = 80
"""The most characters of outside text a message shows."""


def clipped(text: str, most: int = MOST) -> str:
    """``text`` on one printable line of at most ``most`` characters, a cut ending in "…".

    ``clipped("a\\nb")`` is ``"a b"``; ``clipped("x" * 100, 5)`` is ``"xxxx…"``.
    """
    head = text[: 4 * most]  # whitespace runs collapse below: enough to fill the line
    line = " ".join(head.split())
    line = "".join(c if c.isprintable() else "?" for c in line)
    if len(line) > most or len(head) < len(text):
        return line[: most - 1] + "…"
    return line


def quoted(value: object, most: int = MOST) -> str:
    """``repr(value)`` clipped: how a message names a value that came from outside.

    ``quoted("mlp")`` is ``"'mlp'"``; an integer of more digits than Python
    prints is named by its type.
    """
    try:
        text = repr(value)
    except ValueError:  # int → str refuses more than sys.get_int_max_str_digits() digits
        text = f"<an {type(value).__name__} too long to print>"
    return clipped(text, most)
