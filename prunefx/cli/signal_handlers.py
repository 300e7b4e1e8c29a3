"""The command's signal handlers: inside a run SIGINT, SIGTERM and SIGHUP are raised as exceptions (so staged
outputs are cleaned up on the way out); after it, a Python caller gets its own handlers back, and the command's
own process ends at once with the run's status, also while the interpreter tears down."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading

from prunefx.interrupts import clear_interrupt, interrupt_for, record_interrupt


def raise_on_signal(signum, frame):
    """SIGINT, SIGTERM and SIGHUP become exceptions, so staged outputs are cleaned up on the way out. The signal
    is also recorded: should the exception land in code that swallows it (a finaliser, a worker
    thread's callback), the run still never commits its outputs nor exits 0 (prunefx/output.py)."""
    record_interrupt(signum)
    raise interrupt_for(signum)


def install() -> dict | None:
    """`raise_on_signal` for each signal the caller does not ignore; the handlers it replaced (None off the main
    thread, where none can be set: tests call main() from worker threads too)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    clear_interrupt()
    # a signal the caller ignores stays ignored (`nohup prunefx ...` must outlive its terminal)
    signums = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    return {signum: signal.signal(signum, raise_on_signal) for signum in signums}


def exit_on(handled: dict, status: int) -> None:
    """Each signal of `handled` ends the process with `status` from now on, its streams flushed."""
    def exit_now(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)

    for signum in handled:
        signal.signal(signum, exit_now)
    # the interpreter's teardown (seconds after a large model) puts Python's handlers back to the default action,
    # which would kill the process with no line and the signal's status: ignored from the teardown's start instead
    atexit.register(_ignore, tuple(handled))


def _ignore(signums: tuple[int, ...]) -> None:
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def restore(previous: dict | None) -> None:
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)
