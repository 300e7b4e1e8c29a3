"""ONNX Runtime runs that end when the process is asked to stop (SIGINT, SIGTERM).

Python runs its signal handlers between bytecodes, so while the main thread waits inside
`InferenceSession.run` (an ONNX `Loop` of 2**62 iterations takes forever) the CLI's handlers wait too,
and the process ignores SIGTERM. Python's C-level handler does write the signal's number to the
`signal.set_wakeup_fd` descriptor at once, though: a watcher thread reads it and sets `terminate` on
the RunOptions of every run in progress, which ONNX Runtime checks between operators (and in loops). The
run then fails, and the pending Python handler turns that into KeyboardInterrupt or the CLI's Terminated.
The watcher needs the main thread to install it; elsewhere runs simply cannot be interrupted early. The
descriptor is the process's, so it is installed only while a run is in progress and put back (-1) after: a
caller's own signal.set_wakeup_fd (an event loop's) finds it free, and a caller already listening keeps theirs.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

import onnxruntime as ort

# Run-time logs: ONNX Runtime prints errors itself, coloured, before raising the same error; the
# exception is what prunefx reports (in one line), so only fatal messages may print.
RUN_LOG_SEVERITY_FATAL = 4

_active: set[ort.RunOptions] = set()
_lock = threading.Lock()
_watcher: dict[str, object] = {}
_installed = [0]  # main-thread runs in progress with the descriptor installed


def _watch(receiver: socket.socket) -> None:
    while True:
        try:
            received = receiver.recv(64)
        except OSError:
            return
        if not received:
            return
        with _lock:
            for options in _active:
                options.terminate = True


def _sender() -> socket.socket:
    """The watcher's end of the descriptor, the watcher thread started on first use."""
    if "thread" not in _watcher:
        receiver, sender = socket.socketpair()
        sender.setblocking(False)
        thread = threading.Thread(target=_watch, args=(receiver,), name="prunefx-ort-interrupts", daemon=True)
        thread.start()
        _watcher.update(thread=thread, sockets=(receiver, sender))
    return _watcher["sockets"][1]  # type: ignore[index]


def _install() -> bool:
    """Install the wakeup descriptor for a run on the main thread (nested runs share it); False where that is
    not possible (not the main thread, or another wakeup descriptor already in use, e.g. an asyncio loop)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if _installed[0] == 0:
        try:
            previous = signal.set_wakeup_fd(_sender().fileno(), warn_on_full_buffer=False)
        except ValueError:
            return False
        if previous not in (-1, _sender().fileno()):  # someone else listens already: leave theirs in place
            signal.set_wakeup_fd(previous)
            return False
    _installed[0] += 1
    return True


def _uninstall() -> None:
    _installed[0] -= 1
    if _installed[0] == 0:
        signal.set_wakeup_fd(-1)


@contextlib.contextmanager
def interruptible_run() -> Iterator[ort.RunOptions]:
    """RunOptions for one `session.run`: quiet at run time, ended by SIGINT/SIGTERM. After a run a
    signal ended, the signal's Python handler gets its chance to raise before anything else does."""
    options = ort.RunOptions()
    options.log_severity_level = RUN_LOG_SEVERITY_FATAL
    watched = False
    try:  # installed inside: an interrupt arriving here still puts the descriptor back
        watched = _install()
        if watched:
            with _lock:
                _active.add(options)
        yield options
    except Exception:
        if options.terminate:
            time.sleep(0.01)  # a call that checks for signals: the pending handler raises here
        raise
    finally:
        if watched:
            with _lock:
                _active.discard(options)
            _uninstall()
