"""Where commands write: checked before any heavy work, staged beside the destination, moved into place
only when everything was written.

The guarantee every command gives (README, "Files prunefx reads and writes"):
- an output path that cannot be written (inside a regular file, under a missing or unwritable parent, a
  read-only file system, a folder where a file is wanted) is one error line before the model is loaded;
- outputs are written into a hidden staging folder in the destination's own folder (same file system,
  so the final moves are renames) and appear only once all of them are complete;
- a run that fails, is interrupted or runs out of disk leaves no partial output and leaves an existing
  output as it was. An output folder that already exists keeps files the run does not write; the files
  it writes are replaced one by one by complete new ones, only after all were written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunefx.graph.errors import PrunefxError, printable

# Errors of the destination rather than of prunefx: reported in one line, never as internal errors.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


class OutputError(PrunefxError):
    """An output path that cannot be written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (the CLI raises it from its signal handler)."""


_interrupt: dict[str, int | None] = {"signal": None}


def record_interrupt(signum: int) -> None:
    _interrupt["signal"] = signum


def clear_interrupt() -> None:
    _interrupt["signal"] = None


def raise_if_interrupted() -> None:
    """Re-raise an interrupt that arrived but was swallowed on its way up (see prunefx/cli.py)."""
    signum = _interrupt["signal"]
    if signum is not None:
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def check_output_folder(path: str | os.PathLike) -> Path:
    """`path` can become (or already is) a folder we can write into; checked before heavy work."""
    path = Path(path)
    _check_length(path)
    _check_not_dangling(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder")
    _check_parent(path)
    if path.is_dir():
        _probe(path, path)
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """`path` can be written as a file (an existing file is replaced only on success)."""
    path = Path(path)
    _check_length(path)
    _check_not_dangling(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the path of the file to write")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} exists and is not a regular file")
    _check_parent(path)
    return path


# Linux's limits (NAME_MAX, PATH_MAX): longer names fail deep inside a write with "File name too long".
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095
# Arguments that name files or folders a command reads: an output must never be, nor hold, one of them.
_INPUT_ARGUMENTS = ("model", "file", "weights", "vs", "recipe", "calibrate", "data", "palette")


def check_outputs_spare_inputs(args) -> None:
    """`-o` must not name a file the same command reads (`prunefx export X.pt2 -o X.pt2` would replace
    its input with the ONNX file), nor a folder holding one (`prunefx prune DIR/model.pt2 -o DIR` would
    replace model.pt2 with the pruned model), nor a link to nowhere (the final rename would fail after
    all the work). Checked once, for every command, before any work."""
    output = getattr(args, "output", None)
    if not isinstance(output, str) or not output:
        return
    _check_length(Path(output))
    _check_not_dangling(Path(output))
    for name in _INPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if not isinstance(value, str) or not value:
            continue
        if _same_file(Path(output), Path(value)):
            raise OutputError(f"-o {printable(output)} is also the {name} being read; writing it would replace "
                              "the input: choose another output path")
        if _holds(Path(output), Path(value)):
            raise OutputError(f"-o {printable(output)} holds the {name} being read ({printable(value)}); writing "
                              "there could replace the input: choose another output folder")


def _holds(folder: Path, path: Path) -> bool:
    """Whether the existing `path` lies inside the existing folder `folder`, links followed."""
    if not folder.is_dir() or not path.exists():
        return False
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real != top and os.path.commonpath([real, top]) == top


def _check_not_dangling(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{printable(str(path))} is a symbolic link to a path that does not exist; give the "
                          "output path itself")


def _same_file(first: Path, second: Path) -> bool:
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        return False
    return os.path.realpath(first) == os.path.realpath(second)


def _check_length(path: Path) -> None:
    text = os.fsencode(path.absolute())
    if len(text) > MAX_PATH_BYTES:
        raise OutputError(f"the output path is {len(text)} bytes long, over the system's {MAX_PATH_BYTES}-byte limit")
    for part in path.parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise OutputError(f"the output path has a name of {len(os.fsencode(part))} bytes ('{printable(part)[:40]}...'), "
                              f"over the system's {MAX_NAME_BYTES}-byte limit")


def _check_parent(path: Path) -> None:
    parent = path.absolute().parent
    existing = parent
    while not existing.exists():  # the nearest existing ancestor must be a writable folder
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder")
    _probe(existing, path)


def _probe(folder: Path, path: Path) -> None:
    """Create and remove a file in `folder`: the one check that sees permissions, read-only file systems
    and pseudo file systems such as /proc alike."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".prunefx-probe-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error} ({folder})") from error


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging folder; on success its files move into `destination` (created if missing)."""
    destination = check_output_folder(destination)
    with _staging(destination, move_into=destination) as staging:
        yield staging


@contextlib.contextmanager
def staged_file(destination: str | os.PathLike) -> Iterator[Path]:
    """A path inside a staging folder with `destination`'s name; on success it, and any side files written
    beside it (an ONNX file's external data), move into `destination`'s folder."""
    destination = check_output_file(destination)
    with _staging(destination, move_into=destination.absolute().parent) as staging:
        yield staging / destination.name


@contextlib.contextmanager
def _staging(destination: Path, *, move_into: Path) -> Iterator[Path]:
    """A hidden folder beside `destination` (same file system: the final moves are renames), whose files
    move into `move_into` once the block ends without error or interrupt, and which is removed either way."""
    with _writing(destination):
        folder = destination.absolute().parent
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{destination.name}.partial-"))
        try:
            yield staging
            raise_if_interrupted()
            _move_into(staging, move_into)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, destination: Path) -> None:
    if not destination.exists():
        os.rename(staging, destination)  # one atomic step: the folder appears complete
        return
    for item in sorted(staging.iterdir()):
        target = destination / item.name
        if target.is_dir() and not item.is_dir():
            raise OutputError(f"cannot write {target}: a folder of that name is in the way")
        os.replace(item, target)


@contextlib.contextmanager
def _writing(destination: Path) -> Iterator[None]:
    """OSErrors of the destination (full disk, read-only, permissions) become one OutputError line."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write {destination}: {error.strerror or error}; nothing was written") from error
