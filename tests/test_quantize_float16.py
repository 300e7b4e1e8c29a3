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


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 8, 3), nn.LayerNorm(8), nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.norm(torch.relu(self.conv(x)).flatten(2).transpose(1, 2))
        return torch.softmax(self.head(tokens.mean(1)), dim=-1)


def _lowered(model: type[nn.Module], name: str, tmp_path):
    """(a seeded `model`'s Program on a 1x3x10x10 input, its float32 ONNX file, that file's FP16 form)."""
    torch.manual_seed(0)
    program = capture(model().eval(), torch.randn(1, 3, 10, 10), name=name).eval()
    source = export_onnx(program, tmp_path / "fp32.onnx").path
    return program, source, lower_to_float16(source, tmp_path / "fp16.onnx")


@pytest.mark.slow  # an ONNX export and two sessions: about 3 s
def test_fp16_lowering_keeps_float32_io_and_sensitive_ops(one_thread, tmp_path):
    _, source, lowered = _lowered(Block, "block", tmp_path)
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
    producer = {output: node for node in model.graph.node for output in node.output}
    last = producer[producer[model.graph.output[0].name].input[0]]
    assert last.op_type == "Softmax"  # its float32 result is returned, not rounded to float16 on the way
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


class Mixed(nn.Module):
    """What the old converter wrote wrong: a Cast to float32 inside the graph (a mask made a float), one merged
    constant read by a kept-float32 Pow and a float16 Mul, zero biases of two layer norms and a linear merged into one
    initializer (two kept-float32 readers and a float16 one), and a constant float16 holds but 1e4 does not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norms, self.linear = nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm(8)]), nn.Linear(8, 8)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("scale", torch.full((8,), 30000.0))

    def forward(self, x):
        y = self.conv(x)
        y = y * (y > 0).float() + y.pow(2) * 0.01 + y * 0.01
        tokens = y.flatten(2).transpose(1, 2)
        tokens = self.norms[1](self.linear(self.norms[0](tokens)))
        return torch.tanh(tokens) * self.scale


@pytest.mark.slow  # an ONNX export and two sessions: about 3 s
def test_fp16_lowering_of_casts_shared_constants_and_large_values(one_thread, tmp_path):
    program, _, lowered = _lowered(Mixed, "mixed", tmp_path)
    onnx.checker.check_model(onnx.load(str(lowered)), full_check=True)
    x = torch.randn(1, 3, 10, 10)
    want = program.module(x).detach().numpy()  # the oracle: torch in float32
    got = OnnxRuntimeSession(lowered, threads=1).run(x)[0]
    assert np.abs(got - want).max() <= 5e-3 * np.abs(want).max()  # 30000 kept (float16's 1e4 clamp: 67 % off)
