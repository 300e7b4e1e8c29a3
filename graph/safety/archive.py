"""Audit a `.pt2` archive before anything in it is deserialised, and load it with unpickling disabled.

`torch.export.load` trusts its input (pickles, native libraries, any attribute under `torch`, sympify). The
archive is read once, every entry audited against an allow-list of what prunefx writes (plain tensor data and
JSON), and torch sees only a canonical archive rebuilt in memory from the audited bytes; `safe_load` then loads
it with every unpickler refused. What is refused and why: see docs/file-safety.md, '.pt2 programs'.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import torch

from prunefx.graph.errors import ProgramFileError, PrunefxError, first_line, printable
from prunefx.graph.output_tree import foreign_container
from prunefx.graph.safety.functional_ops import refusal
from prunefx.graph.safety.load_cause import export_load_causes
from prunefx.graph.safety.regular_files import read_regular_file
from prunefx.graph.safety.shape_expressions import ExpressionError, check_expression

# Bounds that no real vision model reaches (ViT-H is ~2.5 GB of float32) but that stop a small file from
# claiming terabytes, or a few kilobytes from inflating into gigabytes.
MAX_TOTAL_BYTES = 16 << 30
MAX_ENTRIES = 100_000
MAX_JSON_BYTES = 256 << 20
MAX_COMPRESSION_RATIO = 200  # deflated tensors rarely shrink 3x; only crafted data shrinks 200x

_EXACT_ENTRIES = {".data/version", ".data/serialization_id", "archive_format", "archive_version", "byteorder",
                  "extra/prunefx.json"}
_ENTRY_PATTERNS = [
    re.compile(r"models/(?P<model>[A-Za-z0-9_]+)\.json"),
    re.compile(r"data/weights/[A-Za-z0-9_]+_weights_config\.json"),
    re.compile(r"data/weights/weight_[0-9]+"),
    re.compile(r"data/constants/[A-Za-z0-9_]+_constants_config\.json"),
    re.compile(r"data/constants/tensor_[0-9]+"),
    re.compile(r"data/sample_inputs/[A-Za-z0-9_]+\.pt"),
]
# Why a known-but-refused entry is refused: said in the error so the user knows what the file holds.
_REFUSED_PREFIXES = {
    "data/aotinductor/": "compiled native code (AOTInductor)",
    "data/executorch/": "an ExecuTorch program",
    "data/mtia": "compiled device code",
    "xl_model_weights/": "externally stored weights",
    "data/constants/custom_obj_": "a pickled custom object",
    "data/constants/opaque_obj_": "a pickled opaque object",
}

def read_archive(path: Path) -> tuple[str, dict[str, bytes]]:
    """The archive's root folder and its entries (names relative to it -> bytes), read once and audited
    (module docstring); ProgramFileError otherwise."""
    try:
        data = read_regular_file(path, "program file", MAX_TOTAL_BYTES)
    except PrunefxError as error:
        raise ProgramFileError(str(error)) from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            root, names = _check_entries(path, archive)
            entries = {inner: archive.read(f"{root}/{inner}") for inner in names}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, ValueError) as error:
        raise ProgramFileError(f"{path} is not a .pt2 archive (corrupt or wrong file type: "
                               f"{first_line(error)})") from None
    for name, content in entries.items():
        if name.endswith("_config.json"):
            folder = name.rpartition("/")[0] + "/"
            records = {n.rpartition("/")[2]: len(c) for n, c in entries.items() if n.startswith(folder)}
            _check_payload_config(path, name, _read_json(path, name, content), records)
        elif name.startswith("models/"):
            _check_graph(path, name, _read_json(path, name, content))
        elif name.startswith("data/sample_inputs/"):
            _check_sample_inputs(path, name, content)
    return root, entries


def canonical_archive(root: str, entries: dict[str, bytes]) -> bytes:
    """A fresh zip holding exactly the audited entries, stored uncompressed, one entry per name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries.items():
            archive.writestr(f"{root}/{name}", content)
    return buffer.getvalue()


def safe_load(path: Path, extra_files: dict[str, str]) -> torch.export.ExportedProgram:
    """torch.export.load of the canonical archive of `read_archive`, with every unpickler but the
    tensor-only one disabled."""
    canonical = io.BytesIO(canonical_archive(*read_archive(path)))
    with _unpickling_restricted(), export_load_causes() as causes:
        try:
            return torch.export.load(canonical, extra_files=extra_files)
        except RuntimeError as error:
            if not causes:
                raise
            cause = causes[-1]  # torch.export logged it and raised "check the warnings above"
            raise ProgramFileError(f"cannot read program {path}: {first_line(cause)}") from error



def _check_entries(path: Path, archive: zipfile.ZipFile) -> tuple[str, list[str]]:
    """The archive's root folder and its entries' names relative to it, every one a regular file, allowed,
    unique and sized sanely."""
    infos = archive.infolist()
    if not infos:
        raise ProgramFileError(f"{path} is an empty archive, not a .pt2 program")
    if len(infos) > MAX_ENTRIES:
        raise ProgramFileError(f"{path} has {len(infos)} entries; a .pt2 program has far fewer (refused)")
    total = 0
    root = None
    relative = []
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no file type recorded
            raise ProgramFileError(f"{path}: entry '{printable(name)}' is not a regular file (a link or folder; "
                                   "refused)")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or len(parts) < 2 or ":" in parts[0]:
            raise ProgramFileError(f"{path}: entry '{printable(name)}' is not a plain relative path (refused)")
        if root is None:
            root = parts[0]
        elif parts[0] != root:
            raise ProgramFileError(f"{path}: entry '{printable(name)}' lies outside the archive's folder "
                                   f"'{printable(root)}' (refused)")
        inner = name[len(root) + 1:]
        _check_entry_name(path, inner)
        total += info.file_size
        if info.compress_size and info.file_size > (1 << 20) and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
            raise ProgramFileError(f"{path}: entry '{printable(name)}' inflates {info.file_size // info.compress_size}x "
                                   "(a zip bomb, refused)")
        if inner in relative:
            raise ProgramFileError(f"{path}: entry '{printable(name)}' appears twice; readers disagree on which "
                                   "copy counts (refused)")
        relative.append(inner)
    if total > MAX_TOTAL_BYTES:
        raise ProgramFileError(f"{path} claims {total / 2**30:.0f} GiB of data, over prunefx's "
                               f"{MAX_TOTAL_BYTES >> 30} GiB bound (refused)")
    return root, relative


def _check_entry_name(path: Path, inner: str) -> None:
    for prefix, what in _REFUSED_PREFIXES.items():
        if inner.startswith(prefix):
            raise ProgramFileError(f"{path}: entry '{printable(inner)}' holds {what}; prunefx loads only plain "
                                   "tensor data and JSON (refused)")
    if inner in _EXACT_ENTRIES or any(p.fullmatch(inner) for p in _ENTRY_PATTERNS):
        return
    raise ProgramFileError(f"{path}: unexpected entry '{printable(inner)}'; prunefx loads only plain tensor data "
                           "and JSON (refused)")


def _read_json(path: Path, name: str, content: bytes):
    if len(content) > MAX_JSON_BYTES:
        raise ProgramFileError(f"{path}: '{printable(name)}' is over {MAX_JSON_BYTES >> 20} MiB of JSON (refused)")
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as error:
        raise ProgramFileError(f"{path}: '{printable(name)}' is not valid JSON: {first_line(error)}") from error


def _check_payload_config(path: Path, name: str, config, records: dict[str, int]) -> None:
    """Every tensor of the table is a raw record of the archive, never a pickle, and its description
    asks for no more memory than the record holds (torch allocates zeros for an empty record)."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ProgramFileError(f"{path}: '{name}' is not a weights/constants table")
    for key, entry in entries.items():
        where = f"{path}: '{name}' entry '{printable(str(key))}'"
        if not isinstance(entry, dict):
            raise ProgramFileError(f"{where} is not a mapping")
        if entry.get("use_pickle"):
            raise ProgramFileError(f"{where} is a pickle, which can run code when loaded; prunefx loads only "
                                   "plain tensor data (refused)")
        record = entry.get("path_name")
        if not isinstance(record, str) or not re.fullmatch(r"(weight|tensor)_[0-9]+", record):
            raise ProgramFileError(f"{where} points at '{printable(str(record))}', not a raw tensor record (refused)")
        if record not in records:
            raise ProgramFileError(f"{where} points at '{record}', which the archive does not hold")
        _check_tensor_meta(entry.get("tensor_meta"), records[record], where)


def _check_tensor_meta(meta, record_bytes: int, where: str) -> None:
    sizes = meta.get("sizes") if isinstance(meta, dict) else None
    if not isinstance(sizes, list) or len(sizes) > 16:
        raise ProgramFileError(f"{where} has no valid tensor description (refused)")
    numel = 1
    for size in sizes:
        value = size.get("as_int") if isinstance(size, dict) else None
        if type(value) is not int or value < 0:
            raise ProgramFileError(f"{where}: tensor sizes must be non-negative integers (refused)")
        numel *= value
    if numel > 0 and record_bytes == 0:
        raise ProgramFileError(f"{where} describes {numel} elements but its record is empty (refused)")


def _check_sample_inputs(path: Path, name: str, data: bytes) -> None:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch's safe unpickler raises several types; every one is a refusal here
        # torch's message goes on to suggest an unsafe load "if you trust the source": not shown
        raise ProgramFileError(f"{path}: '{name}' is not plain tensor data (it would need an unsafe unpickler; "
                               f"refused: {type(error).__name__})") from None


def _check_graph(path: Path, name: str, document) -> None:
    """One walk over the graph JSON: every node target is a torch operator, every shape expression plain
    arithmetic (range constraints are keyed by expressions too)."""
    ranges = document.get("range_constraints") if isinstance(document, dict) else None
    dynamic = sorted(key for key in ranges if re.fullmatch(r"s\d+", str(key))) if isinstance(ranges, dict) else []
    if dynamic:  # said plainly: its symbols' sympy forms would read as an expression refused for safety
        raise ProgramFileError(f"{path}: '{name}' has dynamic input dimensions (a torch.export Dim: "
                               f"{', '.join(printable(key) for key in dynamic[:4])}); prunefx reads programs of "
                               "static shapes: export it again without dynamic_shapes, or give prunefx the model")
    for expression in ranges if isinstance(ranges, dict) else ():
        _check_expression(path, name, expression)
    for item in _walk(document):
        if {"target", "inputs", "outputs"} <= item.keys():  # a graph node, in nested graphs too
            target = _text(item["target"])
            why = refusal(target)
            if why is not None:
                raise ProgramFileError(f"{path}: '{name}' calls '{printable(target)[:120]}', which {why} "
                                       "(refused: prunefx runs only functional ATen operators)")
        if "expr_str" in item:
            _check_expression(path, name, _text(item["expr_str"]))
        for key in ("in_spec", "out_spec"):
            foreign = foreign_container(item[key]) if key in item else None
            if foreign is not None:
                raise ProgramFileError(f"{path}: '{name}' keeps its {key[:-5]}puts in a '{printable(foreign)[:80]}', "
                                       "and prunefx never imports a module because a file names it (refused); "
                                       "capture and save the model again with this prunefx, which keeps them in "
                                       "tuples and dicts")


def _check_expression(path: Path, name: str, expression: str) -> None:
    try:
        check_expression(expression)
    except ExpressionError as error:
        raise ProgramFileError(f"{path}: '{name}' holds the shape expression '{printable(expression)[:80]}', "
                               f"which is not integer arithmetic on shape symbols ({error}; refused)") from None


def _text(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _walk(document) -> Iterator:
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class _RefusedUnpickling(ProgramFileError):
    pass


@contextlib.contextmanager
def _unpickling_restricted():
    """Within the block, torch.load is tensor-only and the general unpicklers refuse to run."""
    original_load, original_loads = torch.load, pickle.loads
    original_obj = getattr(torch._C, "_pickle_load_obj", None)

    def tensor_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    def refuse(*_args, **_kwargs):
        raise _RefusedUnpickling("the archive asked for an unsafe unpickler (refused)")

    torch.load, pickle.loads = tensor_only_load, refuse
    if original_obj is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = original_load, original_loads
        if original_obj is not None:
            torch._C._pickle_load_obj = original_obj
