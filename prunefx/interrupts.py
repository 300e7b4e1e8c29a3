"""Signals as exceptions: SIGTERM and SIGHUP raise their own KeyboardInterrupt from the CLI's signal handlers,
and an interrupt that a library swallowed on its way up is recorded here and raised again before a run
publishes anything (prunefx/output.py). Publishing itself runs with the signals held (graph/held_signals.py), and
what a run published is recorded, so that an interrupt after it says so rather than "no output was written"."""

from __future__ import annotations

import signal


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


def raise_if_interrupted() -> None:
    """Re-raise an interrupt that arrived but was swallowed on its way up (see prunefx/cli/__init__.py)."""
    signum = _interrupt["signal"]
    if signum is not None:
        raise interrupt_for(signum)
