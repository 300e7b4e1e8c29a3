"""Every file the public API writes is written whole or not at all (graph/whole_files.py): a write cut short
by a full disk raises, and leaves a previous file of that name as it was and no part of the new one beside it.
`export_onnx`, `Program.save` and the caches have their own tests (test_memory_copies, test_tensorrt_runtime)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import Variant, export_onnx, write_chart, write_deployment_report
from prunefx.runtime.onnx.float16 import lower_to_float16
from prunefx.runtime.onnx.quantize_static import quantize_static_file
from prunefx.runtime.onnx.quantized import export_quantized_onnx
from prunefx.runtime.tensorrt.layer_profile import LayerProfile, LayerRow, write_profile_json

PREVIOUS = b"the previous file"


def _program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    return capture(model.eval(), torch.randn(1, 3, 8, 8), name="net").eval()


def _batches():
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(1, 3, 8, 8, generator=generator)] for _ in range(2)]


def _variants():
    return [Variant("dense", 0.91, 2.0, "onnxruntime"), Variant("pruned", 0.90, 1.1, "onnxruntime")]


def _float16(path: Path) -> None:
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed")
    lower_to_float16(export_onnx(_program(), path.parent.parent / "fp32.onnx").path, path)


def _quantized(path: Path) -> None:
    program = _program()
    quantize_int8(program, config={"calibration": [batch[0] for batch in _batches()], "method": "max"})
    export_quantized_onnx(program, path, activations="s8")


def _quantized_by_onnxruntime(path: Path) -> None:
    quantize_static_file(export_onnx(_program(), path.parent.parent / "fp32.onnx").path, path, _batches())


def _layer_profile(path: Path) -> None:
    rows = [LayerRow(f"layer {index}", 0.1 * index, index / 55, layer_type="Convolution") for index in range(1, 11)]
    write_profile_json(LayerProfile(rows, runs=20, source="tensorrt"), path)


ONNX_WRITERS = {"lower_to_float16": _float16, "export_quantized_onnx": _quantized,
                "quantize_static_file": _quantized_by_onnxruntime}
OTHER_WRITERS = {"write_profile_json": _layer_profile,
                 "write_chart": lambda path: write_chart(_variants(), path, title="cut short")}


def _cut_short_in(folder: Path, monkeypatch) -> None:
    """onnx.save_model onto a full disk where `folder` is: half of the file is written, then ENOSPC. Elsewhere
    (onnxruntime's own temporary files) it writes as usual."""
    save_model = onnx.save_model

    def half_then_full(model, path, *args, **kwargs):
        if Path(path).parent != folder:
            return save_model(model, path, *args, **kwargs)
        Path(path).write_bytes(model.SerializeToString()[: model.ByteSize() // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx, "save_model", half_then_full)


def _previous_file(folder: Path) -> Path:
    folder.mkdir(parents=True)
    previous = folder / "out"
    previous.write_bytes(PREVIOUS)
    return previous


@pytest.mark.slow  # two ONNX exports each: about 5 s
@pytest.mark.parametrize("writer", sorted(ONNX_WRITERS))
def test_an_onnx_file_cut_short_leaves_the_previous_file_as_it_was(writer, tmp_path, monkeypatch, one_thread):
    write = ONNX_WRITERS[writer]
    write(tmp_path / "probe" / "out")
    onnx.checker.check_model(str(tmp_path / "probe" / "out"))  # written whole when the disk has room
    previous = _previous_file(tmp_path / "target")
    _cut_short_in(previous.parent, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write(previous)
    assert previous.read_bytes() == PREVIOUS
    assert [path.name for path in previous.parent.iterdir()] == ["out"]  # no part of the new file beside it


@pytest.mark.parametrize("writer", sorted(OTHER_WRITERS))
def test_a_report_cut_short_leaves_the_previous_file_as_it_was(writer, tmp_path, file_size_limit):
    write = OTHER_WRITERS[writer]
    write(tmp_path / "probe" / "out")
    size = (tmp_path / "probe" / "out").stat().st_size
    previous = _previous_file(tmp_path / "target")
    with file_size_limit(size // 2), pytest.raises(OSError):
        write(previous)
    assert previous.read_bytes() == PREVIOUS
    assert [path.name for path in previous.parent.iterdir()] == ["out"]


def test_a_deployment_report_cut_short_leaves_the_previous_report_as_it_was(tmp_path, file_size_limit):
    written = write_deployment_report(_variants(), tmp_path / "probe")
    smallest = min(path.stat().st_size for path in written.values())
    folder = tmp_path / "report"
    folder.mkdir()
    for path in written.values():
        (folder / path.name).write_bytes(PREVIOUS)
    with file_size_limit(smallest // 2), pytest.raises(OSError):
        write_deployment_report(_variants(), folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == {path.name: PREVIOUS for path in written.values()}


def _linked(tmp_path: Path) -> tuple[Path, Path]:
    """A link in one folder to a previous file in another, as `latest.onnx -> runs/3/model.onnx` would be."""
    target = _previous_file(tmp_path / "runs")
    link = tmp_path / "links" / "latest"
    link.parent.mkdir()
    link.symlink_to(target)
    return link, target


def test_a_write_through_a_link_replaces_the_file_it_names_and_leaves_the_link(tmp_path, one_thread):
    """As open() would: the link stays a link and reads the new file (a rename onto the link itself made it a
    file and left the linked one stale)."""
    for name, write in {**OTHER_WRITERS, "export_onnx": lambda path: export_onnx(_program(), path),
                        "Program.save": lambda path: _program().save(path)}.items():
        link, target = _linked(tmp_path / name)
        write(link)
        assert link.is_symlink() and link.resolve() == target, name
        assert target.read_bytes() != PREVIOUS and link.read_bytes() == target.read_bytes(), name
        assert sorted(path.name for path in target.parent.iterdir()) == ["out"], name


def test_prunefx_export_through_a_link_writes_the_linked_file(tmp_path, one_thread, capsys):
    from prunefx.cli import main
    _program().save(tmp_path / "model.pt2")
    link, target = _linked(tmp_path)
    assert main(["export", str(tmp_path / "model.pt2"), "-o", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == target
    onnx.checker.check_model(str(target))
    assert sorted(path.name for path in target.parent.iterdir()) == ["out"]
    assert sorted(path.name for path in link.parent.iterdir()) == ["latest"]


def test_a_killed_writers_temporary_file_goes_with_the_next_write_and_a_running_ones_stays(tmp_path):
    """A write killed outright (SIGKILL) leaves its temporary file, as large as the file; the next write of
    the same path removes it. A writer still running (here: this process) keeps its own."""
    import subprocess
    import sys

    from prunefx.graph.whole_files import write_whole
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    killed = tmp_path / f".out.{int(gone.stdout)}-0123abcd.partial"  # the pid of a process that has ended
    running = tmp_path / f".out.{os.getpid()}-89abcdef.partial"
    other = tmp_path / ".other.1-0123abcd.partial"  # another file's
    for leftover in (killed, running, other):
        leftover.write_bytes(b"half")
    write_whole(tmp_path / "out", "whole")
    assert (tmp_path / "out").read_text() == "whole"
    assert not killed.exists() and running.exists() and other.exists()


def test_a_whole_write_reaches_the_disk_before_its_rename_and_the_rename_before_it_returns(tmp_path, monkeypatch):
    """A board that loses power after the rename keeps the new file, not an empty one: the file's data are synced
    before the rename, the folder (the rename) after it."""
    from prunefx.graph import whole_files
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(whole_files.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(whole_files.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    target = tmp_path / "report.json"
    whole_files.write_whole(target, "{}")
    (synced_file, _), (replaced, onto), (synced_folder, folder) = events
    assert (synced_file, replaced, synced_folder) == ("fsync", "replace", "fsync")
    assert events[0][1].endswith(".partial") and onto == str(target) and folder == str(tmp_path)
    assert target.read_text() == "{}"
