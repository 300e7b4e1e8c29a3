"""Hostile ONNX files at run time: a Loop of 2**62 iterations must end on SIGINT/SIGTERM, and a run that
fails (a ConstantOfShape of 6 GiB) is one line, without ONNX Runtime's own coloured log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from prunefx.cli import main
from prunefx.runtime.errors import OnnxSessionError
from prunefx.runtime.ort.session import OnnxRuntimeSession


def _endless_loop(path) -> None:
    """y = x + 1, 2**62 times (an ONNX Loop): nothing finishes it but an interruption."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["condition"], ["condition_out"]),
         helper.make_node("Add", ["value", "one"], ["value_out"])],
        "body",
        [helper.make_tensor_value_info("step", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition", TensorProto.BOOL, []),
         helper.make_tensor_value_info("value", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("value_out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [2 ** 62]),
         helper.make_tensor("keep_going", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


def _six_gib(path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 2 ** 29])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, as in a terminal. A shell that starts pytest in the background
    without job control hands it SIGINT ignored; Python then installs no handler, the signal never
    arrives, and the endless run below would never end."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_run_ends_on_sigint(tmp_path, python_sigint_handler):
    _endless_loop(tmp_path / "loop.onnx")
    session = OnnxRuntimeSession(tmp_path / "loop.onnx")
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        session.run(np.zeros(1, dtype=np.float32))
    assert time.perf_counter() - started < 10


def _add_one(path) -> None:
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


def test_the_wakeup_descriptor_is_the_callers_again_after_a_run(tmp_path, python_sigint_handler):
    """A run installs the process's signal wakeup descriptor only while it runs: free again after it (an event
    loop set up later can take it), and a caller's own left in place, its signals still written to it."""
    _add_one(tmp_path / "add.onnx")
    session = OnnxRuntimeSession(tmp_path / "add.onnx")
    assert signal.set_wakeup_fd(-1) == -1  # the oracle: nothing installed before
    assert session.run(np.zeros(1, dtype=np.float32))[0].tolist() == [1.0]
    assert signal.set_wakeup_fd(-1) == -1
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    try:
        signal.set_wakeup_fd(sender.fileno())
        session.run(np.zeros(1, dtype=np.float32))
        assert signal.set_wakeup_fd(sender.fileno()) == sender.fileno()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert receiver.recv(1) == bytes([signal.SIGINT])
    finally:
        signal.set_wakeup_fd(-1)
        receiver.close()
        sender.close()


def test_a_graph_allocating_gigabytes_is_refused_before_a_session_exists(tmp_path, capfd):
    _six_gib(tmp_path / "big.onnx")
    started = time.perf_counter()
    with pytest.raises(OnnxSessionError, match="3x536870912") as error:
        OnnxRuntimeSession(tmp_path / "big.onnx")
    assert "\n" not in str(error.value) and time.perf_counter() - started < 10
    assert capfd.readouterr().err.strip() == ""


def test_a_failing_run_is_one_line_without_runtime_logs(tmp_path, capfd):
    graph = helper.make_graph(  # a reshape that cannot fit: fails inside the run, where ORT logs errors
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              tmp_path / "bad.onnx")
    session = OnnxRuntimeSession(tmp_path / "bad.onnx")
    with pytest.raises(OnnxSessionError) as error:
        session.run(np.zeros(3, dtype=np.float32))
    assert "\n" not in str(error.value)
    assert capfd.readouterr().err.strip() == ""  # no coloured ONNX Runtime log line


def _running_with_a_sigterm_handler(pid: int) -> bool:
    """The process catches SIGTERM (its bit in /proc's SigCgt mask) and has started threads beside the main
    one (ONNX Runtime's session and the interrupt watcher; how many depends on the thread settings)."""
    status = open(f"/proc/{pid}/status").read()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1))) and len(os.listdir(f"/proc/{pid}/task")) >= 4


@pytest.mark.slow
def test_bench_ends_on_sigterm_with_143(tmp_path):
    _endless_loop(tmp_path / "loop.onnx")
    process = subprocess.Popen([sys.executable, "-m", "prunefx", "bench", str(tmp_path / "loop.onnx"), "--runs", "1",
                                "--warmup", "0"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240  # imports take a while on a loaded machine
    while time.monotonic() < deadline and not _running_with_a_sigterm_handler(process.pid):
        time.sleep(0.5)
    time.sleep(3)
    assert process.poll() is None
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143 and time.perf_counter() - started < 30
    assert len(err.strip().splitlines()) == 1 and "SIGTERM" in err


def test_bench_of_a_gigabyte_graph_is_one_line(tmp_path, capfd):
    _six_gib(tmp_path / "big.onnx")
    status = main(["bench", str(tmp_path / "big.onnx"), "--runs", "1", "--warmup", "0"])
    err = capfd.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and "\x1b[" not in err


def test_importing_the_runtime_leaves_onnxruntimes_log_level_as_the_caller_set_it(tmp_path):
    """ONNX Runtime's default log level is the process's: a library import must not turn a caller's INFO log
    off (its sessions with default options log at that level; the oracle is their log lines, counted)."""
    _add_one(tmp_path / "add.onnx")
    script = ("import sys, onnxruntime as ort\n"
              "ort.set_default_logger_severity(1)\n"
              "import prunefx.runtime\n"
              "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "add.onnx")], capture_output=True,
                         text=True, timeout=120, check=True)
    assert run.stderr.count("[I:onnxruntime") >= 1, run.stderr[-500:]
