"""Text from outside hfft in messages: one printable line, cut with "…"."""

from __future__ import annotations

import pytest

from hfft._text import MOST, clipped, quoted


@pytest.mark.parametrize(
    ("text", "most", "expected"),
    [
        ("mlp", 80, "mlp"),
        ("x" * 100, 5, "xxxx…"),
        ("a\nb\tc", 80, "a b c"),
        ("bell\x07", 80, "bell?"),
        ("x" * 79, 80, "x" * 79),
        (" " * 1000 + "tail", 80, "…"),
    ],
    ids=["short", "cut", "one-line", "unprintable", "fits", "padded"],
)
def test_clipped(text: str, most: int, expected: str) -> None:
    assert clipped(text, most) == expected


def test_quoted_cuts_a_megabyte_and_names_a_huge_integer() -> None:
    assert quoted("mlp") == "'mlp'"
    assert len(quoted("x" * 1_000_000)) == MOST
    assert quoted(10**5000) == "<an int too long to print>"
