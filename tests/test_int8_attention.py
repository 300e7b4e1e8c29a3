"""INT8 attention: scaled_dot_product_attention spelled out exactly (graph/int8/attention.py), its two matmuls
quantized by quantize_int8 (Q, Kᵀ, V and the softmax output), both ONNX lowerings carrying the Q/DQ, and the
cases the rewrite leaves whole named in the statistics."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F

from prunefx.graph import capture, verify
from prunefx.graph.int8.attention import SDPA, decompose_attention
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import OnnxRuntimeSession
from prunefx.runtime.check.readiness import check_model
from prunefx.runtime.check.rules import GraphIndex
from prunefx.runtime.onnx.quantized import export_quantized_onnx

aten = torch.ops.aten


class SelfAttention(torch.nn.Module):
    def __init__(self, dim=32, heads=2, causal=False, scale=None):
        super().__init__()
        self.qkv, self.proj, self.heads, self.causal, self.scale = (torch.nn.Linear(dim, 3 * dim),
                                                                     torch.nn.Linear(dim, dim), heads, causal, scale)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


def _program(module, tokens=8):
    torch.manual_seed(0)
    return capture(module.eval(), torch.randn(2, tokens, 32), name="attention").eval()


def _calls(program, target):
    return [node for node in program.graph.nodes if node.op == "call_function" and node.target is target]


@pytest.mark.parametrize("scale", [None, 0.3])
def test_decomposition_is_exact_and_the_program_verifies(scale):
    program = _program(SelfAttention(scale=scale))
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        expected = program(x)
    assert decompose_attention(program) == (1, {})
    with torch.no_grad():
        actual = program(x)
    assert _calls(program, SDPA) == [] and len(_calls(program, aten.matmul.default)) == 2
    assert len(_calls(program, aten.softmax.int)) == 1
    assert torch.allclose(actual, expected, atol=1e-6, rtol=1e-5)
    verify(program)
    program.export()  # still a valid torch.export program


def test_causal_attention_is_kept_whole_with_its_reason():
    program = _program(SelfAttention(causal=True))
    rewritten, kept = decompose_attention(program)
    assert rewritten == 0 and list(kept.values()) == ["causal attention"] and len(_calls(program, SDPA)) == 1


@pytest.fixture
def quantized(one_thread):
    program = _program(SelfAttention())
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 8, 32, generator=generator) for _ in range(3)]
    result = quantize_int8(program, config={"calibration": batches, "method": "max"})
    return program, result, batches


def test_attention_matmuls_read_quantized_q_k_v_and_softmax(quantized):
    program, result, _ = quantized
    assert result.stats["attention_decomposed"] == 1
    rows = {row["layer"]: row for row in result.stats["quantized"]}
    matmuls = _calls(program, aten.matmul.default)
    assert all(node.name in rows for node in matmuls)
    scores, output = matmuls
    quantizer = aten.fake_quantize_per_tensor_affine.default
    assert [arg.target for arg in scores.args] == [quantizer, quantizer]  # Q and Kᵀ
    probabilities, value = output.args
    assert probabilities.target is quantizer and probabilities.args[0].target is aten.softmax.int
    assert value.target is quantizer
    # the softmax output lies in [0, 1]: its range is at most 1, so its scale at most 1/127
    assert 0 < probabilities.args[1] <= 1 / 127 + 1e-9


def test_attention_false_leaves_attention_float(one_thread):
    program = _program(SelfAttention())
    result = quantize_int8(program, config={"calibration": [torch.randn(2, 8, 32)], "attention": False})
    assert result.stats["attention_decomposed"] == 0 and len(_calls(program, SDPA)) == 1


@pytest.mark.slow  # three dynamo exports: about 20 s
def test_both_lowerings_carry_int8_attention_and_the_tensorrt_file_matches_the_program(quantized, tmp_path):
    program, _, batches = quantized
    for activations, target in (("s8", "trt11"), ("u8", "ort")):
        path = export_quantized_onnx(program, tmp_path / f"{activations}.onnx", activations=activations).path
        model = onnx.load(str(path))
        index = GraphIndex(model)
        matmuls = [node for node in model.graph.node if node.op_type == "MatMul"
                   and not any(name in index.constants for name in node.input)]
        activation_matmuls = [node for node in matmuls if index.value(node.input[1]) is None]
        if activations == "s8":  # Q·Kᵀ and P·V: a DequantizeLinear on both inputs, TensorRT's INT8 form
            assert len(activation_matmuls) == 2
            assert all(index.dequantized(name) for node in activation_matmuls for name in node.input[:2])
        assert check_model(model, target).count("error") == 0
    # The TensorRT file computes what the Program computes (the same Q/DQ, in float)
    x = batches[0]
    with torch.no_grad():
        expected = program(x)
    actual = torch.as_tensor(OnnxRuntimeSession(tmp_path / "s8.onnx", threads=1).run(x)[0])
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.slow  # a ViT quantized and exported: about 30 s
def test_int8_attention_runs_on_integers_in_onnx_runtime(one_thread, tmp_path):
    """The ViT of tests/test_quantize_int8.py with INT8 attention: besides its 25 linears, the 12 attention matmuls
    (Q·Kᵀ and P·V in 6 blocks) run as integer matmuls in the graph ONNX Runtime optimises."""
    import onnxruntime as ort

    from prunefx.models.small import vit_tiny_fmnist

    torch.manual_seed(0)
    program = capture(vit_tiny_fmnist().eval(), torch.randn(1, 1, 28, 28), name="vit_tiny_fmnist").eval()
    generator = torch.Generator().manual_seed(2)
    quantize_int8(program, config={"calibration": [torch.rand(1, 1, 28, 28, generator=generator) for _ in range(4)],
                                   "method": "max"})
    path = export_quantized_onnx(program, tmp_path / "vit.onnx", activations="u8s7").path
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    integer = {"QGemm", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul"}
    assert sum(node.op_type in integer for node in runs) == 25 + 12
