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
from collections.abc import Iterator


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
def watched_stdout() -> Iterator[WatchedStream | None]:
    if sys.stdout is None:  # started with stdout closed (`>&-`): print writes nothing
        yield None
        return
    watch = WatchedStream(sys.stdout)
    sys.stdout = watch
    try:
        yield watch
    finally:
        if sys.stdout is watch:
            sys.stdout = watch._stream


def reader_gone() -> bool:
    """Whether stdout is a pipe whose reader closed it (it polls as an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream): not a pipe
        return False


def silence() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
