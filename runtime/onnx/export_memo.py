"""The ONNX files this process exported, by what was exported: the same Program exported again with the same
settings is a copy of the first file, not a second export (seconds on a small model, minutes on a large one). A
budget search's confirmation exports its chosen candidate as prunefx delivers it (dynamo), and the command then
writes that same Program as model.onnx.

A file is copied only if it is still there with the bytes it was written with (a search's cache deletes the files
it no longer uses; anything may have changed one), and only one whose weights lie inside it (no side file)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import OrderedDict
from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.fingerprint import file_sha256, fingerprint
from prunefx.graph.whole_files import followed, replaced_whole
from prunefx.runtime.onnx.external import own_side_files, remove_stale_side_files

KEPT = 8  # the files a search's candidates leave at once (its caches keep 4 each)


@dataclasses.dataclass(frozen=True)
class _Written:
    file: Path
    sha256: str
    export: object  # the OnnxExport that wrote it


_written: OrderedDict[tuple, _Written] = OrderedDict()


def export_key(program: Program, opset: int, exporter: str) -> tuple:
    """What an export's file depends on: the Program's contents and name (the graph's), its inputs' dtypes, the
    opset and the exporter asked for."""
    return fingerprint(program), program.name, tuple(str(x.dtype) for x in program.example_inputs), opset, exporter


def copy_of_written(key: tuple, path: Path):
    """The OnnxExport of a copy at `path` of the file written for `key`, or None where there is none to copy."""
    written = _written.get(key)
    if written is None:
        return None
    if not written.file.is_file() or own_side_files(written.file) or file_sha256(written.file) != written.sha256:
        del _written[key]
        return None
    _written.move_to_end(key)
    with replaced_whole(path) as partial:
        shutil.copyfile(written.file, partial)
    remove_stale_side_files(followed(path), keep=None)  # the replaced file's weights, if they lay beside it
    return dataclasses.replace(written.export, path=path)


def remember_written(key: tuple, export) -> None:
    """`export` (an OnnxExport just written) as the file for `key`, unless its weights lie beside it."""
    file = Path(os.path.abspath(followed(export.path)))
    if own_side_files(file):
        return
    _written[key] = _Written(file, file_sha256(file), export)
    _written.move_to_end(key)
    while len(_written) > KEPT:
        _written.popitem(last=False)


def forget_written() -> None:
    """Every file forgotten: the next export of any Program exports (a test that makes the exporter fail)."""
    _written.clear()
