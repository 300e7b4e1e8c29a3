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
from prunefx.graph.errors import PrunefxError
from prunefx.graph.whole_files import replaced_whole, write_whole
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import MeasurementError, Variant, export_onnx, write_chart, write_deployment_report
from prunefx.runtime.onnx.float16 import lower_to_float16
from prunefx.runtime.onnx.quantize_static import quantize_static_file
from prunefx.runtime.onnx.quantized import export_quantized_lowerings, export_quantized_onnx
from prunefx.runtime.tensorrt.layer_profile import LayerProfile, LayerRow, write_profile_json
from prunefx.runtime.tensorrt.trtexec_command import _keep as _keep_trtexec_files

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


def test_a_write_that_fails_leaves_no_folder_it_made_and_keeps_those_that_were_there(tmp_path):
    (tmp_path / "there").mkdir()
    target = tmp_path / "there" / "new" / "deeper" / "model.onnx"
    with pytest.raises(KeyboardInterrupt), replaced_whole(target) as partial:
        partial.write_bytes(b"half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.rglob("*")] == ["there"]
    with replaced_whole(target) as partial:  # a write that succeeds keeps them
        partial.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


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


def test_another_hosts_writer_is_not_taken_for_a_killed_one(tmp_path):
    # a cache folder on NFS: another host's pid is no process here, and its live temporary file was removed
    # mid-write; one left a day ago by a writer killed there goes
    from prunefx.graph.whole_files import STALE_SECONDS, write_whole, writer_tag

    other_host = "0" * 8 if not writer_tag().startswith("0" * 8) else "1" * 8
    live = tmp_path / f".out.{other_host}-999999999-0123abcd.partial"
    old = tmp_path / f".out.{other_host}-999999998-89abcdef.partial"
    for leftover in (live, old):
        leftover.write_bytes(b"half")
    day_ago = os.stat(old).st_mtime - STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    write_whole(tmp_path / "out", "whole")
    assert live.exists() and not old.exists()


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


@pytest.mark.parametrize("weights_beside", [False, True])
def test_quantize_static_leaves_the_source_folder_as_found(tmp_path, weights_beside, one_thread):
    """ONNX Runtime writes `NAME-inferred.onnx` beside the model it is given and deletes it after: beside the
    user's file it replaced and removed theirs. Oracle: the source folder's names and bytes before and after,
    and the quantized file, which must hold Q/DQ nodes."""
    source = export_onnx(_program(), tmp_path / "work" / "fp32.onnx").path
    if weights_beside:  # a model whose weights lie in a side file it names
        onnx.save_model(onnx.load(str(source)), str(source), save_as_external_data=True, location="fp32.weights",
                        size_threshold=0)
    (source.parent / "fp32-inferred.onnx").write_bytes(PREVIOUS)  # a file of the user's that ORT's name takes
    before = {path.name: path.read_bytes() for path in source.parent.iterdir()}
    quantized = quantize_static_file(source, tmp_path / "out" / "int8.onnx", _batches())
    assert {path.name: path.read_bytes() for path in source.parent.iterdir()} == before
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(quantized)).graph.node}


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_destination_that_is_no_file_is_refused_in_one_line_before_anything_is_written(tmp_path, kind):
    """A rename would put the file in place of a folder's entry, or of a device such as /dev/null."""
    destination = tmp_path / "out.onnx"
    if kind == "folder":
        destination.mkdir()
    else:
        os.mkfifo(destination)
    with pytest.raises(PrunefxError, match=f"cannot write {destination}: it is ") as refused:
        with replaced_whole(destination) as partial:
            partial.write_bytes(b"new")
    assert "\n" not in str(refused.value)
    assert [path.name for path in tmp_path.iterdir()] == ["out.onnx"] and not destination.is_file()


@pytest.mark.parametrize("name", ["report.json", "r" * 250 + ".json"])
def test_a_write_that_fails_names_the_callers_file_not_the_temporary_one(name):
    """/proc takes no new files (root or not). A name near the file system's limit is the caller's own, and its
    temporary name must not be what makes a write fail."""
    with pytest.raises(OSError) as refused:
        write_whole(Path("/proc") / name, "{}")
    assert refused.value.filename == f"/proc/{name}" and refused.value.errno != errno.ENAMETOOLONG


def test_a_file_named_near_the_limit_is_written(tmp_path):
    write_whole(tmp_path / ("r" * 250 + ".json"), "{}")
    assert [path.name for path in tmp_path.iterdir()] == ["r" * 250 + ".json"]


@pytest.mark.slow  # one ONNX export: about 3 s
def test_quantized_lowerings_are_all_written_or_none_when_one_destination_is_a_folder(tmp_path, one_thread):
    program = _program()
    quantize_int8(program, config={"calibration": [batch[0] for batch in _batches()], "method": "max"})
    good, folder = tmp_path / "good.onnx", tmp_path / "folder.onnx"
    good.write_bytes(PREVIOUS)
    folder.mkdir()
    with pytest.raises(PrunefxError, match="it is a folder"):
        export_quantized_lowerings(program, {good: "s8", folder: "u8"})
    assert good.read_bytes() == PREVIOUS and sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "good.onnx"]


def test_a_deployment_report_with_fields_json_cannot_hold_writes_nothing(tmp_path):
    written = write_deployment_report(_variants(), tmp_path, extra={"run": "A"})
    before = {path.name: path.read_bytes() for path in written.values()}
    for extra in ({"onnx": Path("model.onnx")}, {"threshold": float("nan")}):
        with pytest.raises(MeasurementError, match="cannot write a deployment report") as refused:
            write_deployment_report(_variants(), tmp_path, extra=extra)
        assert "\n" not in str(refused.value)
        assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_trtexecs_files_are_kept_all_together_or_not_at_all(tmp_path, file_size_limit):
    """One run's engine never beside another run's layer times: the copies replace the kept files only once all
    are made. The oracle: the kept files' contents, each tagged with its run."""
    run_a, run_b, kept = tmp_path / "a", tmp_path / "b", tmp_path / "kept"
    for run, tag in ((run_a, b"A"), (run_b, b"B")):
        run.mkdir()
        (run / "layers.json").write_bytes(tag)
        (run / "model.engine").write_bytes(tag * 4096)
    _keep_trtexec_files(run_a, kept)
    with file_size_limit(1024), pytest.raises(OSError):
        _keep_trtexec_files(run_b, kept)  # the engine's copy fails on a full disk, after the layers' is made
    assert {path.name: path.read_bytes()[:1] for path in kept.iterdir()} == {"layers.json": b"A", "model.engine": b"A"}


def _sync_fails_for(monkeypatch, name: str) -> None:
    """fsync of the temporary file of `name` fails as on a full disk with delayed allocation (ENOSPC)."""
    from prunefx.graph import whole_files
    real = whole_files.sync_file

    def sync(path: Path) -> None:
        if path.name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)
    monkeypatch.setattr(whole_files, "sync_file", sync)


def test_a_report_whose_last_file_fails_to_sync_replaces_none_of_the_previous_files(tmp_path, monkeypatch):
    """Every file of a report is synced before the first one replaces its namesake: the JSON's sync failing leaves
    the chart and the text as they were too (the oracle: their previous contents)."""
    folder = tmp_path / "report"
    written = write_deployment_report(_variants(), folder)
    for path in written.values():
        path.write_bytes(PREVIOUS)
    _sync_fails_for(monkeypatch, "report.json")
    with pytest.raises(OSError, match="No space left"):
        write_deployment_report(_variants(), folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == {path.name: PREVIOUS for path in written.values()}


def test_a_rename_failing_half_way_puts_back_the_files_already_replaced(tmp_path, monkeypatch):
    """The second of three renames fails (or an interrupt lands there): the first file gets its previous contents
    back, a file that did not exist before is not left, and no temporary or kept copy remains."""
    from prunefx.graph import whole_files
    first, second, third = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.json"
    first.write_bytes(PREVIOUS)
    second.write_bytes(PREVIOUS)
    real = os.replace

    def replace(source, target):
        if Path(target) == second:
            raise KeyboardInterrupt
        real(source, target)
    monkeypatch.setattr(whole_files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), whole_files.replaced_together([first, second, third]) as partials:
        for partial in partials:
            partial.write_bytes(b"new")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == {"a.onnx": PREVIOUS, "b.onnx": PREVIOUS}


def test_files_written_together_may_not_name_one_file_twice(tmp_path):
    from prunefx.graph import whole_files
    target = _previous_file(tmp_path / "runs")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(PrunefxError, match="twice at once"), whole_files.replaced_together([target, link]):
        pass
    assert target.read_bytes() == PREVIOUS and [path.name for path in target.parent.iterdir()] == ["out"]


def _ended_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess
    import sys
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_a_killed_writers_private_folder_goes_with_the_next_write_too(tmp_path):
    """quantize_static_file makes a folder named after its temporary file (its private copy of the source); a
    write killed outright left it, weights and all, past every later write."""
    killed = f".q.onnx.{_ended_pid()}-0123abcd.partial"
    (tmp_path / killed).write_bytes(b"half")
    (tmp_path / f"{killed}.x1y2").mkdir()
    (tmp_path / f"{killed}.x1y2" / "fp32.weights").write_bytes(b"weights")
    running = tmp_path / f".q.onnx.{os.getpid()}-89abcdef.partial.z9"
    running.mkdir()
    write_whole(tmp_path / "q.onnx", "whole")
    assert sorted(path.name for path in tmp_path.iterdir()) == [running.name, "q.onnx"]


def test_a_file_written_over_keeps_its_mode(tmp_path):
    """A private file (0600) written anew stays private; a new file gets the process's usual mode."""
    private = tmp_path / "model.onnx"
    private.write_bytes(b"old")
    private.chmod(0o600)
    write_whole(private, "new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / "fresh.onnx"
    write_whole(fresh, "new")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


def test_one_file_by_two_names_is_refused_in_a_write_of_files_together(tmp_path):
    """a/../b and a linked folder name one file: written together, the second would silently replace the first
    (one lowering under the other's name)."""
    from prunefx.graph.whole_files import replaced_together
    (tmp_path / "x").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "x")
    for other in (tmp_path / "x" / ".." / "a.onnx", tmp_path / "linked" / ".." / "x" / "a.onnx"):
        first = tmp_path / ("a.onnx" if ".." in other.parts[-2:] else "x/a.onnx")
        with pytest.raises(PrunefxError, match="twice at once"):
            with replaced_together([first, other]):
                pass
    assert sorted(path.name for path in tmp_path.iterdir()) == ["linked", "x"] and not any((tmp_path / "x").iterdir())


@pytest.mark.parametrize("writer", ["chart", "profile", "float16"])
def test_a_destination_ending_in_a_slash_is_refused_not_written_as_a_file(writer, tmp_path, one_thread):
    destination = f"{tmp_path}/out/"
    source = export_onnx(_program(), tmp_path / "fp32.onnx").path if writer == "float16" else None
    write = {"chart": lambda: write_chart(_variants(), destination),
             "profile": lambda: write_profile_json(LayerProfile([], 1, "tensorrt"), destination),
             "float16": lambda: lower_to_float16(source, destination)}[writer]
    with pytest.raises(PrunefxError, match="it names a folder"):
        write()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("blocking", ["file", "dangling link"])
def test_a_destination_under_a_file_or_a_link_to_nothing_is_one_line_naming_it(blocking, tmp_path, one_thread):
    from prunefx.passes.training.checkpoint import write_checkpoint
    part = tmp_path / "part"
    if blocking == "file":
        part.write_text("a file of the user's")
    else:
        part.symlink_to(tmp_path / "nowhere" / "folder")
    said = "not a folder" if blocking == "file" else "a link to nothing"
    with pytest.raises(PrunefxError, match=f"cannot write {part}/model.pt2: {part} is {said}"):
        _program().save(part / "model.pt2")
    with pytest.raises(PrunefxError, match=f"{part} is {said}"):
        write_checkpoint(part, _program(), {})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part"]
