"""Standard error whose reader went away (`prunefx prune ... 2>&1 >log | head -3`, a log collector that died):
its messages are dropped and the run goes on to write its outputs, as it does with no standard error at all
(`2>&-`). Left to raise, such a write fails wherever it happens: inside a progress bar's redraw it leaves tqdm's
lock held (tqdm releases it only on success), and the next bar to draw waits on it for ever.
"""

from __future__ import annotations

import contextlib
import sys

from prunefx.standard_output import silence, stood_in


class DroppedOnFailure:
    """Stands in for sys.stderr: the first write or flush that fails ends its writes, silently."""

    def __init__(self, stream):
        self._stream = stream
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):  # a closed pipe, a full device, a stream closed under it
                self._give_up()
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._give_up()

    def _give_up(self) -> None:
        self.failed = True
        if self._stream is sys.__stderr__:  # the process's own: its C libraries and last flush write there too
            silence(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def dropped_on_failure() -> contextlib.AbstractContextManager[DroppedOnFailure | None]:
    """sys.stderr as a DroppedOnFailure inside the block (None without a standard error), as it was after."""
    return stood_in("stderr", DroppedOnFailure)
