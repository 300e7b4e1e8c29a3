"""The lowering's folding of weight quantizers (runtime/onnx/qdq.py) on a file whose zero-point the exporter left
behind a Cast, as it did for TinyViT's 1000-class head: folded, and the file computes what it computed before
(the oracle: ONNX Runtime on the file as written)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from prunefx.runtime.onnx.qdq import fold_weight_quantizers


def _cast_zero_point_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 8)).astype(np.float32)
    scale = (np.abs(weight).max(axis=1) / 127).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "scale"),
                    numpy_helper.from_array(np.zeros(4, np.int32), "zero_int32")]
    nodes = [
        helper.make_node("Cast", ["zero_int32"], ["zero"], to=TensorProto.INT8),
        helper.make_node("QuantizeLinear", ["w", "scale", "zero"], ["w_q"], axis=0),
        helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w_dq"], axis=0),
        helper.make_node("Transpose", ["w_dq"], ["w_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_t"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cast_zero_point", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_zero_point_behind_a_cast_is_folded_and_the_file_computes_the_same():
    model, x = _cast_zero_point_model(), np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    expected = _run(model, x)
    assert fold_weight_quantizers(model) == 1
    assert [node.op_type for node in model.graph.node] == ["DequantizeLinear", "Transpose", "MatMul"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), expected)
