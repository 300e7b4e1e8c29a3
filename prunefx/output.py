"""Where commands write: staged beside the destination, moved into place only when everything was written
(the path itself is checked before any heavy work: prunefx/output_paths.py).

Outputs go to a hidden staging folder in the destination's folder (same file system: the final moves are renames) and an `-o` folder is all of
one run or none. prunefx replaces only a folder it marked (`.prunefx-output`) or an empty one; a failed,
interrupted or killed run leaves the previous output as it was (the next run repairs a SIGKILL's leftovers).
The guarantee in full: docs/reference/cli.md, 'Output folders (-o)'.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prunefx.graph.errors import printable
from prunefx.graph.held_signals import signals_held
from prunefx.graph.whole_files import followed, sync_file, sync_folder
from prunefx.interrupts import raise_if_interrupted, record_published
from prunefx.leftovers import sibling
from prunefx.output_paths import MARK, OutputError, check_output_file, check_output_folder

_MARK_TEXT = "written by prunefx; the next prunefx run writing here replaces this folder whole\n"

# Errors of the destination rather than of prunefx: reported in one line, never as internal errors.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging folder that becomes `destination` on success, replacing a previous output whole."""
    destination = check_output_folder(destination)  # absolute, its folder resolved (output_paths.output_path)
    # a link: the folder it names is replaced, not the link
    destination = Path(os.path.realpath(destination)) if destination.is_symlink() else destination
    with _staging(destination, publish=lambda staging: _replace(staging, destination), mark=True) as staging:
        yield staging


@contextlib.contextmanager
def staged_file(destination: str | os.PathLike) -> Iterator[Path]:
    """A path inside a staging folder with `destination`'s name; on success any side files written beside it
    (an ONNX file's external data) move into `destination`'s folder, then the file itself, last: a side file
    named for this run (see `prunefx export`) is in place before the file that reads it replaces the old one."""
    destination = followed(check_output_file(destination))  # a link: the file it names is replaced, not the link
    into = destination.absolute().parent
    with _staging(destination, publish=lambda staging: _move_into(staging, into, last=destination.name),
                  mark=False) as staging:
        yield staging / destination.name


@contextlib.contextmanager
def _staging(destination: Path, *, publish, mark: bool) -> Iterator[Path]:
    """A hidden folder beside `destination` (same file system: publishing is renames), published once the
    block ends without error or interrupt, and removed either way."""
    with _writing(destination):
        folder = destination.absolute().parent
        created = _first_missing(folder)
        folder.mkdir(parents=True, exist_ok=True)
        staging, done = sibling(destination, "partial"), False
        try:
            staging.mkdir()  # not mkdtemp: the folder becomes the output, with the user's usual permissions
            if destination.is_dir():
                shutil.copymode(destination, staging)
            if mark:
                (staging / MARK).write_text(_MARK_TEXT)
            yield staging
            raise_if_interrupted()
            _sync_tree(staging)  # files written by torch or ONNX were not synced: none is published empty
            with signals_held():  # an interrupt between the renames would leave neither output in place
                publish(staging)
                sync_folder(folder)  # the renames reach the disk before the command says it wrote
                done = True
                record_published(destination)
        finally:
            with signals_held():
                shutil.rmtree(staging, ignore_errors=True)
                if not done and created is not None:
                    _remove_empty(folder, up_to=created)


def _sync_tree(folder: Path) -> None:
    """Every file under `folder` and every folder's entries made durable, before the renames that publish them:
    a machine that loses power just after keeps the previous output or this one, never files of zero bytes."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not os.path.islink(Path(root, name)):  # a link's file lies elsewhere, not published here
                sync_file(Path(root, name))
        sync_folder(Path(root))


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of `folder`'s ancestry (itself included) that does not exist yet: what the run
    creates, and removes again when it publishes nothing."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_empty(folder: Path, *, up_to: Path) -> None:
    """`folder` and its parents up to `up_to`, each only if empty (another process may have written there)."""
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError:
            return
        if candidate == up_to:
            return


def _replace(staging: Path, destination: Path) -> None:
    """`staging` becomes `destination` by one rename; a previous output is moved aside first and removed
    after, so that at no moment does `destination` hold files of two runs."""
    aside = None
    if destination.exists():
        aside = sibling(destination, "old")
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


@contextlib.contextmanager
def _writing(destination: Path) -> Iterator[None]:
    """OSErrors of the destination (full disk, read-only, permissions) become one OutputError line."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write {destination}: {error.strerror or error}; nothing was written") from error
