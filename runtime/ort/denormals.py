"""The calling thread's subnormal mode around ONNX Runtime: each run in its session's mode, and left as found.

ONNX Runtime gives a session's worker threads its `set_denormal_as_zero` setting, but the thread that runs
`session.run` (with one intra-op thread, the only one that computes) gets it once per process: the first
session created sets that thread's mode and no later session changes it. So a timing session made after a
parity check did not flush subnormals on the caller's thread, while the same session in a fresh process did;
and after a first timing session, the caller's own later CPU math (numpy, torch, Python floats) flushed them.
Here the caller's thread takes the session's mode for each run and gets back what it had, after each run and
after a session is created.
"""

from __future__ import annotations

import torch

# Python floats are doubles computed with the CPU's vector unit, whose flush bits (x86's FTZ and DAZ, Arm's FZ)
# zero a subnormal product: the cheapest probe of the thread's mode, far cheaper than a numpy call.
_SUBNORMAL = 1e-310
_ONE = 1.0


def thread_flushes_subnormals() -> bool:
    """Whether the calling thread's floating-point unit flushes subnormal numbers to zero."""
    return _SUBNORMAL * _ONE == 0.0


class subnormal_mode:  # lower case: read as a function, `with subnormal_mode(True):`
    """The block runs with the calling thread flushing subnormals if `flush` (None: in whatever mode it is);
    afterwards the thread is put back in the mode it was in, whatever the block did to it. A class, not a
    contextlib generator: it wraps every run of a timed session, where a generator's overhead would show."""

    def __init__(self, flush: bool | None):
        self.flush = flush

    def __enter__(self) -> None:
        self.found = thread_flushes_subnormals()
        if self.flush is not None and self.flush != self.found:
            torch.set_flush_denormal(self.flush)  # both flags on x86 (FTZ, DAZ), as ONNX Runtime sets them

    def __exit__(self, *_) -> None:
        if thread_flushes_subnormals() != self.found:
            torch.set_flush_denormal(self.found)
