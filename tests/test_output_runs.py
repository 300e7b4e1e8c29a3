"""An output folder is all of one run or none (prunefx/output.py): a run's staging folder becomes `-o` by
one rename; a failure at any stage leaves the previous output as it was; a run killed outright (SIGKILL)
at any stage leaves `-o` holding one run's files, never a mix, and the next run clears what it left."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import prunefx.output as output_module
from prunefx.cli import main
from prunefx.output import staged_folder
from prunefx.output_paths import MARK, OutputError, check_output_folder

pytestmark = pytest.mark.faults

PREVIOUS = {MARK: b"an earlier run's", "a.txt": b"old a", "b.txt": b"old b, which the new run does not write"}
NEW_FILES = {"a.txt": b"new a", "c.txt": b"new c"}


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _previous(folder: Path) -> Path:
    folder.mkdir()
    for name, data in PREVIOUS.items():
        (folder / name).write_bytes(data)
    return folder


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p != folder)


def _is_new(snapshot: dict[str, bytes] | None) -> bool:
    return snapshot is not None and {k: v for k, v in snapshot.items() if k != MARK} == NEW_FILES \
        and MARK in snapshot


def test_a_run_replaces_the_previous_output_whole(tmp_path):
    output = _previous(tmp_path / "out")
    with staged_folder(output) as staging:
        for name, data in NEW_FILES.items():
            (staging / name).write_bytes(data)
    assert _is_new(_snapshot(output))  # b.txt of the earlier run is gone
    assert _siblings(output) == []


def test_every_file_of_a_folder_reaches_the_disk_before_it_is_published(tmp_path, monkeypatch):
    """Files a library wrote straight into the staging folder (torch's, ONNX's), in a sub-folder too, are synced
    before the rename that publishes them: the oracle is the inode of every file fsync was called on."""
    real_rename, real_fsync, synced, renamed = output_module.os.rename, os.fsync, set(), []

    def fsync(descriptor):
        synced.add(os.fstat(descriptor).st_ino)
        return real_fsync(descriptor)

    def rename(source, target):  # what was synced by the time the folder is published
        renamed.append(set(synced))
        return real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(output_module.os, "rename", rename)
    output = tmp_path / "out"
    with staged_folder(output) as staging:
        (staging / "model.onnx").write_bytes(b"onnx")
        (staging / "data").mkdir()
        (staging / "data" / "weights.bin").write_bytes(b"weights")
    files = [output / "model.onnx", output / "data" / "weights.bin", output / "data", output]
    assert renamed and {path.stat().st_ino for path in files} <= renamed[-1]


def _fail_rename(monkeypatch, call: int) -> None:
    """The `call`-th rename of the publishing fails, as a busy or vanished folder would make it."""
    real, calls = output_module.os.rename, []

    def rename(source, target):
        calls.append(target)
        if len(calls) == call:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real(source, target)

    monkeypatch.setattr(output_module.os, "rename", rename)


@pytest.mark.parametrize("stage", ["writing", "moving the old output aside", "renaming the new one"])
def test_a_failure_at_each_stage_leaves_the_previous_output(tmp_path, monkeypatch, stage):
    output = _previous(tmp_path / "out")
    if stage != "writing":
        _fail_rename(monkeypatch, 1 if stage.startswith("moving") else 2)
    with pytest.raises((OutputError, RuntimeError)):
        with staged_folder(output) as staging:
            (staging / "a.txt").write_bytes(NEW_FILES["a.txt"])
            if stage == "writing":
                raise RuntimeError("the run failed half-way")
            (staging / "c.txt").write_bytes(NEW_FILES["c.txt"])
    monkeypatch.undo()
    assert _snapshot(output) == PREVIOUS
    assert _siblings(output) == []


KILLED_RUN = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    import prunefx.output as output

    folder, stage = Path(sys.argv[1]), sys.argv[2]
    rename, rmtree = os.rename, shutil.rmtree

    def wait_for_the_kill():
        print("READY", flush=True)
        time.sleep(60)

    def renaming(source, target):
        rename(source, target)
        if stage == "between the renames" and ".old-" in str(target):
            wait_for_the_kill()

    def removing(path, *args, **kwargs):
        if stage == "removing the old output" and ".old-" in str(path):
            wait_for_the_kill()
        return rmtree(path, *args, **kwargs)

    output.os.rename, output.shutil.rmtree = renaming, removing
    with output.staged_folder(folder) as staging:
        (staging / "a.txt").write_bytes(b"new a")
        if stage == "writing":
            wait_for_the_kill()
        (staging / "c.txt").write_bytes(b"new c")
""")


@pytest.mark.parametrize("stage, left", [("writing", "previous"), ("between the renames", "nothing"),
                                         ("removing the old output", "new")])
def test_a_run_killed_at_each_stage_never_mixes_two_runs(tmp_path, stage, left):
    (tmp_path / "runs").mkdir()  # the output's folder holds nothing else: what the kill left is all there
    output = _previous(tmp_path / "runs" / "out")
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    process = subprocess.Popen([sys.executable, str(script), str(output), stage], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "READY", process.stderr.read()
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait(timeout=30)
    found = _snapshot(output)
    assert {"previous": found == PREVIOUS, "nothing": found is None, "new": _is_new(found)}[left]
    assert _siblings(output)  # the killed run left its staging folder or the old output behind

    check_output_folder(output)  # what the next run does first
    after = _snapshot(output)
    assert after == PREVIOUS if left != "new" else _is_new(after)  # one run's files, all of them
    assert _siblings(output) == []


PRUNE = [sys.executable, "-m", "prunefx", "prune", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--macs", "0.5"]


@pytest.mark.slow
def test_a_prune_killed_while_exporting_leaves_one_run_and_the_next_run_clears_it(tmp_path):
    """`prune --module` into OUT, then a `prune` killed (SIGKILL) while it exports, then a `prune` to the end:
    OUT holds the first run's files after the kill, the last run's alone afterwards (no module.pt)."""
    (tmp_path / "runs").mkdir()
    output = tmp_path / "runs" / "out"
    assert main([*PRUNE[3:], "--module", "-o", str(output)]) == 0  # the runs before and after, in this process
    first = _snapshot(output)
    assert "module.pt" in first
    process = subprocess.Popen([*PRUNE, "-o", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for line in process.stdout:
            if "exporting to ONNX" in line:
                break
    finally:
        process.kill()
        process.wait(timeout=30)
    assert _snapshot(output) == first  # killed mid-run: the first run's files, untouched

    assert main([*PRUNE[3:], "-o", str(output)]) == 0
    assert {MARK, "model.pt2", "model.onnx", "report.json"} == set(_snapshot(output))
    assert _siblings(output) == []


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler during the test (a pytest-xdist worker ignores SIGINT), the worker's after."""
    import signal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_while_the_output_is_replaced_lands_after_it(tmp_path, monkeypatch, python_ctrl_c):
    """SIGINT between moving the previous output aside and renaming the new one in: held until both renames are
    done, then raised; `-o` holds the new run (it vanished, the previous one left hidden) and says so."""
    import os
    import signal

    from prunefx.interrupts import clear_interrupt, published
    out = _previous(tmp_path / "out")
    real_rename = output_module.os.rename

    def interrupted_after_the_first(source, target):
        real_rename(source, target)
        if Path(source) == out:  # the previous output moved aside
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(output_module.os, "rename", interrupted_after_the_first)
    clear_interrupt()
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out) as staging:
            for name, data in NEW_FILES.items():
                (staging / name).write_bytes(data)
    snapshot = _snapshot(out)
    assert snapshot is not None and {name: snapshot[name] for name in NEW_FILES} == NEW_FILES
    assert _siblings(out) == [] and published() == [str(out)]


def test_a_run_that_publishes_nothing_removes_the_folders_it_created(tmp_path):
    """`-o a/b/out` failing: `a/` and `a/b/` were made for it and go with it; a folder that was there stays."""
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), staged_folder(out):
        raise RuntimeError("failed mid-run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError), staged_folder(out):
        raise RuntimeError("failed mid-run")
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []


def test_a_holding_handler_left_behind_acts_as_the_one_it_stood_for(python_ctrl_c):
    """A signal cutting short the restore of the handlers leaves some holding ones installed: once the block has
    ended they deliver as the handlers they replaced (here Python's Ctrl-C), never swallow a signal."""
    import signal

    from prunefx.graph.held_signals import signals_held
    with signals_held():
        holding = signal.getsignal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        holding(signal.SIGINT, None)



def test_another_hosts_staging_folder_is_left_until_a_day_old(tmp_path):
    # an output folder shared between hosts: a pid says nothing of another host's run, whose live staging
    # folder was removed as a killed run's
    from prunefx.graph.whole_files import STALE_SECONDS, writer_tag
    from prunefx.leftovers import clear_stale

    other_host = "0" * 8 if not writer_tag().startswith("0" * 8) else "1" * 8
    live = tmp_path / f".out.partial-{other_host}-999999999-0123abcd"
    old = tmp_path / f".out.partial-{other_host}-999999998-89abcdef"
    for folder in (live, old):
        folder.mkdir()
    day_ago = os.stat(old).st_mtime - STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    clear_stale(tmp_path / "out")
    assert live.exists() and not old.exists()


LATE_SIGNAL = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a pytest-xdist worker's children ignore it
import prunefx.cli as cli
cli._OWN_PROCESS = True  # as the `prunefx` command's entry point sets it
status = cli.main(sys.argv[1:])
print("ran", status, flush=True)
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the interpreter tears the finished command down
time.sleep(10)
print("survived the signal", flush=True)
"""


def test_a_signal_after_the_command_ended_exits_with_its_status_without_a_traceback(tmp_path):
    """The run has said its outcome (here a one-line refusal, status 2): a late Ctrl-C ends the process with
    that status at once, not as a signal death with a KeyboardInterrupt traceback and no outcome."""
    done = subprocess.run([sys.executable, "-c", LATE_SIGNAL, "prune", "nosuch:model", "--macs", "0.5", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert done.stdout.splitlines() == ["ran 2"]
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
