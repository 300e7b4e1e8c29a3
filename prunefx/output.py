"""Where commands write: checked before any heavy work, staged beside the destination, moved into place
only when everything was written.

An unwritable output path is one error line before the model loads; outputs go to a hidden staging folder
in the destination's folder (same file system: the final moves are renames) and an `-o` folder is all of
one run or none. prunefx replaces only a folder it marked (`.prunefx-output`) or an empty one; a failed,
interrupted or killed run leaves the previous output as it was (the next run repairs a SIGKILL's leftovers).
The guarantee in full: docs/reference/cli.md, 'Output folders (-o)'.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
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


class HungUp(KeyboardInterrupt):
    """SIGHUP: the terminal went away (the CLI raises it from its signal handler)."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    return {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}.get(signum, KeyboardInterrupt)()


_interrupt: dict[str, int | None] = {"signal": None}


def record_interrupt(signum: int) -> None:
    _interrupt["signal"] = signum


def clear_interrupt() -> None:
    _interrupt["signal"] = None


def raise_if_interrupted() -> None:
    """Re-raise an interrupt that arrived but was swallowed on its way up (see prunefx/cli/__init__.py)."""
    signum = _interrupt["signal"]
    if signum is not None:
        raise interrupt_for(signum)


# The mark of a folder prunefx wrote: only such a folder (or an empty one) is replaced by a later run.
MARK = ".prunefx-output"
_MARK_TEXT = "written by prunefx; the next prunefx run writing here replaces this folder whole\n"


def check_output_folder(path: str | os.PathLike) -> Path:
    """`path` can become (or already is) a folder we can write into, and is empty or one prunefx wrote;
    checked before heavy work. What killed runs left beside it is cleared first."""
    path = Path(path)
    _check_length(path)
    _check_not_dangling(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder")
    _check_parent(path)
    clear_stale(path)
    if path.is_dir():
        _probe(path, path)
        _check_replaceable(path)
    return path


def _check_replaceable(path: Path) -> None:
    here, top = os.path.realpath(os.getcwd()), os.path.realpath(path)
    if os.path.commonpath([here, top]) == top:
        raise OutputError(f"-o {printable(str(path))} holds the current folder, and a run replaces its output "
                          "folder whole: give a folder of its own")
    entries = sorted(entry.name for entry in path.iterdir())
    if entries and MARK not in entries:
        raise OutputError(f"{printable(str(path))} holds files prunefx did not write ({printable(entries[0])}"
                          f"{', ...' if len(entries) > 1 else ''}) and a run replaces its output folder whole: "
                          "give a new or empty folder")


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
    clear_stale(path)
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
def staged_folder(destination: str | os.PathLike, *, join: bool = False) -> Iterator[Path]:
    """A fresh staging folder that becomes `destination` on success, replacing a previous output whole.
    `join=True`: its files move into `destination` instead, beside those there: for a second write of the
    same run (a summary written after the run measured the files it published)."""
    destination = check_output_folder(destination)
    # absolute and normalised (`-o .` has no name); a link: the folder it names is replaced, not the link
    destination = Path(os.path.realpath(destination) if destination.is_symlink() else os.path.abspath(destination))
    publish = _move_into if join else _replace
    with _staging(destination, publish=lambda staging: publish(staging, destination), mark=True) as staging:
        yield staging


@contextlib.contextmanager
def staged_file(destination: str | os.PathLike) -> Iterator[Path]:
    """A path inside a staging folder with `destination`'s name; on success any side files written beside it
    (an ONNX file's external data) move into `destination`'s folder, then the file itself, last: a side file
    named for this run (see `prunefx export`) is in place before the file that reads it replaces the old one."""
    destination = check_output_file(destination)
    into = destination.absolute().parent
    with _staging(destination, publish=lambda staging: _move_into(staging, into, last=destination.name),
                  mark=False) as staging:
        yield staging / destination.name


def _sibling(destination: Path, kind: str) -> Path:
    """A hidden name beside `destination` that says whose it is: `.NAME.KIND-PID-RANDOM`."""
    destination = Path(os.path.abspath(destination))
    return destination.parent / f".{destination.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def _staging(destination: Path, *, publish, mark: bool) -> Iterator[Path]:
    """A hidden folder beside `destination` (same file system: publishing is renames), published once the
    block ends without error or interrupt, and removed either way."""
    with _writing(destination):
        folder = destination.absolute().parent
        folder.mkdir(parents=True, exist_ok=True)
        staging = _sibling(destination, "partial")
        staging.mkdir()  # not mkdtemp: the folder becomes the output, with the user's usual permissions
        if destination.is_dir():
            shutil.copymode(destination, staging)
        try:
            if mark:
                (staging / MARK).write_text(_MARK_TEXT)
            yield staging
            raise_if_interrupted()
            publish(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, destination: Path) -> None:
    """`staging` becomes `destination` by one rename; a previous output is moved aside first and removed
    after, so that at no moment does `destination` hold files of two runs."""
    aside = None
    if destination.exists():
        aside = _sibling(destination, "old")
        _rename(destination, aside, destination)
    try:
        _rename(staging, destination, destination)
    except BaseException:
        if aside is not None:
            os.rename(aside, destination)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _rename(source: Path, target: Path, destination: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as error:  # a mount point (EBUSY), a folder in use elsewhere: the environment's, not ours
        if error.errno in _WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot replace {printable(str(destination))}: {error.strerror or error}; nothing "
                          "was written") from error


def _move_into(staging: Path, destination: Path, last: str | None = None) -> None:
    if not destination.exists():
        os.rename(staging, destination)  # one atomic step: the folder appears complete
        return
    for item in sorted(staging.iterdir(), key=lambda item: (item.name == last, item.name)):
        target = destination / item.name
        if target.is_dir() and not item.is_dir():
            raise OutputError(f"cannot write {target}: a folder of that name is in the way")
        os.replace(item, target)


def clear_stale(destination: Path) -> None:
    """Remove the staging folders of runs that were killed (their process is gone) beside `destination`,
    and put back a previous output a killed run had moved aside but not yet replaced."""
    destination = Path(os.path.abspath(destination))
    folder = destination.parent
    if not folder.is_dir():
        return
    for kind in ("partial", "old"):
        for stale in sorted(folder.glob(f".{glob.escape(destination.name)}.{kind}-*")):
            if _owner_alive(stale.name):
                continue
            if kind == "old" and not destination.exists() and not destination.is_symlink():
                os.rename(stale, destination)  # killed between the two renames: the previous output returns
            else:
                shutil.rmtree(stale, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    """Whether the process that made `.NAME.KIND-PID-RANDOM` still runs (a name without a pid: no)."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _writing(destination: Path) -> Iterator[None]:
    """OSErrors of the destination (full disk, read-only, permissions) become one OutputError line."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write {destination}: {error.strerror or error}; nothing was written") from error
