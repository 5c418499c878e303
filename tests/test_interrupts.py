"""Signals: held while files are written, delivered afterwards, with the right meaning."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from hfft.experiment.interrupts import (
    Interrupted,
    Terminated,
    as_interrupt,
    first_signal_stops,
    interruptible,
    signals_held,
    was_terminated,
)


def test_a_held_sigint_is_delivered_after_the_block() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), signals_held():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("the write finished")  # not cut short
    assert done == ["the write finished"]


def test_a_held_sigterm_goes_to_the_handler_in_place() -> None:
    def on_term(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(Terminated), signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is on_term  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_undelivered_signals_are_reported() -> None:
    with signals_held(deliver=False) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert caught == [signal.SIGTERM, signal.SIGINT]
    assert isinstance(as_interrupt(caught), Terminated)
    assert type(as_interrupt([signal.SIGINT])) is KeyboardInterrupt
    assert as_interrupt([]) is None


def test_outside_the_main_thread_the_block_just_runs() -> None:
    seen: list[list[int]] = []

    def work() -> None:
        with signals_held() as caught:
            seen.append(caught)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [[]]


def test_interrupted_remembers_the_signal() -> None:
    assert was_terminated(Interrupted.after(Terminated(), "saved")) is True
    assert was_terminated(Interrupted.after(KeyboardInterrupt(), "saved")) is False
    inner = Interrupted.after(Terminated(), "saved in a")
    assert Interrupted.after(inner, "saved in b").terminated
    assert str(Interrupted("the files are in x")) == "the files are in x"


def test_the_first_signal_stops_and_later_ones_wait() -> None:
    before = signal.getsignal(signal.SIGINT)
    cleaned_up = []
    with first_signal_stops():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("the first signal did not stop the run")
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C during the clean-up
        os.kill(os.getpid(), signal.SIGTERM)
        cleaned_up.append("files written")
        with pytest.raises(KeyboardInterrupt), interruptible():
            os.kill(os.getpid(), signal.SIGINT)  # the final evaluation may be skipped
            raise AssertionError("an interruptible block was not interrupted")
    assert cleaned_up == ["files written"]
    assert signal.getsignal(signal.SIGINT) is before  # put back by the outermost


def test_the_first_sigterm_stops_as_terminated() -> None:
    with first_signal_stops(), pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")


def test_an_also_signal_stops_and_waits_as_sigterm_and_is_reported() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    with first_signal_stops(also=(signal.SIGUSR2,)) as arrived:
        with signals_held(deliver=False) as caught:  # a run writing its files
            os.kill(os.getpid(), signal.SIGUSR2)
        assert caught == [signal.SIGUSR2] and isinstance(as_interrupt(caught), Terminated)
        with first_signal_stops(), pytest.raises(Terminated):  # a nested run, not held
            os.kill(os.getpid(), signal.SIGUSR2)
    assert arrived == {signal.SIGUSR2}
    assert signal.getsignal(signal.SIGUSR2) is before  # put back by the outermost
    with first_signal_stops(), signals_held():  # without it, SIGUSR2 is not hfft's
        assert signal.getsignal(signal.SIGUSR2) is before


def test_nested_stops_share_one_state() -> None:
    with first_signal_stops():
        with first_signal_stops(), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the outer run is stopping too: it waits


def test_after_a_stop_the_command_line_ignores_signals() -> None:
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt), first_signal_stops(ignore_after_stop=True):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    with first_signal_stops(ignore_after_stop=True):
        pass
    assert signal.getsignal(signal.SIGINT) is before  # no stop: the handler comes back
