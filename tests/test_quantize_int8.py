"""passes/quantize_int8.py, graph/quantization.py and runtime/onnx_quantized.py: where the quantizers go,
the scales (recomputed here by hand), calibration methods, layers kept in float, the ONNX files read back
with `onnx` (not through prunefx), and parity between the fake-quantized Program and ONNX Runtime's INT8.

Parity tolerances, stated: the TensorRT (S8) file under ONNX Runtime within 1e-4 of the largest output
magnitude of the fake-quantized Program (both quantize with the same scales and round half to even, and the
pass snaps stored weights onto their INT8 grid; what remains is float summation order and the rare
activation that torch's x * (1/s) and ONNX's x / s round to neighbouring integers). The ONNX Runtime (U8)
file holds the same real values as the S8 file up to its INT32 biases (checked with graph optimisations
off, 1e-5), and within 1e-2 once ONNX Runtime's integer kernels requantize in their own arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from prunefx.graph import Program, PrunefxError, capture
from prunefx.graph.attributes import get_tensor
from prunefx.passes.config_checks import ConfigError
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.quantize_int8 import QuantizeInt8Config, check_config, quantize_int8
from prunefx.runtime import OnnxRuntimeSession
from prunefx.runtime.onnx_quantized import export_quantized_onnx

aten = torch.ops.aten
PARITY = 1e-4


class Net(nn.Module):
    """Conv + batch norm, a residual add whose input feeds two convolutions, a transposed convolution, a
    matmul between two activations and a linear head: every kind of layer the pass quantizes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.left, self.right = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.left(x) + self.right(x))
        x = self.up(x)                                  # [N, 4, 16, 16]
        tokens = x.flatten(2)                           # [N, 4, 256]
        attention = torch.matmul(tokens, tokens.transpose(1, 2)) / 256  # [N, 4, 4]
        return self.head(attention.mean(1))


def _net():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding changes the weights
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    return capture(model, torch.randn(2, 3, 8, 8), name="net").eval()


def _batches(count=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(count)]


def _layers(program, target):
    return [node for node in program.graph.nodes if node.op == "call_function" and node.target is target]


@pytest.fixture
def quantized(one_thread):
    program = _net()
    result = quantize_int8(program, config={"calibration": _batches(), "method": "max"})
    return program, result


def test_quantizers_sit_on_every_layer_input_and_weight(quantized):
    program, result = quantized
    assert result.modified and result.stats["folded_batch_norms"] == 1
    layers = [*_layers(program, aten.conv2d.default), *_layers(program, aten.conv_transpose2d.input),
              *_layers(program, aten.linear.default), *_layers(program, aten.matmul.default)]
    assert len(layers) == 6 and len(result.stats["quantized"]) == 7 and result.stats["skipped"] == []
    residual = _layers(program, aten.add.Tensor)[0]  # both inputs quantized: TensorRT fuses it into the conv
    assert [arg.target for arg in residual.args] == [aten.fake_quantize_per_tensor_affine.default] * 2
    for layer in layers:
        if layer.target is aten.matmul.default:  # two activations, each per tensor
            assert all(arg.target is aten.fake_quantize_per_tensor_affine.default for arg in layer.args[:2])
            continue
        assert layer.args[0].target is aten.fake_quantize_per_tensor_affine.default
        weight = layer.args[1]
        assert weight.target is aten.fake_quantize_per_channel_affine.default
        axis = 1 if layer.target is aten.conv_transpose2d.input else 0
        assert weight.args[3:] == (axis, -128, 127)
    left, right = _layers(program, aten.conv2d.default)[1:]
    assert left.args[0] is right.args[0]  # one activation read by two layers: one quantizer, one scale
    # stem input, the shared ReLU, the residual add's two inputs, the transposed conv's input, the matmul's
    # two operands, the head's input
    assert result.stats["activation_quantizers"] == 8 and result.stats["weight_quantizers"] == 5
    program.export()  # still a valid Program


def test_weight_scales_are_max_over_each_output_channel_divided_by_127(quantized):
    program, _ = quantized
    reference = _net()
    fold_batchnorm(reference, config={})
    weights = {node.name: get_tensor(reference.module, node.args[1].target) for node in reference.graph.nodes
               if node.op == "call_function" and node.target in (aten.conv2d.default, aten.conv_transpose2d.input,
                                                                 aten.linear.default)}
    for node in program.graph.nodes:
        if node.name not in weights:
            continue
        quantizer = node.args[1]
        scale = get_tensor(program.module, quantizer.args[1].target)
        original = weights[node.name].detach().numpy()
        axis = quantizer.args[3]
        others = tuple(dim for dim in range(original.ndim) if dim != axis)
        expected = np.abs(original).max(axis=others) / 127.0
        np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-6)
        # the stored weight is on its INT8 grid: every value is an integer multiple of its channel's scale
        stored = get_tensor(program.module, quantizer.args[0].target).detach().numpy()
        shape = [1] * stored.ndim
        shape[axis] = -1
        steps = stored / expected.reshape(shape)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
        assert np.abs(np.round(steps)).max() == 127


def test_calibration_methods_read_the_range_from_the_data(one_thread):
    batches = _batches()
    batches[1][0, 0, 0, 0] = 40.0  # one outlier: max keeps it, percentile and mse clip it
    largest = max(float(batch.abs().max()) for batch in batches)
    amax = {}
    for method in ("max", "percentile", "mse", "entropy"):
        result = quantize_int8(_net(), config={"calibration": batches, "method": method, "percentile": 99.0})
        first = result.stats["quantized"][0]
        assert first["layer"] == "conv2d" and result.stats["method"] == method
        amax[method] = first["input_amax"][0]
    assert amax["max"] == pytest.approx(largest)
    values = torch.cat([batch.abs().flatten() for batch in batches]).numpy()
    assert amax["percentile"] == pytest.approx(np.percentile(values, 99.0), rel=0.01)  # histogram bins: 1/2048
    assert amax["percentile"] < 5 and 0 < amax["mse"] <= amax["max"] and 0 < amax["entropy"] <= amax["max"]

    def squared_error(clip):  # of the data itself, quantized symmetric INT8 with that range
        scale = clip / 127
        return float(np.sum((values - np.clip(np.round(values / scale), -128, 127) * scale) ** 2))

    # mse's range has (up to its histogram's resolution) the least error of the three
    assert squared_error(amax["mse"]) <= 1.01 * min(squared_error(amax["max"]), squared_error(amax["percentile"]))


def test_layers_kept_in_float_by_name_operator_and_sensitivity(one_thread):
    program = _net()
    result = quantize_int8(program, config=QuantizeInt8Config(calibration=_batches(), skip_nodes=("linear",),
                                                              skip_operators=("matmul",), sensitive=1))
    reasons = {row["layer"]: row["reason"] for row in result.stats["skipped"]}
    assert reasons["linear"] == "kept in float by name (skip_nodes)"
    assert reasons["matmul"] == "kept in float by operator matmul (skip_operators)"
    sensitive = [row for row in result.stats["skipped"] if row["reason"].startswith("sensitive")]
    assert len(sensitive) == 1 and "rank 1 of 5 layers" in sensitive[0]["reason"]
    errors = [row["error"] for row in result.stats["quantized"]]
    assert len(errors) == 4 and all(0 < error <= sensitive[0]["error"] for error in errors)
    for name in ("linear", "matmul", sensitive[0]["layer"]):
        node = next(node for node in program.graph.nodes if node.name == name)
        assert not any(isinstance(arg, torch.fx.Node) and "fake_quantize" in str(arg.target) for arg in node.args)


def test_second_run_changes_nothing_and_bad_inputs_are_errors(quantized):
    program, _ = quantized
    again = quantize_int8(program, config={"calibration": _batches()})
    assert not again.modified and again.stats["already_quantized"]
    with pytest.raises(PrunefxError, match="calibration needs data"):
        quantize_int8(_net(), config={})
    with pytest.raises(PrunefxError, match="has input shapes"):
        quantize_int8(_net(), config={"calibration": [torch.randn(1, 3, 8, 8)]})
    no_layers = capture(nn.Sequential(nn.ReLU(), nn.AvgPool2d(2)).eval(), torch.randn(1, 3, 8, 8), name="pool")
    with pytest.raises(PrunefxError, match="model 'pool' has no quantizable layer"):
        quantize_int8(no_layers, config={"calibration": [torch.randn(1, 3, 8, 8)]})


@pytest.mark.parametrize("config, message", [
    ({"methd": "max"}, "unknown option 'methd'"),
    ({"method": "kl"}, "'method' must be one of max, percentile, mse"),
    ({"sensitive": -1}, "'sensitive' must be at least 0"),
    ({"skip_nodes": "conv2d"}, "'skip_nodes' must be a list of node names"),
    ({"percentile": 20}, "'percentile' must lie in"),
])
def test_check_config(config, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config)
    assert quantize_int8.check_config is check_config


# --- ONNX: the file read back with `onnx`, and ONNX Runtime's INT8 against the fake-quantized Program -----

def _producers(model):
    return {output: node for node in model.graph.node for output in node.output}


@pytest.mark.slow  # two ONNX exports and sessions: about 3 s
def test_tensorrt_file_has_int8_weights_behind_dequantize_and_runs_within_tolerance(quantized, tmp_path):
    program, _ = quantized
    exported = export_quantized_onnx(program, tmp_path / "s8.onnx", activations="s8")
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model)
    inits = {init.name: init for init in model.graph.initializer}
    producers = _producers(model)
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert sorted(node.op_type for node in layers) == ["Conv", "Conv", "Conv", "ConvTranspose", "Gemm", "MatMul"]
    for node in layers:
        inputs = [producers[name] for name in node.input[:2]]
        assert all(producer.op_type == "DequantizeLinear" for producer in inputs), node.name
        if node.op_type == "MatMul":
            continue
        weight = inits[inputs[1].input[0]]  # an INT8 initializer, one scale per output channel
        assert weight.data_type == onnx.TensorProto.INT8
        scale = numpy_helper.to_array(inits[inputs[1].input[1]])
        axis = next(attr.i for attr in inputs[1].attribute if attr.name == "axis")
        assert scale.shape == (weight.dims[axis],) and np.abs(numpy_helper.to_array(weight)).max() == 127
    activation_quantizers = [node for node in model.graph.node
                             if node.op_type == "QuantizeLinear" and node.input[0] not in inits]
    assert len(activation_quantizers) == exported.activation_pairs == 8  # one per Program quantizer
    for quantizer in activation_quantizers:  # symmetric INT8: TensorRT's form
        zero = inits[quantizer.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(zero).tolist() == 0
    x = _batches(1, seed=7)[0]
    with torch.no_grad():
        want = program(x).numpy()
    got = OnnxRuntimeSession(exported.path, threads=1).run(x)[0]
    assert np.abs(got - want).max() <= PARITY * np.abs(want).max()


def _unoptimized(path, x):
    """ONNX Runtime with graph optimisations off: the file's own operators, no integer fusions."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.slow  # two ONNX exports and three sessions: about 4 s
def test_onnx_runtime_file_has_u8_activations_integer_units_and_the_same_values(quantized, tmp_path):
    program, _ = quantized
    s8 = export_quantized_onnx(program, tmp_path / "s8.onnx", activations="s8").path
    u8 = export_quantized_onnx(program, tmp_path / "u8.onnx", activations="u8")
    model = onnx.load(str(u8.path))
    inits = {init.name: init for init in model.graph.initializer}
    producers = _producers(model)
    quantizers = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantizers) == 8 and all(inits[node.input[2]].data_type == onnx.TensorProto.UINT8 and
                                        numpy_helper.to_array(inits[node.input[2]]).tolist() == 128
                                        for node in quantizers)
    # integer units: the stem conv (-> ReLU -> quantizer), the two residual convs (-> the add's quantizers) and
    # the add (-> ReLU -> quantizer); the stem has an INT8 weight and an INT32 bias behind DQs, and its ReLU
    # became a Clip on the UINT8 codes after the quantizer
    assert u8.integer_units == 4
    stem = next(node for node in model.graph.node if node.op_type == "Conv")  # nodes are in topological order
    weight, bias = producers[stem.input[1]], producers[stem.input[2]]
    assert inits[weight.input[0]].data_type == onnx.TensorProto.INT8
    assert bias.op_type == "DequantizeLinear" and inits[bias.input[0]].data_type == onnx.TensorProto.INT32
    after = [node for node in model.graph.node if stem.output[0] in node.input]
    assert [node.op_type for node in after] == ["QuantizeLinear"]
    clip = next(node for node in model.graph.node if after[0].output[0] in node.input)
    assert clip.op_type == "Clip" and [numpy_helper.to_array(inits[name]).tolist() for name in clip.input[1:]] == \
        [128, 255]
    x = _batches(1, seed=3)[0]
    # the same real values as the TensorRT file, up to the INT32 bias rounding (<= s_x * s_w / 2)
    want = _unoptimized(s8, x)
    np.testing.assert_allclose(_unoptimized(u8.path, x), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # ONNX Runtime's integer kernels requantize in their own arithmetic: within a few output steps
    got = OnnxRuntimeSession(u8.path, threads=1).run(x)[0]
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


@pytest.mark.slow  # two ONNX exports and sessions: about 3 s
def test_u8u8_lowering_shifts_the_integer_units_weights_and_keeps_the_values(quantized, tmp_path):
    program, _ = quantized
    u8 = export_quantized_onnx(program, tmp_path / "u8.onnx", activations="u8").path
    u8u8 = export_quantized_onnx(program, tmp_path / "u8u8.onnx", activations="u8u8").path
    model = onnx.load(str(u8u8))
    inits = {init.name: init for init in model.graph.initializer}
    producers = _producers(model)
    weights = [producers[node.input[1]] for node in model.graph.node if node.op_type == "Conv"
               and node.input[1] in producers]
    assert len(weights) == 3  # the integer units' convolutions
    for dequantize in weights:
        codes, zero = (numpy_helper.to_array(inits[name]) for name in (dequantize.input[0], dequantize.input[2]))
        assert codes.dtype == np.uint8 and zero.dtype == np.uint8 and (zero == 128).all()
        assert codes.min() >= 1  # symmetric INT8 weights reach -127 at most: code 1
    x = _batches(1, seed=5)[0]
    want = _unoptimized(u8, x)
    np.testing.assert_allclose(_unoptimized(u8u8, x), want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_quantized_program_saves_and_loads(quantized, tmp_path):
    program, _ = quantized
    loaded = Program.load(program.save(tmp_path / "quantized.pt2"))
    quantizers = [node for node in loaded.graph.nodes if node.op == "call_function" and "fake_quantize" in str(node.target)]
    assert len(quantizers) == 8 + 5  # activations and weights, as written
    x = _batches(1, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), program(x))


def test_onnxruntime_lowering_follows_vnni():
    from prunefx.runtime.onnx_quantized import onnxruntime_lowering

    assert onnxruntime_lowering("flags : fpu avx2 avx512f avx512_vnni") == "u8"
    assert onnxruntime_lowering("flags : fpu avx2 avx_vnni") == "u8"
    assert onnxruntime_lowering("flags : fpu avx2 fma") == "u8u8"  # U8S8 saturates without VNNI
    assert onnxruntime_lowering() in ("u8", "u8u8")
