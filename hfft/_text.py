"""Short lists in one-line messages and table cells (plain Python, no hfft imports)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["short_list"]


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
