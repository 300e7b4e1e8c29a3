"""Why torch.export.load could not read a file, in one line: it catches the cause (another schema version, a
weight cut short), logs it with its traceback as a warning, and raises a RuntimeError that says only to read
the warnings above, which a command that hides warnings never shows."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

_LOGGER_SWAP = threading.Lock()


class _CauseHolder(logging.Handler):
    """Keeps the exceptions torch.export logs while it loads, instead of printing their tracebacks."""

    def __init__(self, causes: list[BaseException]):
        super().__init__(logging.WARNING)
        self.causes = causes

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.causes.append(record.exc_info[1])


@contextlib.contextmanager
def export_load_causes() -> Iterator[list[BaseException]]:
    """Within the block, the exceptions torch.export logs are kept in the list yielded, the logger's own output
    held back."""
    logger = logging.getLogger("torch.export")
    causes: list[BaseException] = []
    with _LOGGER_SWAP:  # loads in two threads would each put back what the other installed
        handlers, propagated = logger.handlers[:], logger.propagate  # torch gives it a stderr handler of its own
        logger.handlers, logger.propagate = [_CauseHolder(causes)], False
        try:
            yield causes
        finally:
            logger.handlers, logger.propagate = handlers, propagated
