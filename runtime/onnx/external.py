"""ONNX external data (weights kept in files beside the model), resolved and read the one safe way.

A tensor stored outside the model names a `location`. ONNX's own helpers join it to a base folder that
defaults to the current directory, so `prunefx check m.onnx` run from elsewhere would read whatever
`./w.bin` is there. Here a location is resolved against the model file's folder and must stay inside it:
no absolute path, no `..`, no link that leads out; the file must be a regular file (a FIFO would block the
read forever, a device never end), and the range `offset`/`length` must lie inside it. The bytes are read
into the tensor (`inline_external_data`), so nothing later opens a file at all; at most MAX_EXTERNAL_BYTES
in all are read. The side files prunefx writes are named here too (`side_file_name`, `side_files_named_for`,
`remove_stale_side_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import onnx

from prunefx.graph.errors import PrunefxError, printable

MAX_EXTERNAL_BYTES = 8 << 30


class ExternalDataError(PrunefxError):
    """An external-data reference that is refused."""


def _tensors_of(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of `graph` and its subgraphs: initializers and tensor-valued node attributes."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield from current.initializer
        yield from (sparse.values for sparse in current.sparse_initializer)
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _tensors_of(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _resolve(location: str, folder: Path, model: str) -> Path:
    """`location` inside `folder`, or ExternalDataError."""
    where = f"{model}: external data '{printable(location)[:200]}'"
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if not location or posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise ExternalDataError(f"{where} is an absolute path; external data must lie beside the model")
    if ".." in posix.parts or ".." in windows.parts:
        raise ExternalDataError(f"{where} climbs out of the model's folder with '..'")
    if "\0" in location or len(os.fsencode(location)) > 4095:
        raise ExternalDataError(f"{where} is not a file name (a NUL byte, or longer than a path may be)")
    path = folder / location
    real, top = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, top]) != top:
        raise ExternalDataError(f"{where} is a link that leads out of the model's folder")
    return path


def _integer(entries: dict[str, str], key: str, where: str) -> int | None:
    if key not in entries:
        return None
    try:
        value = int(entries[key])
    except ValueError:
        raise ExternalDataError(f"{where}: {key} '{printable(entries[key])[:40]}' is not an integer") from None
    if value < 0:
        raise ExternalDataError(f"{where}: {key} {value} is negative")
    return value


@contextlib.contextmanager
def _regular_file(path: Path, where: str) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """`path` open for reading, with its status; refused unless a regular file (a FIFO would block forever)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise ExternalDataError(f"{where} cannot be opened: {printable(error.strerror or str(error))}") from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ExternalDataError(f"{where} is not a regular file")
        os.set_blocking(descriptor, True)
        yield file, status


def _read_range(path: Path, offset: int, length: int | None, where: str) -> bytes:
    with _regular_file(path, where) as (file, status):
        size = status.st_size - offset if length is None else length
        if offset + size > status.st_size or size < 0:
            raise ExternalDataError(f"{where}: bytes {offset}..{offset + max(size, 0)} lie beyond its end "
                                    f"({status.st_size} bytes)")
        file.seek(offset)
        return file.read(size)


def _located(tensor: onnx.TensorProto, folder: Path, name: str) -> tuple[Path, int, int | None, str]:
    """(file, offset, length or None for the rest, how to name it) of one external tensor, checked."""
    entries = _entries(tensor)
    path = _resolve(entries.get("location", ""), folder, name)
    where = f"{name}: external data '{printable(entries['location'])[:200]}' of '{printable(tensor.name)[:60]}'"
    return path, _integer(entries, "offset", where) or 0, _integer(entries, "length", where), where


def inline_external_data(model: onnx.ModelProto, model_path: str | os.PathLike) -> onnx.ModelProto:
    """`model` with every external tensor's bytes read (see the module docstring) into the tensor itself."""
    model_path = Path(model_path)
    folder, name = model_path.absolute().parent, printable(str(model_path))
    total = 0
    for tensor in external_tensors(model):
        path, offset, length, where = _located(tensor, folder, name)
        if total + (length or 0) > MAX_EXTERNAL_BYTES:
            raise ExternalDataError(f"{where}: the external data add up to more than {MAX_EXTERNAL_BYTES} bytes")
        data = _read_range(path, offset, length, where)
        total += len(data)
        if total > MAX_EXTERNAL_BYTES:
            raise ExternalDataError(f"{where}: the external data add up to more than {MAX_EXTERNAL_BYTES} bytes")
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


def check_external_data(model: onnx.ModelProto, model_path: str | os.PathLike) -> None:
    """Refuse (ExternalDataError) any external-data reference of `model` that `inline_external_data` would,
    without reading the data: for commands that hand the file to a runtime which reads it itself."""
    model_path = Path(model_path)
    folder, name = model_path.absolute().parent, printable(str(model_path))
    for tensor in external_tensors(model):
        path, offset, length, where = _located(tensor, folder, name)
        try:
            status = os.stat(path)
        except OSError as error:
            raise ExternalDataError(f"{where} cannot be opened: {printable(error.strerror or str(error))}") from None
        if not stat.S_ISREG(status.st_mode):
            raise ExternalDataError(f"{where} is not a regular file")
        if offset + (length or 0) > status.st_size:
            raise ExternalDataError(f"{where}: bytes {offset}..{offset + (length or 0)} lie beyond its end "
                                    f"({status.st_size} bytes)")


def external_data_files(model_path: str | os.PathLike) -> set[str]:
    """The side files `model_path`'s tensors name (their `location`s), read from the model's structure only."""
    return external_data_names(onnx.load(str(model_path), load_external_data=False))


def external_data_names(model: onnx.ModelProto) -> set[str]:
    """The side files the tensors of `model` (its structure, loaded without external data) name."""
    return {_entries(tensor).get("location", "") for tensor in external_tensors(model)} - {""}


def external_data_digest(model_path: str | os.PathLike) -> bytes:
    """sha256 of the side files `model_path` names (each name, then its contents, in name order); b"" when it
    names none. With the model's own bytes it identifies the whole model, whose weights may lie beside it."""
    names = sorted(external_data_files(model_path))
    if not names:
        return b""
    digest, folder = hashlib.sha256(), Path(model_path).parent
    for name in names:
        where = f"{printable(str(model_path))}: external data '{printable(name)[:200]}'"
        with _regular_file(_resolve(name, folder, printable(str(model_path))), where) as (file, _):
            digest.update(len(name.encode()).to_bytes(8, "little") + name.encode())
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.digest()


def own_side_files(model_path: str | os.PathLike) -> set[str]:
    """The side files an existing ONNX file names in its own folder (none for a missing or unreadable one): what
    a file written over it leaves behind unless removed."""
    try:
        return {name for name in external_data_files(model_path) if "/" not in name and "\\" not in name}
    except Exception:  # not an ONNX file, or none yet: nothing of it to remove
        return set()


def rename_external_data(model_path: str | os.PathLike, new_name: str) -> bool:
    """Give the one side file of `model_path` (a model over protobuf's 2 GB) the name `new_name` in its folder,
    and rewrite the model's locations to match. False (nothing done) for a self-contained model."""
    path = Path(model_path)
    model = onnx.load(str(path), load_external_data=False)
    tensors = external_tensors(model)
    locations = {_entries(tensor).get("location") for tensor in tensors}
    if not tensors:
        return False
    if len(locations) != 1:
        raise ExternalDataError(f"{path.name}: its weights are in {len(locations)} side files, not one")
    os.replace(path.parent / locations.pop(), path.parent / new_name)
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = new_name
    onnx.save_model(model, str(path))  # the structure alone: the weights stay in the side file
    return True


def side_files_named_for(target: Path) -> list[Path]:
    """The side files export_onnx names for `target` (FILE.data, FILE.<8 hex>.data) beside it: found by name,
    not by reading the file being replaced, which holds every weight of a model under 2 GB."""
    named = re.compile(re.escape(target.name) + r"(\.[0-9a-f]{8})?\.data")
    if not target.parent.is_dir():
        return []
    return [entry for entry in target.parent.iterdir() if named.fullmatch(entry.name)]


def remove_stale_side_files(target: Path, keep: str | None) -> None:
    """Remove the side files named for `target` (side_files_named_for) but `keep`, the one `target` now reads:
    the replaced file's weights, or a killed export's, read by nothing."""
    for stale in side_files_named_for(target):
        if stale.name != keep:
            stale.unlink(missing_ok=True)


def side_file_name(target: Path) -> str:
    """The side file's name beside `target`: FILE.data, or one of this export's own where that name is taken
    (by the file being replaced): moved in before the file that reads it, a fixed name would pair the previous
    file with these weights until the second move."""
    usual = f"{target.name}.data"
    return usual if not (target.parent / usual).exists() else f"{target.name}.{secrets.token_hex(4)}.data"
