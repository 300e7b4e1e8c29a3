"""runtime/onnx/float16.py: the FP16 lowering strongly typed TensorRT builds from (read back with `onnx`,
run with ONNX Runtime against the FP32 file)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.runtime import MeasurementError, OnnxRuntimeSession, export_onnx
from prunefx.runtime.onnx.float16 import lower_to_float16
from prunefx.runtime.tensorrt.plan import onnx_types

pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 8, 3), nn.LayerNorm(8), nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.norm(torch.relu(self.conv(x)).flatten(2).transpose(1, 2))
        return torch.softmax(self.head(tokens.mean(1)), dim=-1)


@pytest.mark.slow  # an ONNX export and two sessions: about 3 s
def test_fp16_lowering_keeps_float32_io_and_sensitive_ops(one_thread, tmp_path):
    torch.manual_seed(0)
    program = capture(Block().eval(), torch.randn(1, 3, 10, 10), name="block").eval()
    source = export_onnx(program, tmp_path / "fp32.onnx").path
    lowered = lower_to_float16(source, tmp_path / "fp16.onnx")
    model = onnx.load(str(lowered))
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] == [float32, float32]
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    inits = {init.name: init for init in model.graph.initializer}
    assert inits[conv.input[1]].data_type == float16 and onnx_types(lowered).float16
    types = {value.name: value.type.tensor_type.elem_type for value in
             [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization"):  # kept in float32 (statistics, exponentials)
            assert types.get(node.input[0], float32) == float32, node.op_type
    x = torch.randn(1, 3, 10, 10)
    want = OnnxRuntimeSession(source, threads=1).run(x)[0]
    got = OnnxRuntimeSession(lowered, threads=1).run(x)[0]
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


def test_qdq_files_are_not_lowered(tmp_path):
    node = onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.INT8, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor("s", onnx.TensorProto.FLOAT, [], [0.5])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "qdq.onnx")
    with pytest.raises(MeasurementError, match="holds Q/DQ nodes"):
        lower_to_float16(tmp_path / "qdq.onnx", tmp_path / "out.onnx")
