"""Hostile and malformed `.pt2` files: nothing in them may run, and each is one clean error.

Every hostile archive is built here from a real one (`Program.save` of a small model) by rewriting
its zip entries. Where an archive carries a payload, the test first shows that torch.export.load on its
own *does* run it (so the case is live), then that prunefx refuses the file without running it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from prunefx.cli import main
from prunefx.graph import Program, ProgramFileError


class Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _rewritten(good: Path, out: Path, change) -> Path:
    """A copy of `good` with its entries (names relative to the archive's folder) passed through `change`."""
    entries = _entries(good)
    root = next(iter(entries)).split("/")[0]
    inner = {name[len(root) + 1:]: data for name, data in entries.items()}
    change(inner)
    return _write(out, {f"{root}/{name}": data for name, data in inner.items()})


def _edit_json(inner: dict, name: str, edit) -> None:
    document = json.loads(inner[name])
    edit(document)
    inner[name] = json.dumps(document).encode()


def _pickled_weight(marker):
    def change(inner):
        _edit_json(inner, "data/weights/model_weights_config.json",
                   lambda doc: doc["config"]["conv.weight"].update(use_pickle=True))
        path_name = json.loads(inner["data/weights/model_weights_config.json"])["config"]["conv.weight"]["path_name"]
        inner[f"data/weights/{path_name}"] = _payload_bytes(marker)
    return change


def _pickled_constant(marker):
    def change(inner):
        _edit_json(inner, "data/constants/model_constants_config.json", lambda doc: doc["config"].update(
            {"c": {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}))
        inner["data/constants/tensor_0"] = _payload_bytes(marker)
    return change


def _pickled_sample_inputs(marker):
    def change(inner):
        inner["data/sample_inputs/model.pt"] = _payload_bytes(marker)
    return change


PAYLOAD_CASES = {"pickled weight": _pickled_weight, "pickled constant": _pickled_constant,
                 "pickled sample inputs": _pickled_sample_inputs}


@pytest.mark.parametrize("case", list(PAYLOAD_CASES))
def test_payload_archives_are_refused_without_running_the_payload(good_archive, tmp_path, case):
    live_marker, marker = tmp_path / "ran_in_torch", tmp_path / "ran_in_prunefx"
    # The case is live: torch.export.load on its own runs the payload (or at least gets to unpickle it).
    live = _rewritten(good_archive, tmp_path / "live.pt2", PAYLOAD_CASES[case](live_marker))
    try:
        torch.export.load(live)
    except Exception:
        pass
    assert live_marker.exists(), "the hostile archive did not reach torch's unpickler: the test is not live"

    hostile = _rewritten(good_archive, tmp_path / "hostile.pt2", PAYLOAD_CASES[case](marker))
    with pytest.raises(ProgramFileError) as caught:
        Program.load(hostile)
    assert not marker.exists()
    assert "refused" in str(caught.value) and "\n" not in str(caught.value)


def _add(name, data=b"\0"):
    return lambda inner: inner.__setitem__(name, data)


def _node_target(target):
    def change(inner):
        def edit(doc):
            nodes = doc["graph_module"]["graph"]["nodes"]
            nodes[0]["target"] = target
        _edit_json(inner, "models/model.json", edit)
    return change


def _expression(text):
    def change(inner):
        _edit_json(inner, "models/model.json", lambda doc: doc.setdefault("range_constraints", {}).update(
            {text: {"min_val": 0, "max_val": 4}}))
    return change


REFUSED_CASES = {
    "AOTInductor library": (_add("data/aotinductor/model/model.so"), "compiled native code"),
    "ExecuTorch program": (_add("data/executorch/model.pte"), "ExecuTorch"),
    "custom object": (_add("data/constants/custom_obj_0"), "custom object"),
    "unknown entry": (_add("code/run.py", b"print(1)"), "unexpected entry"),
    "node calling os.system": (_node_target("torch.os.system"), "not a functional ATen operator"),
    "node calling builtins": (_node_target("builtins.eval"), "not a functional ATen operator"),
    "python in a shape expression": (_expression("__import__('os').system('true')"), "shape expression"),
}


@pytest.mark.parametrize("case", list(REFUSED_CASES))
def test_archives_with_code_are_refused(good_archive, tmp_path, case):
    change, reason = REFUSED_CASES[case]
    hostile = _rewritten(good_archive, tmp_path / "hostile.pt2", change)
    with pytest.raises(ProgramFileError, match=reason):
        Program.load(hostile)


def test_path_traversal_and_absolute_entries_are_refused(good_archive, tmp_path):
    for index, name in enumerate(["../evil", "/etc/evil", "net/../../evil", "C:\\evil"]):
        entries = _entries(good_archive)
        entries[name] = b"x"
        hostile = _write(tmp_path / f"traversal{index}.pt2", entries)
        with pytest.raises(ProgramFileError, match="plain relative path|outside"):
            Program.load(hostile)
    assert not (tmp_path.parent / "evil").exists()


def test_zip_bomb_entry_is_refused_before_inflating(good_archive, tmp_path):
    entries = _entries(good_archive)
    root = next(iter(entries)).split("/")[0]
    hostile = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(hostile, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        archive.writestr(f"{root}/data/weights/weight_99", bytes(64 << 20))
    with pytest.raises(ProgramFileError, match="zip bomb"):
        Program.load(hostile)


def test_empty_record_claiming_a_huge_tensor_is_refused(good_archive, tmp_path):
    def change(inner):
        def edit(doc):
            entry = doc["config"]["conv.weight"]
            entry["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]
            inner[f"data/weights/{entry['path_name']}"] = b""
        _edit_json(inner, "data/weights/model_weights_config.json", edit)
    with pytest.raises(ProgramFileError, match="record is empty"):
        Program.load(_rewritten(good_archive, tmp_path / "huge.pt2", change))


def test_truncated_archive_is_one_error(good_archive, tmp_path):
    data = good_archive.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        truncated = tmp_path / f"cut{cut}.pt2"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ProgramFileError):
            Program.load(truncated)


def test_a_file_torch_cannot_deserialize_says_why_in_its_one_line(good_archive, tmp_path, caplog):
    """torch.export.load logs the cause (another schema version, a weight cut short) and raises "check the
    warnings above", which a command never shows: the one line names the cause, and no traceback is logged."""
    def newer_schema(inner):
        _edit_json(inner, "models/model.json", lambda doc: doc.update(schema_version={"major": 99, "minor": 0}))

    def short_weight(inner):
        name = json.loads(inner["data/weights/model_weights_config.json"])["config"]["conv.weight"]["path_name"]
        inner[f"data/weights/{name}"] = inner[f"data/weights/{name}"][:8]

    for change, said in ((newer_schema, "schema version"), (short_weight, "out of bounds")):
        broken = _rewritten(good_archive, tmp_path / f"{change.__name__}.pt2", change)
        with pytest.raises(ProgramFileError, match=said) as error:
            Program.load(broken)
        assert "\n" not in str(error.value) and "warnings above" not in str(error.value)
    assert not [record for record in caplog.records if record.exc_info]


def _metadata(record):
    return lambda inner: inner.__setitem__("extra/prunefx.json",
                                           record.encode() if isinstance(record, str) else json.dumps(record).encode())


METADATA_CASES = {
    "malformed JSON": ("{not json", "not valid JSON"),
    "not an object": ([1, 2], "not a JSON object"),
    "unknown field": ({"format": 1, "nmae": "x"}, "unknown field 'nmae'"),
    "wrong format": ({"format": 99}, "format 99"),
    "name not text": ({"name": 5}, "'name'"),
    "inputs not a list": ({"inputs": "1x3x8x8"}, "inputs must be a list"),
    "negative shape": ({"inputs": [{"shape": [1, 3, -8, 8], "dtype": "float32"}]}, "non-negative integers"),
    "float shape": ({"inputs": [{"shape": [1, 3, 8.5, 8], "dtype": "float32"}]}, "non-negative integers"),
    "absurd shape": ({"inputs": [{"shape": [1, 3, 100000, 100000], "dtype": "float32"}]}, "2\\*\\*28"),
    "unknown dtype": ({"inputs": [{"shape": [1, 3, 8, 8], "dtype": "object"}]}, "dtype 'object'"),
    "values of a float input": ({"inputs": [{"shape": [2], "dtype": "float32", "values": [1, 2]}]},
                                "integer and boolean inputs only"),
    "values too few": ({"inputs": [{"shape": [3], "dtype": "int64", "values": [1, 2]}]}, "input's 3 elements"),
    "values out of range": ({"inputs": [{"shape": [2], "dtype": "bool", "values": [1, 2]}]}, "in \\[0, 1\\]"),
    "values not integers": ({"inputs": [{"shape": [2], "dtype": "int8", "values": [1, "x"]}]}, "integers in"),
    "analysis of the wrong type": ({"analysis": ["groups"]}, "'analysis' must be a JSON object"),
    "node names not a list": ({"nodes": "conv2d"}, "'nodes' must be a list"),
    "node name as code": ({"nodes": [["x = __import__('os')", "aten.conv2d.default"]]}, "a Python identifier"),
    "node name a keyword": ({"nodes": [["import", "aten.conv2d.default"]]}, "a Python identifier"),
    "inputs disagree with the graph": ({"inputs": [{"shape": [1, 3, 16, 16], "dtype": "float32"}]}, "the graph takes"),
    "outputs disagree with the graph": ({"output_shapes": [[1, 5]]}, "the graph gives"),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_malformed_metadata_is_one_error_naming_the_field(good_archive, tmp_path, case):
    record, message = METADATA_CASES[case]
    hostile = _rewritten(good_archive, tmp_path / "meta.pt2", _metadata(record))
    with pytest.raises(ProgramFileError, match=message) as caught:
        Program.load(hostile)
    assert "\n" not in str(caught.value)


def test_name_with_terminal_escapes_is_made_printable(good_archive, tmp_path, capsys):
    record = json.loads(_entries(good_archive)[next(n for n in _entries(good_archive) if n.endswith("prunefx.json"))])
    record["name"] = "evil\x1b[31m\nname\x07"
    path = _rewritten(good_archive, tmp_path / "escapes.pt2", _metadata(record))
    program = Program.load(path)
    assert program.name.isprintable() and "\x1b" not in program.name
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[0].startswith("model") and "evil" in out.splitlines()[0]


def test_a_normal_program_still_round_trips(good_archive, small_net_class):
    program = Program.load(good_archive)
    torch.manual_seed(0)  # the fixture's seed: the same weights
    reference = small_net_class().eval()
    x = torch.randn(1, 3, 8, 8)
    assert program.name == "net"
    assert torch.allclose(program(x), reference(x), atol=1e-6)


COMMANDS = {
    "inspect": lambda path, out: ["inspect", str(path)],
    "bench": lambda path, out: ["bench", str(path), "--runs", "1", "--warmup", "0"],
    "prune": lambda path, out: ["prune", str(path), "--macs", "0.5", "-o", str(out)],
    "export": lambda path, out: ["export", str(path), "-o", str(out / "model.onnx")],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_refuse_a_hostile_archive_in_one_line(good_archive, tmp_path, capsys, command):
    marker = tmp_path / "ran"
    hostile = _rewritten(good_archive, tmp_path / "hostile.pt2", _pickled_weight(marker))
    out = tmp_path / "out"
    status = main(COMMANDS[command](hostile, out))
    err = capsys.readouterr().err
    assert status == 2
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "refused" in err
    assert not out.exists()


@pytest.mark.slow
def test_hostile_archive_through_a_real_process(good_archive, tmp_path):
    marker = tmp_path / "ran"
    hostile = _rewritten(good_archive, tmp_path / "hostile.pt2", _pickled_sample_inputs(marker))
    done = subprocess.run([sys.executable, "-m", "prunefx", "inspect", str(hostile)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not marker.exists()


# ---- other files prunefx reads: --weights, trainer checkpoints ------------------------------------

def test_weights_file_with_a_payload_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    weights = tmp_path / "weights.pth"
    weights.write_bytes(_payload_bytes(marker))
    status = main(["inspect", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--weights", str(weights)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def _checkpoint(good_archive: Path, directory: Path) -> None:
    from prunefx.passes.training.checkpoint import write_checkpoint

    write_checkpoint(directory, Program.load(good_archive), {"step": 1})


def test_resume_refuses_a_trainer_state_with_a_payload(good_archive, tmp_path):
    from prunefx.passes.training.checkpoint import STATE_FILE, read_checkpoint
    from prunefx.passes.training.config import TrainingError

    _checkpoint(good_archive, tmp_path / "ckpt")
    marker = tmp_path / "ran"
    (tmp_path / "ckpt" / STATE_FILE).write_bytes(_payload_bytes(marker))
    with pytest.raises(TrainingError, match="cannot read"):
        read_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()


def test_resume_refuses_a_hostile_program_even_with_a_matching_hash(good_archive, tmp_path):
    import hashlib

    from prunefx.passes.training.checkpoint import PROGRAM_FILE, STATE_FILE, read_checkpoint
    from prunefx.passes.training.config import TrainingError

    directory = tmp_path / "ckpt"
    _checkpoint(good_archive, directory)
    marker = tmp_path / "ran"
    hostile = _rewritten(good_archive, tmp_path / "hostile.pt2", _pickled_weight(marker))
    (directory / PROGRAM_FILE).write_bytes(hostile.read_bytes())
    state = torch.load(directory / STATE_FILE, weights_only=True)
    state["program_sha256"] = hashlib.sha256(hostile.read_bytes()).hexdigest()  # an attacker controls both
    torch.save(state, directory / STATE_FILE)
    with pytest.raises(TrainingError, match="refused"):
        read_checkpoint(directory)
    assert not marker.exists()
