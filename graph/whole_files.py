"""Files written whole or not at all: ONNX exports and lowerings, reports, a cache's engines and tables. A
reader trusts such a file by its name, so a write cut short (a full disk, an interrupt, a killed process) must
not leave a part of one under that name, and a previous file stays as it was until the new one is complete."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A hidden temporary path in `path`'s folder to write and check in the block; once the block ends
    without error it replaces `path` (the file it links to, for a link) in one rename, and on any failure it
    is removed."""
    path = followed(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    temporary.touch(exist_ok=False)  # not mkstemp: its 0600 would become the file's mode, not the user's umask
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def followed(path: Path) -> Path:
    """`path`, or for a link the file it names: a write replaces that file and leaves the link, as open() does
    (a rename onto the link would turn it into a file and leave the linked one stale)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_whole(path: Path, data: bytes | str) -> None:
    """`data` written to `path` through `replaced_whole`."""
    with replaced_whole(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
