"""Keep torch.export's own reports of a failed capture off the user's terminal.

On a model it cannot capture, torch prints the partial graph straight to sys.stderr
(`print(e.partial_fx_graph, file=sys.stderr)`: 20 lines for a small model, 1,000 for a YOLO) and logs
warnings about symbols it cannot place; the one-line CaptureError says what matters. `torch_quiet()`
drops, for the block's duration, writes to stderr made from torch's own modules and records of torch's
loggers; everything else (progress bars, prunefx's messages) passes through. PRUNEFX_DEBUG=1 keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

from prunefx.graph.debug_mode import debug_requested


class WithoutTorchPrints:
    """Stands in for sys.stderr: writes made directly from torch's modules are dropped."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            caller = sys._getframe(1).f_globals.get("__name__", "")
        except ValueError:  # called from C with no Python frame above: not torch's print
            caller = ""
        if caller == "torch" or caller.startswith("torch."):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _torch_loggers() -> list[logging.Logger]:
    names = [name for name in logging.root.manager.loggerDict if name == "torch" or name.startswith("torch.")]
    return [logging.getLogger(name) for name in names]


@contextlib.contextmanager
def torch_quiet() -> Iterator[None]:
    if debug_requested():
        yield
        return
    loggers = [logger for logger in _torch_loggers() if not logger.disabled]
    stream = sys.stderr
    with warnings.catch_warnings():
        # prunefx puts back the attributes an export assigned (graph/model_state.py): torch's advice is moot
        warnings.filterwarnings("ignore", message="The tensor attributes? .* (was|were) assigned during export")
        try:
            for logger in loggers:
                logger.disabled = True
            if stream is not None:  # None: started with `2>&-`, nothing to filter
                sys.stderr = WithoutTorchPrints(stream)
            yield
        finally:
            if isinstance(sys.stderr, WithoutTorchPrints):
                sys.stderr = stream
            for logger in loggers:
                logger.disabled = False
