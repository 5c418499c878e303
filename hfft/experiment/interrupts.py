"""Ctrl-C and SIGTERM: the first one stops a run, the rest wait until it has saved.

Inside :func:`first_signal_stops` (every run and command enters it) the first
SIGINT raises ``KeyboardInterrupt`` and the first SIGTERM
:class:`Terminated`, wherever the run is; every later signal is only
recorded, so the run's clean-up — putting back the last accepted weights,
writing its files — cannot be cut short by a second Ctrl-C. Only inside
:func:`interruptible` (the evaluation of the saved weights) does a later
signal raise again, to skip that work. :func:`signals_held` keeps even a first
signal waiting while a run that was *not* interrupted writes its final files.
A job array's task adds the scheduler's warning signal (SIGUSR2, ``also``),
which then stops and waits exactly as SIGTERM does.

A run that stopped raises :class:`Interrupted`, whose message says truthfully
what was saved where; a plain ``KeyboardInterrupt`` reaching the command line
means nothing was written. Plain Python; importing this module does not
import torch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "Interrupted",
    "Terminated",
    "as_interrupt",
    "first_signal_stops",
    "interruptible",
    "signals_held",
    "was_terminated",
]


class Terminated(KeyboardInterrupt):
    """SIGTERM (or an ``also`` signal), delivered like Ctrl-C so that runs save what they
    have."""


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


def as_interrupt(signals: list[int]) -> KeyboardInterrupt | None:
    """The interrupt the first of ``signals`` (held by :func:`signals_held`) stands for."""
    if not signals:
        return None
    return KeyboardInterrupt() if signals[0] == signal.SIGINT else Terminated()


_HELD = (signal.SIGINT, signal.SIGTERM)


class _Stop:
    """The process's run-signal state, shared by nested :func:`first_signal_stops`."""

    depth = 0
    stopping = False
    interruptible = 0
    later: list[int] = []  # noqa: RUF012 (one process-wide list, reset by the outermost)
    also: tuple[int, ...] = ()  # the outermost's signals that stop as SIGTERM does
    arrived: set[int] = set()  # noqa: RUF012 (the outermost's, what it yields)


def _held() -> tuple[int, ...]:
    return (*_HELD, *_Stop.also)


def _on_signal(signum: int, frame: Any) -> None:
    _Stop.arrived.add(signum)
    if not _Stop.stopping:
        _Stop.stopping = True
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
    _Stop.later.append(signum)
    if _Stop.interruptible:
        raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def first_signal_stops(
    ignore_after_stop: bool = False, also: tuple[int, ...] = ()
) -> Iterator[set[int]]:
    """The first SIGINT/SIGTERM raises; later ones wait (see the module docstring).

    Nested uses share one state; the outermost installs the handlers and puts
    the previous ones back at the end.

    Args:
        ignore_after_stop: After a stop, leave SIGINT and SIGTERM ignored
            instead of putting the previous handlers back (the command line,
            which exits right after, so a late signal cannot cut its last line
            short).
        also: More signals that stop, and wait in :func:`signals_held`, as
            SIGTERM does (the outermost's count): a job array task's SIGUSR2.

    Yields:
        The signals that arrived in the block (the outermost's set, shared by
        nested uses), held ones included.
    """
    if not _main_thread():
        yield set()
        return
    outermost = _Stop.depth == 0
    previous: dict[int, Any] = {}
    if outermost:
        _Stop.stopping, _Stop.later, _Stop.interruptible = False, [], 0
        _Stop.also, _Stop.arrived = tuple(also), set()
        previous = {s: signal.signal(s, _on_signal) for s in _held()}
    _Stop.depth += 1
    try:
        yield _Stop.arrived
    finally:
        _Stop.depth -= 1
        if outermost:
            _Stop.also = ()
            for s, handler in previous.items():
                stopped = ignore_after_stop and _Stop.stopping
                signal.signal(s, signal.SIG_IGN if stopped else handler)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A block that a signal after the first may cut short (``KeyboardInterrupt``)."""
    _Stop.interruptible += 1
    try:
        yield
    finally:
        _Stop.interruptible -= 1


@contextlib.contextmanager
def signals_held(deliver: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM (and :func:`first_signal_stops`'s ``also``), even a first
    one, until the block ends.

    For writes that must complete (a run's final files). With ``deliver``, the
    first signal that arrived goes to the handler that was in place before,
    right after the block; without, the caller gets the signals that arrived
    (the yielded list) and decides. Outside the main thread (where Python
    cannot set handlers) the block runs unprotected.
    """
    caught: list[int] = []
    if not _main_thread():
        yield caught
        return

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        if _Stop.depth:
            _Stop.arrived.add(signum)

    previous: dict[int, Any] = {s: signal.signal(s, hold) for s in _held()}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught and deliver:
            _deliver(caught[0], previous[caught[0]])


def _deliver(signum: int, handler: Any) -> None:
    import os

    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)
