"""One training run per checkpoint directory at a time.

Two runs given the same `checkpoint_dir` would replace each other's checkpoints, and the one resumed later would
go on from the other's. The run's first process holds an advisory lock on the directory itself (flock of the
folder: no lock file to leave behind) for as long as it trains; a second run is refused in one line. Where the
file system cannot lock (some network mounts) or the platform has no flock, training goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunefx.graph.whole_files import missing_folders, remove_empty_folders
from prunefx.passes.training.config import TrainingError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


@contextlib.contextmanager
def checkpoint_dir_held(directory: Path | None) -> Iterator[None]:
    """`directory` locked for this run while the block runs (None: nothing to lock). The folders this created
    and left empty (the run stopped before its first checkpoint) are removed again, its parents made with it too."""
    if directory is None or fcntl is None:
        yield
        return
    created = missing_folders(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:  # a file, a link to nothing, a read-only or forbidden parent
        raise TrainingError(f"cannot use checkpoint_dir {directory}: {_reason(error, directory)}") from None
    try:
        _lock(descriptor, directory)
        _check_writable(directory)
        yield
    finally:
        os.close(descriptor)  # releases the lock
        remove_empty_folders(created)  # those a checkpoint was written into stay


def _reason(error: OSError, directory: Path) -> str:
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and not directory.is_dir():
        return "it is not a folder" if directory.exists() else "it is a link to nothing"
    return error.strerror or str(error)


def _check_writable(directory: Path) -> None:
    """A checkpoint written at the end of training must not find the folder read-only only then: a nameless
    file made and dropped proves it can be written now."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise TrainingError(f"cannot write in checkpoint_dir {directory}: {error.strerror or error}") from None


def _lock(descriptor: int, directory: Path) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _BUSY:
            raise TrainingError(f"checkpoint_dir {directory} is in use by another training run; give each run "
                                "its own checkpoint_dir, or wait for that one to end") from None
        # the file system cannot lock: train unlocked rather than refuse
