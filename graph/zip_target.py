"""A file for torch's zip writer (torch.export.save) that never raises into it.

torch's writer aborts the whole process (std::terminate from a destructor) when a write fails, e.g. on a
full disk. Writing to a BytesIO first avoids that at the price of a second copy of every weight in memory;
this file streams to disk instead: the first failure is held, later writes are dropped so that the writer
finishes, and `raise_held()` raises that failure afterwards as the OSError it was.
"""

from __future__ import annotations

import io
from typing import BinaryIO


class FailureHoldingFile(io.RawIOBase):
    """Write-through to `file`, holding the first OSError instead of raising it (see the module docstring)."""

    def __init__(self, file: BinaryIO):
        super().__init__()
        self._file = file
        self._position = 0  # where the writer believes it is, also after a failure
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:  # torch.export.save wants a seekable buffer; its writer only skips forward
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self._attempt(lambda: self._file.write(data))
        self._position += size
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.error is None:
            try:
                self._position = self._file.seek(offset, whence)
                return self._position
            except OSError as error:
                self.error = error
        self._position = offset if whence == io.SEEK_SET else self._position + offset
        return self._position

    def flush(self) -> None:
        if not self._file.closed:  # io's close() flushes, also when the file below was closed first
            self._attempt(self._file.flush)

    def raise_held(self) -> None:
        if self.error is not None:
            raise self.error

    def _attempt(self, action) -> None:
        if self.error is None:
            try:
                action()
            except OSError as error:
                self.error = error
