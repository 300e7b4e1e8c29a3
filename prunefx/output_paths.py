"""Checks of an output path, before any heavy work: it can be written (length, parent, permissions, a link
that leads nowhere), a folder is empty or one prunefx wrote (`.prunefx-output`), and it is not, nor holds, a
file the same command reads. Each failure is one OutputError line. Where the outputs are then written:
prunefx/output.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.whole_files import file_path
from prunefx.leftovers import clear_stale
from prunefx.reference_forms import file_factory


class OutputError(PrunefxError):
    """An output path that cannot be written."""


# The mark of a folder prunefx wrote: only such a folder (or an empty one) is replaced by a later run.
MARK = ".prunefx-output"


def output_path(path: str | os.PathLike) -> Path:
    """Where `path` leads, as the checks and the writes both see it: `~` expanded, and its folder with links and
    `..` resolved as the system resolves them (`linkdir/../out` is `out` beside the folder the link names, not
    `out` here). Its last name stays as given: a link there is followed where a file is written. Absolute, so
    report.json's paths hold from any folder."""
    path = Path(os.path.expanduser(path))
    if path.name in ("", ".", ".."):
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def check_output_folder(path: str | os.PathLike) -> Path:
    """`path` can become (or already is) a folder we can write into, and is empty or one prunefx wrote;
    checked before heavy work. What killed runs left beside it is cleared first. Returns `output_path(path)`,
    the path to write."""
    path = _folder_path(path)
    _check_parent(path)
    clear_stale(path)
    if path.is_dir():
        _probe(path, path)
        _check_replaceable(path)
    return path


def check_writable_folder(path: str | os.PathLike) -> Path:
    """`path` is, or can be made, a folder we can write into; checked without creating anything (a folder a run
    makes for itself later, as a checkpoint_dir, must not be refused only after hours of work)."""
    path = _folder_path(path)
    if path.is_dir():
        _probe(path, path)
    else:
        _check_parent(path)
    return path


def _folder_path(path: str | os.PathLike) -> Path:
    """`output_path(path)`, refused where no folder can be there: a name too long, a link to nothing, a file."""
    path = output_path(path)
    _check_length(path)
    _check_not_dangling(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{printable(str(path))} exists and is not a folder")
    return path


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it, links followed (neither need exist yet)."""
    top = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), top]) == top


def _check_replaceable(path: Path) -> None:
    if within(os.getcwd(), path):
        raise OutputError(f"-o {printable(str(path))} holds the current folder, and a run replaces its output "
                          "folder whole: give a folder of its own")
    entries = sorted(entry.name for entry in path.iterdir())
    if entries and MARK not in entries:
        raise OutputError(f"{printable(str(path))} holds files prunefx did not write ({printable(entries[0])}"
                          f"{', ...' if len(entries) > 1 else ''}) and a run replaces its output folder whole: "
                          "give a new or empty folder")


def check_output_file(path: str | os.PathLike) -> Path:
    """`path` can be written as a file (an existing file is replaced only on success). Returns
    `output_path(path)`, the path to write."""
    path = output_path(file_path(path))
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
    written = output_path(output)
    _check_length(written)
    _check_not_dangling(written)
    for name in _INPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if not isinstance(value, str) or not value:
            continue
        read = Path(os.path.expanduser(_file_read(value)))
        if _same_file(written, read):
            raise OutputError(f"-o {printable(output)} is also the {name} being read; writing it would replace "
                              "the input: choose another output path")
        if _holds(written, read):
            raise OutputError(f"-o {printable(output)} holds the {name} being read ({printable(value)}); writing "
                              "there could replace the input: choose another output folder")


def _file_read(value: str) -> str:
    """The file an argument reads: `model.py:make` reads model.py."""
    file_reference = file_factory(value)
    return file_reference[0] if file_reference is not None else value


def _holds(folder: Path, path: Path) -> bool:
    """Whether the existing `path` lies inside the existing folder `folder`, links followed."""
    if not folder.is_dir() or not path.exists():
        return False
    return os.path.realpath(path) != os.path.realpath(folder) and within(path, folder)


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
