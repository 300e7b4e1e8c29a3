"""Standard output that went away or filled up, told apart from prunefx's own faults.

`prunefx inspect X | head -1` closes the pipe early: the run ends quietly with 141 (128 + SIGPIPE), as other
tools end. `> /dev/full` fails every write: one line, "cannot write standard output". `WatchedStream` stands
in for sys.stdout during a run and remembers the error a write raised, so the CLI knows which OSError came
from standard output rather than from a file; `silence()` points stdout at /dev/null, so that the
interpreter's own last flush does not fail again.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Callable, Iterator
from typing import Any


class WatchedStream:
    """sys.stdout, remembering the OSError a write or flush raised."""

    def __init__(self, stream):
        self._stream = stream
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def stood_in(name: str, make: Callable[[Any], Any]) -> Iterator[Any]:
    """sys.`name` ("stdout", "stderr") as `make(it)` inside the block, as it was after; None where the process
    has no such stream (started with it closed, `>&-`: print writes nothing)."""
    stream = getattr(sys, name)
    if stream is None:
        yield None
        return
    stand_in = make(stream)
    setattr(sys, name, stand_in)
    try:
        yield stand_in
    finally:
        if getattr(sys, name) is stand_in:
            setattr(sys, name, stream)


def watched_stdout() -> contextlib.AbstractContextManager[WatchedStream | None]:
    return stood_in("stdout", WatchedStream)


def reader_gone() -> bool:
    """Whether stdout is a pipe whose reader closed it (it polls as an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream): not a pipe
        return False


def silence(stream=None) -> None:
    """Point `stream`'s file descriptor (sys.stdout's by default) at /dev/null, where it has one."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (sys.stdout if stream is None else stream).fileno())
        os.close(devnull)
