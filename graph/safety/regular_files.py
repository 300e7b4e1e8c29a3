"""Opening the files a user names: only regular files, read once, with a stated size limit.

A path that names a folder, a FIFO or a device (`/dev/zero`) is said to be one, never "not found":
reading a FIFO blocks forever and `/dev/zero` never ends, so the check is made on the opened file
descriptor (opened non-blocking, so that opening a FIFO cannot hang) before a byte is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from prunefx.graph.errors import PrunefxError, printable

# The largest file prunefx reads whole into memory (archives, ONNX files, images, recipes).
MAX_FILE_BYTES = 8 << 30


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _describe(path: Path, what: str) -> str:
    return f"{what} {printable(str(path))}"


def require_regular_file(path: str | Path, what: str) -> Path:
    """`path` if it names a regular file (symlinks followed); else a one-line PrunefxError that says
    whether it is missing or what it is instead."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PrunefxError(f"{_describe(path, what)} not found") from None
    except OSError as error:
        raise PrunefxError(f"cannot read {_describe(path, what)}: {printable(error.strerror or str(error))}") from None
    if not stat.S_ISREG(mode):
        raise PrunefxError(f"{_describe(path, what)} is not a regular file ({_kind(mode)})")
    return path


def read_regular_file(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The whole content of the regular file `path`, at most `max_bytes`, read once. Checked on the
    open descriptor, so a path swapped for a FIFO between a check and the read cannot hang it."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PrunefxError(f"{_describe(path, what)} not found") from None
    except OSError as error:
        if os.path.isdir(path):
            raise PrunefxError(f"{_describe(path, what)} is not a regular file (a folder)") from None
        raise PrunefxError(f"cannot read {_describe(path, what)}: {printable(error.strerror or str(error))}") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise PrunefxError(f"{_describe(path, what)} is not a regular file ({_kind(status.st_mode)})")
    with os.fdopen(descriptor, "rb") as file:
        if status.st_size > max_bytes:
            raise PrunefxError(f"{_describe(path, what)} holds {status.st_size} bytes, more than the "
                               f"{max_bytes}-byte limit")
        os.set_blocking(descriptor, True)
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while read
        raise PrunefxError(f"{_describe(path, what)} holds more than the {max_bytes}-byte limit")
    return data
