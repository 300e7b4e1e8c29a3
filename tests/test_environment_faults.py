"""Faults of the environment named as such, in one line, never "internal error": a closed or full standard
output, a deleted working folder, a locale that cannot spell a path, out of memory (naming the step and the
memory), a full disk, an unwritable cache, a process limit (prunefx/environment_faults.py,
prunefx/standard_output.py, prunefx/working_folder.py)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap

import pytest

import prunefx.cli.commands.inspect as inspect_command
from prunefx.cli import main

pytestmark = pytest.mark.faults

INSPECT = ["inspect", "prunefx:resnet20", "--input-shape", "1x1x28x28"]


def _prunefx(*args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunefx", *args], capture_output=True, text=True, timeout=300,
                          **popen)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def test_a_reader_that_closed_the_pipe_ends_the_run_quietly_with_141():
    """`prunefx inspect ... | head -0`: the shell's convention for a closed pipe, 128 + SIGPIPE."""
    process = subprocess.Popen([sys.executable, "-m", "prunefx", *INSPECT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before prunefx writes a byte: torch alone takes seconds to import
    err = process.stderr.read()
    assert process.wait(timeout=300) == 141
    assert err == ""


def test_a_full_standard_output_is_one_line():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "prunefx", *INSPECT], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    assert done.returncode == 2
    assert "cannot write standard output: No space left on device" in _one_line(done.stderr)


def test_a_closed_standard_error_leaves_a_calibrated_prune_to_finish(tmp_path):
    """`2>&-`: Python has no sys.stderr; the progress bars of the obs scoring and compensation (drawn on a
    terminal only) and the CLI's stderr filter must not write to it."""
    done = _prunefx("prune", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--macs", "0.5", "--calibrate",
                    "fashion-mnist", "--calibration-images", "16", "-o", str(tmp_path / "out"),
                    preexec_fn=lambda: os.close(2))
    assert done.returncode == 0, done.stdout
    assert "compensated" in done.stdout and (tmp_path / "out" / "model.onnx").is_file()


CLOSED_STDERR_PRUNE = textwrap.dedent("""
    import sys
    import prunefx.graph.progress as progress
    progress.LINE_EVERY = 0.01  # a progress line at every step, from the bar's updates and from its thread
    from prunefx.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_reader_of_standard_error_gone_leaves_a_calibrated_prune_to_finish(tmp_path):
    """`prunefx -v prune ... 2>&1 >log | head -3`: the pipe's reader is gone before the first message. A write that
    raised inside a progress line's redraw left tqdm's lock held, and the run waited on it for ever."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", CLOSED_STDERR_PRUNE, "-v", "prune", "prunefx:resnet20",
                                "--input-shape", "1x1x28x28", "--macs", "0.5", "--calibrate", "fashion-mnist",
                                "--calibration-images", "16", "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stderr.close()  # before prunefx writes a byte: torch alone takes seconds to import
    try:
        said, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the prune hung once its standard error had no reader") from None
    assert process.returncode == 0, said
    assert "compensated" in said and (out / "model.onnx").is_file() and (out / "report.json").is_file()


def test_a_deleted_working_folder_is_one_line_before_torch(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_then_delete():
        os.chdir(gone)
        os.rmdir(gone)

    done = _prunefx(*INSPECT, preexec_fn=enter_then_delete)
    assert done.returncode == 2
    assert "the current folder no longer exists" in _one_line(done.stderr)


def test_a_path_the_locale_cannot_spell_is_one_line(tmp_path):
    output = tmp_path / "d\u00e9" / "model.onnx"
    environment = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-m", "prunefx", "export", "prunefx:resnet20", "--input-shape",
                           "1x1x28x28", "-o", os.fsencode(output)], capture_output=True, timeout=300,
                          env=environment)
    line = _one_line(done.stderr.decode("ascii", "backslashreplace"))
    assert done.returncode == 2 and "this locale's encoding (ascii)" in line and "LC_ALL=C.UTF-8" in line


OUT_OF_MEMORY = textwrap.dedent("""
    import resource, sys
    from prunefx.cli import main

    import prunefx.models, prunefx.cli.commands.inspect  # imported before the limit: the run itself runs out
    size = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmSize:"))) * 1024
    limit = size + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(main(["inspect", "prunefx:resnet20", "--input-shape", "1x1x16384x16384"]))  # a 1 GiB input
""")


def test_a_memory_limit_is_named_with_the_step_and_the_limit(tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(OUT_OF_MEMORY)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    line = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert line.startswith("prunefx inspect: error: ran out of memory in ") and "ulimit -v, is" in line


def test_a_path_of_bytes_that_are_no_utf8_is_one_line(tmp_path):
    output = os.fsencode(tmp_path) + b"/caf\xe9/model.onnx"  # Latin-1 bytes, under a UTF-8 locale
    environment = {**os.environ, "LC_ALL": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "prunefx", "export", "prunefx:resnet20", "--input-shape",
                           "1x1x28x28", "-o", output], capture_output=True, timeout=300, env=environment)
    line = _one_line(done.stderr.decode("utf-8", "backslashreplace"))
    assert done.returncode == 2 and "is not valid UTF-8 text" in line


def test_main_called_from_python_gives_the_streams_back_as_they_were(monkeypatch):
    # the command writes unspellable paths with escapes; a notebook's own streams keep their error mode
    streams = [io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict") for _ in range(2)]
    monkeypatch.setattr(sys, "stdout", streams[0])
    monkeypatch.setattr(sys, "stderr", streams[1])
    _inspect_raising(monkeypatch, KeyError("prunefx's own"))
    assert main(INSPECT) == 3
    assert [stream.errors for stream in streams] == ["strict", "strict"]
    assert sys.stdout is streams[0] and sys.stderr is streams[1]  # not the stand-ins of the run


def test_only_the_command_s_own_process_sets_onnx_runtime_s_log_level(monkeypatch, capsys):
    # the level is process-wide and has no getter: main() called from Python must leave its host's alone
    import onnxruntime

    import prunefx.cli as cli

    levels = []
    monkeypatch.setattr(onnxruntime, "set_default_logger_severity", levels.append)
    monkeypatch.delenv("PRUNEFX_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_OWN_PROCESS", False)
    assert main(INSPECT) == 0
    assert levels == []
    monkeypatch.setattr(sys, "argv", ["prunefx", *INSPECT])
    monkeypatch.setattr(cli.gc, "freeze", lambda: None)  # the test process's objects stay collectable
    assert cli.entry_point() == 0
    assert levels == [3]


def _inspect_raising(monkeypatch, error: BaseException) -> None:
    def failing(args):
        raise error

    monkeypatch.setattr(inspect_command, "run", failing)


@pytest.mark.parametrize("error, words", [
    (MemoryError(), "ran out of memory in test_environment_faults.py:failing; the "),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 1024 bytes"), "ran out of memory"),
    (OSError(errno.ENOSPC, "No space left on device", "/tmp/cache/x.bin"),
     "No space left on device (/tmp/cache/x.bin): free some space"),
    (PermissionError(errno.EACCES, "Permission denied", "/home/u/.cache/prunefx"),
     "Permission denied (/home/u/.cache/prunefx): a folder prunefx or a library writes to"),
    (OSError(errno.EROFS, "Read-only file system", "/home/u/.cache/torch"), "Read-only file system"),
    (BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
     "the system refused another process or thread"),
    (OSError(errno.EMFILE, "Too many open files"), "too many open files (the open-file limit, ulimit -n, is"),
    (RuntimeError("Too many open files. Communication with the workers is no longer possible."),
     "too many open files"),
])
def test_environment_faults_are_named_as_such(monkeypatch, capsys, error, words):
    # the tests' own folder counts as prunefx's here: the failing step is this file's `failing`
    monkeypatch.setattr("prunefx.environment_faults._our_folders", lambda: (os.path.dirname(__file__) + os.sep,))
    _inspect_raising(monkeypatch, error)
    assert main(INSPECT) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("prunefx inspect: error: ") and words in line, line


@pytest.mark.parametrize("debug", [None, "0", "false", "off", " No "])
def test_a_bug_is_still_an_internal_error(monkeypatch, capsys, debug):
    # PRUNEFX_DEBUG=0 and its kin keep the one line: only a "yes" raises the traceback
    if debug is None:
        monkeypatch.delenv("PRUNEFX_DEBUG", raising=False)
    else:
        monkeypatch.setenv("PRUNEFX_DEBUG", debug)
    _inspect_raising(monkeypatch, KeyError("prunefx's own"))
    assert main(INSPECT) == 3
    assert "internal error" in capsys.readouterr().err


def test_debug_shows_the_traceback_of_a_bug(monkeypatch):
    monkeypatch.setenv("PRUNEFX_DEBUG", "1")
    _inspect_raising(monkeypatch, KeyError("prunefx's own"))
    with pytest.raises(KeyError, match="prunefx's own"):
        main(INSPECT)


def test_onnx_runtime_out_of_memory_is_not_a_corrupt_file(monkeypatch, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    import prunefx.runtime.ort.session as session_module

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [result])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: "
                           "std::bad_alloc")

    monkeypatch.setattr(session_module, "cpu_session", out_of_memory)
    with pytest.raises(MemoryError, match="loading .*model.onnx into ONNX Runtime"):
        session_module.OnnxRuntimeSession(path, threads=1)
