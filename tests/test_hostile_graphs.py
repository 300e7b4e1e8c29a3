"""Hostile `.pt2` files that a zip-level audit alone would not stop: two entries of one name,
link entries, a graph node that writes a file, a shape expression that hangs sympy, a graph that
allocates gigabytes, recorded shapes that lie about the MACs; and a fuzz test over real archives.

Each hostile file is built here from a real one. Where it carries a payload, torch on its own is first
shown to run it (a marker file appears), then prunefx refuses the file in one line, marker-free.
"""

from __future__ import annotations

import json
import random
import stat
import time
import zipfile
from pathlib import Path

import pytest
import torch

from prunefx.cli import main
from prunefx.graph import Program, ProgramFileError
from prunefx.graph.counting import count


def _entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _write(path: Path, entries: list[tuple[str, bytes]], modes: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes or {}).get(name, stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
    return path


def _model_json(entries) -> tuple[str, dict]:
    name, data = next((n, d) for n, d in entries if n.endswith("models/model.json"))
    return name, json.loads(data)


def _one_line_refusal(path: Path, *words: str) -> str:
    started = time.perf_counter()
    with pytest.raises(ProgramFileError) as caught:
        Program.load(path)
    message = str(caught.value)
    assert "\n" not in message and time.perf_counter() - started < 30
    for word in words:
        assert word in message
    return message


# ---- one reading of an archive -----------------------------------------------------------------

def _touching_expression(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or 1"


def _with_size_expression(document: dict, expression: str) -> dict:
    """A copy of the graph JSON whose first recorded tensor size is the symbolic `expression` (torch's
    loader hands such text to sympy.sympify)."""
    document = json.loads(json.dumps(document))
    value = next(iter(document["graph_module"]["graph"]["tensor_values"].values()))
    value["sizes"][0] = {"as_expr": {"expr_str": expression, "hint": {"as_int": 1}}}
    return document


def _hidden_copy_archive(good_archive: Path, path: Path, marker: Path, first: int, second: int) -> Path:
    """An archive with a poisoned copy of the graph JSON at position `first` and the clean copy after it
    (at `second` among the other entries): Python's zipfile (a zip-level audit) reads the last copy, torch's
    reader whichever its binary search meets."""
    entries = _entries(good_archive)
    name, document = _model_json(entries)
    poisoned = (name, json.dumps(_with_size_expression(document, _touching_expression(marker))).encode())
    others = [entry for entry in entries if entry[0] != name]
    clean = next(entry for entry in entries if entry[0] == name)
    _write(path, others[:first] + [poisoned] + others[first:second] + [clean] + others[second:])
    with zipfile.ZipFile(path) as archive:
        assert archive.read(name) == clean[1]  # what an audit through zipfile would have seen
    return path


def test_a_duplicate_entry_is_refused_and_its_hidden_copy_never_parsed(good_archive, tmp_path):
    live_marker, marker = tmp_path / "ran_in_torch", tmp_path / "ran_in_prunefx"
    count_others = len(_entries(good_archive)) - 1
    for first, second in ((f, s) for f in range(count_others + 1) for s in range(f, count_others + 1)):
        live = _hidden_copy_archive(good_archive, tmp_path / "live.pt2", live_marker, first, second)
        try:
            torch.export.load(live)
        except Exception:
            pass
        if live_marker.exists():
            break
    assert live_marker.exists()  # the case is live: torch's loader evaluated a copy zipfile never showed
    hostile = _hidden_copy_archive(good_archive, tmp_path / "hostile.pt2", marker, first, second)
    _one_line_refusal(hostile, "appears twice", "refused")
    assert main(["inspect", str(hostile)]) == 2
    assert not marker.exists()


def test_link_and_folder_entries_are_refused(good_archive, tmp_path):
    entries = _entries(good_archive)
    name = entries[-1][0]
    link = _write(tmp_path / "link.pt2", entries, {name: stat.S_IFLNK | 0o777})
    _one_line_refusal(link, "not a regular file", "refused")
    root = entries[0][0].split("/")[0]
    folder = _write(tmp_path / "folder.pt2", entries + [(f"{root}/data/", b"")])
    _one_line_refusal(folder, "not a regular file")


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: __import__("os").mkfifo(p)])
def test_a_folder_or_fifo_is_not_a_regular_file(tmp_path, make):
    path = tmp_path / "model.pt2"
    make(path)
    _one_line_refusal(path, "not a regular file")


# ---- a node that writes a file -------------------------------------------------------------------

def _with_node(good_archive: Path, out: Path, op, args: tuple, kwargs: dict, meta) -> Path:
    """`good_archive`'s program with one more node calling `op`, whose result is added (times 0) to the
    output so that nothing removes it as dead code."""
    exported = Program.load(good_archive).to_exported()
    graph = exported.graph
    output = next(node for node in graph.nodes if node.op == "output")
    with graph.inserting_before(output):
        extra = graph.call_function(op, args, kwargs)
        extra.meta["val"] = meta
        total = graph.call_function(torch.ops.aten.sum.default, (extra,))
        total.meta["val"] = torch.empty((), device="meta", dtype=torch.float32)
        result = output.args[0][0]
        joined = graph.call_function(torch.ops.aten.add.Tensor, (result, total))
        joined.meta["val"] = result.meta["val"]
    output.args = ((joined,),)
    exported.graph_signature.output_specs[0].arg.name = joined.name
    torch.export.save(exported, out)
    return out


def _file_writer(good_archive: Path, out: Path, target: Path) -> Path:
    return _with_node(good_archive, out, torch.ops.aten.from_file.default, (str(target),),
                      {"shared": True, "size": 4, "dtype": torch.float32},
                      torch.empty(4, device="meta", dtype=torch.float32))


def test_a_graph_node_that_writes_a_file_is_refused(good_archive, tmp_path):
    live_marker, marker = tmp_path / "written_by_torch", tmp_path / "written_by_prunefx"
    live = torch.export.load(_file_writer(good_archive, tmp_path / "live.pt2", live_marker))
    live.module()(torch.randn(1, 3, 8, 8))
    assert live_marker.exists()  # the case is live: running torch's loaded graph created the file
    hostile = _file_writer(good_archive, tmp_path / "hostile.pt2", marker)
    _one_line_refusal(hostile, "aten.from_file.default", "opens a file", "refused")
    for argv in (["inspect", str(hostile)], ["bench", str(hostile), "--backend", "torch", "--runs", "1"]):
        assert main(argv) == 2
    assert not marker.exists()


# ---- bounded time and memory ---------------------------------------------------------------------

def test_a_power_tower_expression_is_refused_before_sympy(good_archive, tmp_path):
    entries = _entries(good_archive)
    name, document = _model_json(entries)
    tower = json.dumps(_with_size_expression(document, "9**9**9**9")).encode()
    hostile = _write(tmp_path / "tower.pt2", [(n, tower if n == name else d) for n, d in entries])
    _one_line_refusal(hostile, "shape expression", "refused")


def test_a_graph_allocating_gigabytes_is_refused_before_it_runs(good_archive, tmp_path):
    hostile = _with_node(good_archive, tmp_path / "ones.pt2", torch.ops.aten.ones.default, ([3, 2 ** 29],),
                         {"dtype": torch.float32, "device": torch.device("cpu"), "pin_memory": False},
                         torch.empty((3, 2 ** 29), device="meta"))
    _one_line_refusal(hostile, "3x536870912", "2**28", "refused")
    assert main(["export", str(hostile), "-o", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_reported_macs_come_from_the_graph_not_the_recorded_shapes(good_archive, tmp_path, capsys):
    entries = _entries(good_archive)
    name, document = _model_json(entries)
    graph = document["graph_module"]["graph"]
    inputs = {item["as_tensor"]["name"] for item in graph["inputs"] if "as_tensor" in item}
    for key, value in graph["tensor_values"].items():
        sizes = value["sizes"]
        if key not in inputs and [s.get("as_int") for s in sizes[-2:]] == [8, 8]:  # 8x8 activations claim 80x80
            sizes[-2:] = [{"as_int": 80}, {"as_int": 80}]
    lying = _write(tmp_path / "lying.pt2", [(n, json.dumps(document).encode() if n == name else d)
                                           for n, d in entries])
    # oracle by hand: conv = 8 out channels x 8x8 positions x 3x3x3 kernel; linear = 8 x 4
    assert count(Program.load(lying)).macs == 8 * 8 * 8 * 3 * 3 * 3 + 8 * 4
    capsys.readouterr()
    assert main(["inspect", str(lying)]) == 0
    report = capsys.readouterr().out
    assert "1,382,432" not in report and "1382432" not in report and "1.38" not in report


# ---- fuzzing: mutated real archives end in success or one ProgramFileError, never a payload -------

def _mutations(entries, rng: random.Random):
    entries = list(entries)
    kind = rng.choice(["duplicate", "reorder", "truncate", "flip", "json", "drop"])
    index = rng.randrange(len(entries))
    name, data = entries[index]
    if kind == "duplicate":
        entries.insert(rng.randrange(len(entries) + 1), (name, data))
    elif kind == "reorder":
        rng.shuffle(entries)
    elif kind == "truncate":
        entries[index] = (name, data[:rng.randrange(len(data) + 1)])
    elif kind == "flip" and data:
        spot = rng.randrange(len(data))
        entries[index] = (name, data[:spot] + bytes([data[spot] ^ (1 << rng.randrange(8))]) + data[spot + 1:])
    elif kind == "json":
        entries = _swap_json_value(entries, rng)
    elif kind == "drop":
        del entries[index]
    return entries


def _swap_json_value(entries, rng: random.Random):
    name, document = _model_json(entries)
    nodes = document["graph_module"]["graph"]["nodes"]
    node = rng.choice(nodes)
    node["target"] = rng.choice(["torch.ops.aten.add_.Tensor", "torch.ops.aten.from_file.default",
                                 "torch.ops.aten._print.default", "builtins.eval", node["target"]])
    return [(n, json.dumps(document).encode() if n == name else d) for n, d in entries]


def _fuzz(good_archive: Path, tmp_path: Path, cases: int, seed: int) -> None:
    entries = _entries(good_archive)
    rng = random.Random(seed)
    for case in range(cases):
        path = tmp_path / f"fuzz{case % 4}.pt2"
        _write(path, _mutations(entries, rng))
        try:
            Program.load(path)
        except ProgramFileError as error:
            assert "\n" not in str(error), (case, str(error))
    assert not list(tmp_path.glob("marker*"))


def test_fuzzed_archives_end_in_success_or_one_line(good_archive, tmp_path):
    _fuzz(good_archive, tmp_path, cases=60, seed=0)


@pytest.mark.slow
def test_fuzzed_archives_many_cases(good_archive, tmp_path):
    _fuzz(good_archive, tmp_path, cases=600, seed=1)


class _Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_sample_input_is_refused_without_suggesting_an_unsafe_load(good_archive, tmp_path):
    marker = tmp_path / "marker_ran"
    buffer = __import__("io").BytesIO()
    torch.save(_Payload(marker), buffer)
    entries = [(n, buffer.getvalue() if n.endswith("data/sample_inputs/model.pt") else d)
               for n, d in _entries(good_archive)]
    message = _one_line_refusal(_write(tmp_path / "pickled.pt2", entries), "refused")
    assert "trust" not in message.lower() and not marker.exists()
