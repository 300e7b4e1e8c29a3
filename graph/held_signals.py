"""Interrupts held back for a few steps that must not be cut half-way (nothing here imports torch).

A signal's Python handler raises where the main thread happens to be. Two places cannot take that: the renames
that replace an output (prunefx/output.py), which an interrupt between them would leave neither old nor new, and
torch's zip writer (Program.save), which calls back into Python for every block it writes and aborts the process
(std::terminate) when an exception comes back, as a KeyboardInterrupt raised in such a callback does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back until the block ends, then raised again to the handlers that were
    there (the module docstring says where). Held by Python handlers that only note the signal (a thread's
    signal mask would not do: torch's threads would take the signal). The main thread only: Python runs signal
    handlers there alone."""
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
