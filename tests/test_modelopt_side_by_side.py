"""The Q/DQ counter of benchmarks/modelopt_side_by_side.py on a hand-built ONNX graph whose answer is known.

The counter is the benchmark's independent reader of prunefx's and ModelOpt's files (it shares no code with
`prunefx check`), so it is checked here against a graph written node by node: one INT8 convolution (Q/DQ on the
image, DQ on INT8 weights), a residual Add with a DQ on its skip input, an Add of the image and a constant (not an
activation Add), and a MatMul whose weight is float (not INT8), fed through a Reshape from a DequantizeLinear.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _counter():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its sibling `common`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("modelopt_side_by_side").OnnxCounts


def _graph() -> onnx.ModelProto:
    stored = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
              numpy_helper.from_array(np.array(0, np.int8), "z"),
              numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "w8"),
              numpy_helper.from_array(np.ones((4,), np.float32) * 0.01, "ws"),
              numpy_helper.from_array(np.ones((4,), np.int8) * 0, "wz"),
              numpy_helper.from_array(np.ones((4, 4), np.float32), "m"),
              numpy_helper.from_array(np.array([4, 4], np.int64), "shape"),
              numpy_helper.from_array(np.ones((1, 4, 2, 2), np.float32), "c")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["wd"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
        helper.make_node("Add", ["y", "xd"], ["r"], name="residual"),
        helper.make_node("Add", ["x", "c"], ["k"], name="constant_add"),
        helper.make_node("Reshape", ["xd", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "m"], ["out"], name="float_matmul"),
    ]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("r", "k", "out")]
    return helper.make_model(helper.make_graph(nodes, "g", [image], outputs, stored))


def test_the_counter_reads_a_known_graph():
    counts = _counter()(_graph()).as_dict()
    assert counts["layers"] == 2 and counts["int8_layers"] == 1 and counts["int8_by_op"] == {"Conv": 1}
    assert counts["float_layers"] == ["float_matmul"]
    assert (counts["activation_adds"], counts["adds_with_qdq"]) == (1, 1)
    assert (counts["activation_qdq_pairs"], counts["weight_quantizers"]) == (1, 1)
