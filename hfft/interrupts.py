"""Ctrl-C and SIGTERM: what a run says when it stops, and writes no signal may cut short.

A run that is interrupted restores the last accepted weights, saves what it
has and raises :class:`Interrupted`, whose message says truthfully what was
saved where; a plain ``KeyboardInterrupt`` reaching the command line means
nothing was written. :func:`signals_held` keeps SIGINT and SIGTERM waiting
while a run writes its final files, so a second Ctrl-C cannot leave them half
written. Plain Python; importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Interrupted", "Terminated", "as_interrupt", "signals_held", "was_terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that runs save what they have."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after saving what it had.

    Args:
        saved: One sentence: what was saved and where.
        terminated: Whether the signal was SIGTERM (exit code 143, else 130).
    """

    def __init__(self, saved: str, terminated: bool = False) -> None:
        super().__init__(saved)
        self.saved = saved
        self.terminated = terminated

    @classmethod
    def after(cls, signal_exc: BaseException, saved: str) -> Interrupted:
        """The :class:`Interrupted` that follows ``signal_exc`` once ``saved`` is done."""
        return cls(saved, was_terminated(signal_exc))


def was_terminated(err: BaseException) -> bool:
    """Whether an interrupt came from SIGTERM (exit code 143) rather than Ctrl-C (130)."""
    return isinstance(err, Terminated) or (isinstance(err, Interrupted) and err.terminated)


_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held(deliver: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM until the block ends.

    For writes that must complete (a run's final files): a signal that
    arrives inside the block waits. With ``deliver``, the first one goes to
    the handler that was in place before, right after the block; without,
    the caller gets the signals that arrived (the yielded list) and decides.
    Outside the main thread (where Python cannot set handlers) the block runs
    unprotected.
    """
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous: dict[int, Any] = {s: signal.signal(s, hold) for s in _HELD}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught and deliver:
            _deliver(caught[0], previous[caught[0]])


def as_interrupt(signals: list[int]) -> KeyboardInterrupt | None:
    """The interrupt the first of ``signals`` (held by :func:`signals_held`) stands for."""
    if not signals:
        return None
    return Terminated() if signals[0] == signal.SIGTERM else KeyboardInterrupt()


def _deliver(signum: int, handler: Any) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)
