"""Signals as exceptions: SIGTERM and SIGHUP raise their own KeyboardInterrupt from the CLI's signal handlers,
and an interrupt that a library swallowed on its way up is recorded here and raised again before a run
publishes anything (prunefx/output.py). Publishing itself runs with the signals held (`signals_held`), and
what a run published is recorded, so that an interrupt after it says so rather than "no output was written"."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (the CLI raises it from its signal handler)."""


class HungUp(KeyboardInterrupt):
    """SIGHUP: the terminal went away (the CLI raises it from its signal handler)."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    return {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}.get(signum, KeyboardInterrupt)()


_interrupt: dict[str, int | None] = {"signal": None}


def record_interrupt(signum: int) -> None:
    _interrupt["signal"] = signum


def clear_interrupt() -> None:
    _interrupt["signal"] = None
    _published.clear()


_published: list[str] = []


def record_published(path) -> None:
    """`path` is in place, complete: an interrupt from now on no longer means that nothing was written."""
    _published.append(str(path))


def published() -> list[str]:
    return list(_published)


HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back until the block ends, then raised again to the handlers that were
    there: for the few renames that replace an output, which an interrupt half-way would leave neither old
    nor new. Held by Python handlers that only note the signal (a thread's signal mask would not do: torch's
    threads would take the signal). The main thread only: Python runs signal handlers there alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = {signum: handler for signum in sorted(HELD)
            if (handler := signal.getsignal(signum)) not in (None, signal.SIG_IGN)}  # None: not Python's to set
    holding = [True]

    def hold(number: int, frame) -> None:
        if holding[0]:
            arrived.append(number)
        else:  # left installed by a restore an earlier signal cut short: behave as the handler it stood for
            _deliver(number, held[number], frame)

    try:
        for signum in held:
            signal.signal(signum, hold)
        yield
    finally:
        holding[0] = False
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])


def _deliver(number: int, handler, frame) -> None:
    if callable(handler):
        handler(number, frame)
    else:  # SIG_DFL: the default action, as if the handler had never been replaced
        signal.signal(number, handler)
        signal.raise_signal(number)


def raise_if_interrupted() -> None:
    """Re-raise an interrupt that arrived but was swallowed on its way up (see prunefx/cli/__init__.py)."""
    signum = _interrupt["signal"]
    if signum is not None:
        raise interrupt_for(signum)
