"""Bad output paths, failures part-way, full disks and interrupts: one line, the right exit status, no
partial output, and an existing output left exactly as it was (prunefx/output.py)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prunefx.cli import main
from prunefx.interrupts import record_interrupt
from prunefx.output_paths import MARK

pytestmark = pytest.mark.faults  # failures part-way, full disks, signals: the fault-injection lane

PRUNE = ["prune", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--macs", "0.5"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".partial" in p.name or "prunefx-probe" in p.name]


@pytest.mark.parametrize("output", ["{file}/out", "{file}/deeper/out", "/proc/prunefx-no/out"])
def test_unwritable_output_folders_are_one_line(tmp_path, capsys, output):
    regular = tmp_path / "file"
    regular.write_text("keep me")
    status = main([*PRUNE, "-o", output.format(file=regular)])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and "cannot write" in line
    assert regular.read_text() == "keep me"


def test_export_to_an_existing_folder_is_refused(tmp_path, capsys):
    status = main(["export", "prunefx:resnet20", "--input-shape", "1x1x28x28", "-o", str(tmp_path)])
    assert status == 2 and "is a folder" in _one_line(capsys.readouterr().err)


def test_a_failed_export_leaves_the_existing_file_untouched(tmp_path, capsys, monkeypatch):
    import prunefx.cli.commands.export as export_command

    target = tmp_path / "model.onnx"
    target.write_bytes(b"the good model")

    real = export_command.export_onnx

    def export_then_fail(program, path, **kwargs):
        real(program, path, **kwargs)  # the new file is written...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(export_command, "export_onnx", export_then_fail)
    status = main(["export", "prunefx:resnet20", "--input-shape", "1x1x28x28", "-o", str(target)])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and "No space left on device" in line
    assert target.read_bytes() == b"the good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("failure, status, words", [
    (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    (OSError(errno.EROFS, "Read-only file system"), 2, "Read-only file system"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_a_late_failure_of_prune_keeps_the_existing_output_folder(tmp_path, capsys, monkeypatch, failure, status,
                                                                   words):
    import prunefx.deliverable as deliverable  # prune's files are written by the shared writer

    output = tmp_path / "out"
    output.mkdir()
    (output / MARK).write_text("an earlier run's")
    (output / "model.pt2").write_bytes(b"earlier good archive")
    (output / "module.pt").write_bytes(b"earlier module")
    before = _snapshot(output)

    def parity_then_fail(program, path):
        assert Path(path).is_file()  # the new files are staged, not yet in place
        raise failure

    monkeypatch.setattr(deliverable, "check_parity", parity_then_fail)
    assert main([*PRUNE, "-o", str(output)]) == status
    assert words in _one_line(capsys.readouterr().err)
    assert _snapshot(output) == before
    assert _leftovers(tmp_path) == []


def test_a_successful_prune_replaces_the_previous_output_whole(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / MARK).write_text("an earlier run's")
    (output / "module.pt").write_text("the earlier run's module, which this run does not write")
    (output / "report.json").write_text("old")
    assert main([*PRUNE, "-o", str(output)]) == 0
    assert {p.name for p in output.iterdir()} == {MARK, "model.pt2", "model.onnx", "report.json"}
    assert (output / "report.json").read_text() != "old"
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_of_other_files_is_refused_before_work(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    started = time.perf_counter()
    assert main([*PRUNE, "-o", str(output)]) == 2
    assert "prunefx did not write (notes.txt)" in _one_line(capsys.readouterr().err)
    assert time.perf_counter() - started < 5  # before the model was built
    assert _snapshot(output) == {"notes.txt": b"mine"}


def test_an_interrupt_swallowed_by_a_library_still_ends_the_run(tmp_path, capsys, monkeypatch):
    import prunefx.deliverable as deliverable

    real = deliverable.check_parity

    def parity_while_ctrl_c_is_swallowed(program, path):
        record_interrupt(signal.SIGINT)  # the handler ran, but its KeyboardInterrupt was caught somewhere
        return real(program, path)

    monkeypatch.setattr(deliverable, "check_parity", parity_while_ctrl_c_is_swallowed)
    assert main([*PRUNE, "-o", str(tmp_path / "out")]) == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 256 KiB tmpfs: only where we may mount (root on Linux)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched ENOSPC cases cover the logic")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_really_full_disk_is_one_line_and_leaves_nothing(tiny_filesystem, capsys):
    status = main([*PRUNE, "-o", str(tiny_filesystem / "out")])
    assert status == 2 and "No space left on device" in _one_line(capsys.readouterr().err)
    assert list(tiny_filesystem.iterdir()) == []


def test_a_really_read_only_file_system_is_refused_before_work(tiny_filesystem, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    started = time.perf_counter()
    status = main([*PRUNE, "-o", str(tiny_filesystem / "out")])
    assert status == 2 and "Read-only file system" in _one_line(capsys.readouterr().err)
    assert time.perf_counter() - started < 5  # refused before the model was built and captured


def test_a_read_only_folder_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; the read-only file system case covers this")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main([*PRUNE, "-o", str(locked / "out")]) == 2
    assert "Permission denied" in _one_line(capsys.readouterr().err)


SLOW_FACTORY = """
import sys, time
import torch

class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        print("READY", flush=True)
        time.sleep(60)  # the signal arrives while the model is being captured
        return self.conv(x)

def factory():
    return Slow()
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum, status, words", [(signal.SIGTERM, 143, "terminated"),
                                                   (signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGHUP, 129, "hung up")])
def test_signals_to_a_real_process(tmp_path, signum, status, words):
    factory = tmp_path / "slow.py"
    factory.write_text(textwrap.dedent(SLOW_FACTORY))
    output = tmp_path / "out"
    # the signal as a terminal hands it: a test runner started in the background (SIGINT) or under `nohup`
    # (SIGHUP) passes it on ignored, and the CLI keeps an ignored signal ignored (as `nohup` wants), so the
    # child would sleep through it
    process = subprocess.Popen([sys.executable, "-m", "prunefx", "prune", f"{factory}:factory", "--input-shape",
                                "1x3x8x8", "--macs", "0.5", "-o", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    assert process.stdout.readline().strip() == "READY"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status
    assert words in _one_line(err)
    assert not output.exists() and _leftovers(tmp_path) == []


_TEARDOWN = """
import signal
from prunefx.cli import signal_handlers
GARBAGE = [[i] for i in range(3_000_000)]  # freed in the interpreter's teardown: a fraction of a second
signal_handlers.exit_on({signal.SIGTERM: signal.SIG_DFL}, 0)  # as after a run that exits 0
print("DONE", flush=True)
"""


@pytest.mark.slow
def test_a_signal_while_the_interpreter_tears_down_after_a_run_keeps_its_status(tmp_path):
    """Teardown puts Python's handlers back to the default action: a SIGTERM then killed the process with 143 and
    no line, after the run had written its output and said so."""
    script = tmp_path / "teardown.py"
    script.write_text(_TEARDOWN)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "DONE"
    time.sleep(0.05)
    process.terminate()
    assert process.wait(timeout=60) == 0


def test_a_model_file_interrupted_while_it_imports_leaves_no_half_run_module(tmp_path):
    from prunefx.models.user_files import _import_file

    model_file = tmp_path / "interrupted.py"
    model_file.write_text("raise KeyboardInterrupt\n")
    loaded = set(sys.modules)
    with pytest.raises(KeyboardInterrupt):
        _import_file(model_file)
    assert set(sys.modules) == loaded


def test_a_model_factory_calling_sys_exit_is_an_error(tmp_path, capsys):
    factory = tmp_path / "quits.py"
    factory.write_text("import sys\n\ndef factory():\n    sys.exit(0)\n")
    status = main(["inspect", f"{factory}:factory", "--input-shape", "1x3x8x8"])
    assert status == 2 and "called sys.exit(0)" in _one_line(capsys.readouterr().err)
