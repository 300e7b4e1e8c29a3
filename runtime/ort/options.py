"""The ONNX Runtime session settings prunefx times with, with nothing imported but onnxruntime.

runtime/ort/session.py builds its sessions from here, and so does a timing round in a fresh process
(runtime/measure/rounds.py), which loads this file by its path so as not to import torch through the prunefx
package: both sides of a speed-up then run with exactly the same settings, wherever they were timed.
"""

from __future__ import annotations

import onnxruntime as ort

# ONNX Runtime logs warnings and errors itself, in colour over several lines, before raising; the
# exception says the same in one line, which is what prunefx reports. Errors only (3), and fatal ones.
LOG_SEVERITY_ERROR = 3


def session_options(threads: int, spinning: bool, flush_denormals: bool,
                    profile_prefix: str | None = None) -> ort.SessionOptions:
    """CPU settings: `threads` intra-op threads, one inter-op thread, sequential execution, every graph
    optimisation; workers spinning between operators unless `spinning=False`; subnormals flushed if asked;
    ONNX Runtime's profiler on, writing to `profile_prefix`_<time>.json, if given."""
    options = ort.SessionOptions()
    options.log_severity_level = LOG_SEVERITY_ERROR
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")
    # Threads spin between the operators of a run but stop when it ends: otherwise an idle session's
    # threads keep spinning and steal the cores of the session timed beside it, and side-by-side
    # speed-ups swing widely from one repeat to the next.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # For timing (runners.onnx_runner; see there why). The session's workers take it; the thread that calls
    # run takes it only from a process's first session: a round's fresh process (measure/rounds.py) creates
    # its timing sessions first, and in-process runs set that thread themselves (ort/denormals.py).
    if flush_denormals:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile_prefix is not None:
        options.enable_profiling = True  # noqa: V101 - read by ONNX Runtime, not by Python
        options.profile_file_prefix = profile_prefix  # noqa: V101
    return options


def cpu_session(path: str, threads: int, spinning: bool, flush_denormals: bool,
                profile_prefix: str | None = None) -> ort.InferenceSession:
    """An InferenceSession on the CPU execution provider with `session_options`."""
    return ort.InferenceSession(path, sess_options=session_options(threads, spinning, flush_denormals, profile_prefix),
                                providers=["CPUExecutionProvider"])
