"""runtime/ort/denormals.py: every ONNX Runtime run computes in its own session's subnormal mode, whatever
sessions the process made before, and the caller's thread is left in the mode it was in.

The oracle is IEEE arithmetic: 1e-20 * 1e-20 = 1e-40 is subnormal in float32, so a thread or session that
flushes computes 0 and one that does not computes 1e-40 (numpy's product on the caller's thread; ONNX Runtime's
Mul on the session's). Results are read as their bits: on a flushing thread, reading a subnormal as a float
gives 0 too."""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from prunefx.graph.channels.timed_layers import TimedLayer
from prunefx.runtime.ort.runners import onnx_runner
from prunefx.runtime.ort.session import OnnxRuntimeSession
from prunefx.runtime.tables import timers
from prunefx.runtime.tables.timers import OnnxRuntimeLayerTimer

TINY = np.full(4, 1e-20, np.float32)
PRODUCT_BITS = 71362  # float32(1e-20) ** 2 = 71362 * 2 ** -149, the subnormal nearest 1e-40


def caller_flushes() -> bool:
    return float((TINY * TINY)[0]) == 0.0


@pytest.fixture
def mul_onnx(tmp_path):
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Mul", ["x", "y"], ["z"])], "mul",
                              [value("x", TensorProto.FLOAT, [4]), value("y", TensorProto.FLOAT, [4])],
                              [value("z", TensorProto.FLOAT, [4])])
    path = tmp_path / "mul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture
def caller_mode():
    """Sets the calling thread's mode for a test and gives the worker back the mode it had."""
    found = caller_flushes()
    yield torch.set_flush_denormal
    torch.set_flush_denormal(found)
    assert caller_flushes() == found


def product_bits(path, flush: bool) -> int:
    # one intra-op thread: the caller's thread computes the Mul, the case ONNX Runtime leaves unset
    return int(OnnxRuntimeSession(path, threads=1, flush_denormals=flush).run(TINY, TINY)[0].view(np.uint32)[0])


def test_timing_sessions_flush_subnormal_floats_unless_told_not_to(mul_onnx, monkeypatch):
    """A timing session computes 0 (what a GPU does, and x86 without a many-times slower path); told to keep
    subnormals, by the environment or by its caller, it computes them."""
    monkeypatch.delenv("PRUNEFX_KEEP_DENORMALS", raising=False)
    flushing = onnx_runner(mul_onnx, [TINY, TINY], threads=1)
    assert flushing.session.flush_denormals and flushing()[0].view(np.uint32).max() == 0
    entry = "session.set_denormal_as_zero"
    assert flushing.session.session.get_session_options().get_session_config_entry(entry) == "1"
    monkeypatch.setenv("PRUNEFX_KEEP_DENORMALS", "1")
    for keeping in (onnx_runner(mul_onnx, [TINY, TINY], threads=1), onnx_runner(mul_onnx, [TINY, TINY],
                                                                                flush_denormals=False)):
        assert not keeping.session.flush_denormals
        assert keeping()[0].view(np.uint32).min() == PRODUCT_BITS
        with pytest.raises(Exception, match="does not have configuration"):  # the entry is not set at all
            keeping.session.session.get_session_options().get_session_config_entry(entry)


@pytest.mark.parametrize("caller_flushing", [False, True])
@pytest.mark.parametrize("order", [(True, False), (False, True)])
def test_each_run_computes_in_its_sessions_mode_and_leaves_the_caller_as_found(mul_onnx, caller_mode, caller_flushing,
                                                                               order):
    caller_mode(caller_flushing)
    products = {flush: product_bits(mul_onnx, flush) for flush in order}
    assert products == {True: 0, False: PRODUCT_BITS}
    assert caller_flushes() is caller_flushing


def test_a_processs_first_session_flushing_leaves_the_caller_as_found(mul_onnx):
    """ONNX Runtime sets the creating thread's mode from the first session of a process only: a fresh process
    makes a flushing session first, then computes on its own and runs a session that keeps subnormals."""
    script = ("import sys, numpy as np; from prunefx.runtime.ort.session import OnnxRuntimeSession as S\n"
              "t = np.full(4, 1e-20, np.float32); p = sys.argv[1]\n"
              "bits = lambda a: a.view(np.uint32)[0]\n"
              "flushed = bits(S(p, threads=1, flush_denormals=True).run(t, t)[0])\n"
              "own = bits(t * t)\n"
              "kept = bits(S(p, threads=1).run(t, t)[0])\n"
              "print(flushed, own, kept)")
    ran = subprocess.run([sys.executable, "-c", script, str(mul_onnx)], capture_output=True, text=True, check=True)
    assert [int(word) for word in ran.stdout.split()] == [0, PRODUCT_BITS, PRODUCT_BITS]


@pytest.fixture
def modes_seen(monkeypatch) -> list[bool]:
    """Whether the calling thread flushed subnormals at each of the layer timer's runs (one run each)."""
    seen = []

    def profile_once(model, feed, **_):  # the timer's profiled runs, one of them
        seen.append(caller_flushes())
        ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
        return 1.0

    monkeypatch.setattr(timers, "median_kernel_ms", profile_once)
    return seen


def test_the_layer_timer_times_flushing_and_leaves_the_caller_as_found(modes_seen, caller_mode):
    caller_mode(False)
    seen = modes_seen
    layer = TimedLayer("c", "conv2d", (1, 4, 5, 5), 4, True, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    OnnxRuntimeLayerTimer(warmup=1, runs=1)(layer)
    assert seen and all(seen)
    assert not caller_flushes()


def test_the_layer_timer_keeps_subnormals_where_whole_models_are_timed_so(monkeypatch, modes_seen, caller_mode):
    """PRUNEFX_KEEP_DENORMALS=1 times whole models keeping subnormals; a layer table then times its layers so too,
    and its settings (part of the cache's identity) say so, so the flushed table is not read for it."""
    caller_mode(False)
    seen = modes_seen
    flushing = OnnxRuntimeLayerTimer(warmup=1, runs=1)
    monkeypatch.setenv("PRUNEFX_KEEP_DENORMALS", "1")
    keeping = OnnxRuntimeLayerTimer(warmup=1, runs=1)
    keeping(TimedLayer("c", "conv2d", (1, 4, 5, 5), 4, True, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1))
    assert seen and not any(seen)
    assert keeping.settings != flushing.settings and "subnormals kept" in keeping.settings
