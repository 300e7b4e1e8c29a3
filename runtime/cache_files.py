"""Files of prunefx's caches (latency tables, TensorRT engines, TensorRT timing caches), written whole or not
at all: a cache is trusted by its file's name, so a write cut short (a full disk, an interrupt, a killed
process) must not leave a part of one under that name for the next run to read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_whole(path: Path, data: bytes | str) -> None:
    """`data` written to `path`: first to a hidden temporary file in the same folder, which then replaces
    `path` in one rename; on any failure the temporary file is removed and `path` is as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
