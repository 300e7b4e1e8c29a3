"""`prunefx check`: each rule finds the violation planted in a small hostile ONNX file built with onnx.helper
(and stays quiet on the same file without it), prunefx's own INT8 files have no error, and the command prints
one line per finding, JSON with --json, exit 1 on an error and 2 on a bad file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime.check.readiness import check_model
from prunefx.runtime.onnx.quantized import export_quantized_onnx


def _model(nodes, initializers, *, inputs=(("x", [1, 32, 8, 8]),), outputs=("y",), opset=18):
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[numpy_helper.from_array(np.asarray(value), name) for name, value in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _scale(value=0.1):
    return np.float32(value)


def _int8_conv(name, source, output, out_channels=32, in_channels=32, *, data_dq=True, weight=None):
    """Q/DQ on the data (optional) and an INT8 weight behind a DequantizeLinear, then the Conv."""
    codes = weight if weight is not None else np.ones((out_channels, in_channels, 1, 1), np.int8)
    inits = {f"{name}_w": codes, f"{name}_ws": np.full(out_channels, 0.01, np.float32),
             f"{name}_wz": np.zeros(out_channels, np.int8), f"{name}_s": _scale(), f"{name}_z": np.int8(0)}
    nodes = [helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wq"],
                              axis=0, name=f"{name}_weight_dq")]
    data = source
    if data_dq:
        nodes += [helper.make_node("QuantizeLinear", [source, f"{name}_s", f"{name}_z"], [f"{name}_q"],
                                   name=f"{name}_q"),
                  helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                                   name=f"{name}_dq")]
        data = f"{name}_dq"
    nodes.append(helper.make_node("Conv", [data, f"{name}_wq"], [output], name=name))
    return nodes, inits


def _findings(model, target="trt10", rule=None):
    found = check_model(model, target).findings
    return [finding for finding in found if rule is None or finding.rule == rule]


def test_clean_int8_convolution_has_no_finding():
    nodes, inits = _int8_conv("conv", "x", "y")
    assert _findings(_model(nodes, inits)) == []


@pytest.mark.parametrize("op, domain", [("MatMulInteger", ""), ("Unique", ""), ("FancyPlugin", "com.example")])
def test_an_operator_the_parser_refuses_is_an_error(op, domain):
    model = _model([helper.make_node(op, ["x", "x"], ["y"], name="bad_node", domain=domain)], {})
    [finding] = _findings(model, rule="unsupported-operator")
    assert (finding.severity, finding.node, finding.op) == ("error", "bad_node", op)
    assert not _findings(model, "ort", "unsupported-operator") or domain == "com.example"


def test_an_opset_beyond_the_parser_s_matrix_is_a_warning_and_trt11_reads_up_to_25():
    """TensorRT's parser reads any opset (it warns below 7); the 10.1 matrix documents 9 to 20, TensorRT 11 25."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {}, opset=21)
    assert [f.severity for f in _findings(model, "trt10", "unsupported-operator")] == ["warning"]
    assert _findings(model, "trt11") == [] and _findings(model, "ort") == []


def test_an_int8_convolution_without_dequantize_on_its_data_input_runs_in_float_a_warning():
    """No parser refuses it: TensorRT dequantizes the weight as it builds and runs the layer in float."""
    nodes, inits = _int8_conv("conv", "x", "y", data_dq=False)
    [finding] = _findings(_model(nodes, inits))
    assert (finding.severity, finding.rule, finding.node) == ("warning", "qdq-missing-input", "conv")
    assert "data input" in finding.message and "float" in finding.message


@pytest.mark.parametrize("zero, message", [(np.uint8(0), "UINT8 zero point"), (np.int8(3), "asymmetric")])
def test_a_zero_point_that_is_not_symmetric_int8_is_an_error(zero, message):
    nodes, inits = _int8_conv("conv", "x", "y")
    inits["conv_z"] = zero
    found = _findings(_model(nodes, inits), rule="qdq-zero-point")
    assert found and all(f.severity == "error" for f in found) and message in found[0].message
    assert found[0].node == "conv_q"
    assert _findings(_model(nodes, inits), "ort") == []  # ONNX Runtime runs asymmetric UINT8 fine


def test_a_quantize_without_zero_point_is_int8_to_tensorrt_a_warning_not_a_uint8_tensor():
    """ONNX's default zero point is UINT8; TensorRT's parser takes INT8 and builds: the numbers differ."""
    nodes, inits = _int8_conv("conv", "x", "y")
    nodes[1].input.pop()  # the QuantizeLinear without its zero point
    nodes[2].input.pop()
    found = _findings(_model(nodes, inits))
    assert [(f.severity, f.rule, f.node) for f in found] == [("warning", "qdq-zero-point", "conv_q")]


def _single(op, inputs=("x",), outputs=("y",), inits=None, **attributes):
    return _model([helper.make_node(op, list(inputs), list(outputs), name="node", **attributes)], inits or {})


@pytest.mark.parametrize("model, said", [
    (_single("BatchNormalization", ["x", "g", "b", "m", "v"], inits={k: np.ones(32, np.float32) for k in "gbmv"},
             training_mode=1), "training_mode=1"),
    (_single("Resize", ["x", "", "scales"], inits={"scales": np.array([1, 1, 2, 2], np.float32)}, antialias=1,
             mode="linear"), "antialias=1"),
    (_single("Resize", ["x", "", "scales"], inits={"scales": np.array([1, 1, 2, 2], np.float32)},
             coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize"),
    (_single("MaxPool", outputs=["y", "indices"], kernel_shape=[2, 2]), "indices output"),
    (_single("MaxPool", kernel_shape=[2, 2], dilations=[2, 2]), "dilations"),
    (_single("LpPool", kernel_shape=[2, 2], p=3), "p=3"),
    (_single("ScatterND", ["x", "i", "u"], inits={"i": np.zeros((1, 1), np.int64), "u": np.ones((1, 32, 8, 8),
                                                                                              np.float32)},
             reduction="add"), "reduction add"),
    (_single("TopK", ["x", "k"], outputs=["y", "i"], inits={"k": np.array([5000], np.int64)}), "K=5000"),
    (_model([helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8, name="node"),
             helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT, name="back")], {}), "UINT8 tensor u inside"),
    (_model([helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT16, name="node"),
             helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT, name="back")], {}), "UINT16 tensor u"),
    (_model([helper.make_node("DequantizeLinear", ["b", "bs"], ["bias"], name="node"),
             helper.make_node("Add", ["x", "bias"], ["y"], name="add")],
            {"b": np.ones(8, np.int32), "bs": _scale()}), "DequantizeLinear of INT32"),
])
def test_what_tensorrt_s_parser_refuses_in_an_operator_it_supports_is_an_error(model, said):
    """Each an import check of onnx-tensorrt's 10.x parser (runtime/check/parser_limits.py): the build stops."""
    [finding] = _findings(model, rule="parser-limit")
    assert (finding.severity, finding.node) == ("error", "node") and said in finding.message
    assert _findings(model, "ort", "parser-limit") == []  # ONNX Runtime's rules are its own


def test_a_string_input_is_a_type_tensorrt_lacks():
    """An engine has no string tensors: the parser refuses the node that reads one from the network's inputs."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="node")], "strings",
                              [helper.make_tensor_value_info("x", TensorProto.STRING, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    [finding] = _findings(model, rule="parser-limit")
    assert finding.severity == "error" and "STRING tensor" in finding.message


def test_functions_the_file_defines_and_tensorrt_s_own_quantizers_are_operators_it_imports():
    function = helper.make_function("local", "MySwish", ["a"], ["b"],
                                    [helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"])],
                                    [helper.make_opsetid("", 18)])
    model = _model([helper.make_node("MySwish", ["x"], ["y"], name="swish", domain="local")], {})
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    assert _findings(model, "trt10") == []
    own = _model([helper.make_node("TRT_FP8QuantizeLinear", ["x", "s"], ["y"], name="q", domain="trt")],
                 {"s": _scale()})
    assert _findings(own, "trt10", "unsupported-operator") == []
    assert [f.node for f in _findings(own, "ort", "unsupported-operator")] == ["q"]


def test_trt11_reads_the_window_operators_and_fp4_the_10_1_parser_did_not():
    window = _model([helper.make_node("HannWindow", ["n"], ["y"], name="hann")], {"n": np.array(8, np.int64)})
    assert [f.node for f in _findings(window, "trt10", "unsupported-operator")] == ["hann"]
    assert _findings(window, "trt11", "unsupported-operator") == []


def test_a_quantize_not_followed_by_dequantize_is_an_error():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="lonely_q"),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT, name="cast")]
    [finding] = _findings(_model(nodes, {"s": _scale(), "z": np.int8(0)}), rule="dangling-quantize")
    assert (finding.severity, finding.node) == ("error", "lonely_q") and "Cast" in finding.message


@pytest.mark.parametrize("skip_quantized", [False, True])
def test_a_residual_add_needs_qdq_on_its_skip_input(skip_quantized):
    nodes, inits = _int8_conv("conv", "x", "c")
    skip = "x"
    if skip_quantized:
        nodes += [helper.make_node("QuantizeLinear", ["x", "conv_s", "conv_z"], ["xq"], name="skip_q"),
                  helper.make_node("DequantizeLinear", ["xq", "conv_s", "conv_z"], ["xdq"], name="skip_dq")]
        skip = "xdq"
    nodes.append(helper.make_node("Add", ["c", skip], ["y"], name="residual"))
    found = _findings(_model(nodes, inits), rule="residual-add-without-qdq")
    assert [(f.severity, f.node) for f in found] == ([] if skip_quantized else [("warning", "residual")])


@pytest.mark.parametrize("second_scale, expected", [(0.1, 0), (0.2, 1)])
def test_a_concat_of_inputs_with_different_scales_is_a_warning(second_scale, expected):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q1"], name="q1"),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z"], ["d1"], name="d1"),
             helper.make_node("QuantizeLinear", ["x", "s2", "z"], ["q2"], name="q2"),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["d2"], name="d2"),
             helper.make_node("Concat", ["d1", "d2"], ["y"], axis=1, name="cat")]
    model = _model(nodes, {"s1": _scale(0.1), "s2": _scale(second_scale), "z": np.int8(0)})
    found = _findings(model, rule="concat-scales")
    assert len(found) == expected and all(f.node == "cat" for f in found)


@pytest.mark.parametrize("out_channels, expected", [(32, 0), (24, 1)])
def test_channel_counts_below_the_int8_multiple_are_a_warning(out_channels, expected):
    nodes, inits = _int8_conv("conv", "x", "c", out_channels=out_channels)
    nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))  # not the graph output: width is free
    found = _findings(_model(nodes, inits), rule="channel-multiple")
    assert len(found) == expected
    if expected:
        assert found[0].node == "conv" and "24 output" in found[0].message and "32" in found[0].message


def test_a_symbolic_input_dimension_is_a_warning():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {}, inputs=(("x", ["batch", 32, 8, 8]),))
    [finding] = _findings(model, rule="dynamic-shape")
    assert finding.node == "x" and "batch" in finding.message


@pytest.mark.parametrize("target", ["trt10", "ort"])
def test_an_input_dimension_fixed_at_zero_is_an_error_not_a_dynamic_one(target):
    """A zero-sized batch is fixed, not symbolic (an unset dimension is): no runtime can time an empty input."""
    relu = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    [finding] = _findings(_model(relu, {}, inputs=(("x", [0, 3, 8, 8]),)), target, rule="empty-input")
    assert finding.severity == "error" and finding.node == "x" and "a dimension of 0" in finding.message
    assert _findings(_model(relu, {}, inputs=(("x", [0, 3, 8, 8]),)), target, rule="dynamic-shape") == []
    unset = _model(relu, {}, inputs=(("x", [None, 3, 8, 8]),))
    assert [f.rule for f in _findings(unset, target) if f.rule in ("empty-input", "dynamic-shape")] == (
        ["dynamic-shape"] if target == "trt10" else [])


def test_two_of_four_weights_along_input_channels_is_a_sparse_note():
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 100, size=(32, 32, 1, 1)).astype(np.int8)
    sparse = dense.copy()
    sparse.reshape(32, 8, 4)[:, :, :2] = 0  # two zeros in every group of 4 input channels: an oracle by construction
    for weight, expected in ((dense, 0), (sparse, 1)):
        nodes, inits = _int8_conv("conv", "x", "y", weight=weight)
        assert len(_findings(_model(nodes, inits), rule="sparse-eligible")) == expected


def test_a_float32_layer_in_a_float16_graph_is_a_warning():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="fp32_conv"),
             helper.make_node("Cast", ["c"], ["h"], to=TensorProto.FLOAT16, name="to_half"),
             helper.make_node("Mul", ["h", "half"], ["m"], name="half_mul"),
             helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT, name="to_float")]
    inits = {"w": np.ones((32, 32, 1, 1), np.float32), "half": np.float16(2)}
    [finding] = _findings(_model(nodes, inits), "trt11", "float32-layer")
    assert (finding.severity, finding.node) == ("warning", "fp32_conv")


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.body = torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.body(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.slow  # a quantized CNN exported twice by the dynamo exporter: about 35 s
def test_prunefx_int8_files_have_no_error(one_thread, tmp_path):
    torch.manual_seed(0)
    program = capture(_Residual().eval(), torch.randn(1, 1, 16, 16), name="residual").eval()
    quantize_int8(program, config={"calibration": [torch.rand(1, 1, 16, 16) for _ in range(2)], "method": "max"})
    for activations, targets in (("s8", ("trt10", "trt11", "orin")), ("u8", ("ort",))):
        path = export_quantized_onnx(program, tmp_path / f"{activations}.onnx", activations=activations).path
        for target in targets:
            errors = [f.line() for f in _findings(onnx.load(str(path)), target) if f.severity == "error"]
            assert errors == [], (activations, target)


def _hostile_file(tmp_path):
    nodes, inits = _int8_conv("conv", "x", "y")
    inits["conv_s"] = _scale(-0.1)  # a scale TensorRT's parser refuses
    path = tmp_path / "hostile.onnx"
    onnx.save(_model(nodes, inits), str(path))
    return path


def test_command_prints_one_line_per_finding_and_exits_1_on_an_error(tmp_path, capsys):
    assert main(["check", str(_hostile_file(tmp_path)), "--target", "trt11"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [["error", "parser-limit", "conv_q"],
                                                         ["error", "parser-limit", "conv_dq"]]
    assert "2 errors" in lines[-1] and lines[-2].startswith("operator support: ")


def test_command_json_and_a_clean_file_exits_0(tmp_path, capsys):
    nodes, inits = _int8_conv("conv", "x", "y")
    onnx.save(_model(nodes, inits), str(tmp_path / "clean.onnx"))
    assert main(["check", str(tmp_path / "clean.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["findings"] == [] and "onnx-tensorrt" in report["source"]


def test_the_command_reads_a_file_without_importing_torch(tmp_path):
    """An ONNX file is read with onnx alone: torch's seconds of imports were 95 % of a check."""
    nodes, inits = _int8_conv("conv", "x", "y")
    onnx.save(_model(nodes, inits), str(tmp_path / "clean.onnx"))
    code = (f"import sys; from prunefx.cli import main; status = main(['check', {str(tmp_path / 'clean.onnx')!r}]); "
            "print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("0 False"), (done.stdout[-300:], done.stderr[-300:])


@pytest.mark.parametrize("content", [b"not an onnx file at all", None])
def test_a_bad_file_is_one_line_exit_2(tmp_path, capsys, content):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunefx check: error:")


@pytest.mark.slow  # one dynamo export and a parity run: about 10 s
def test_delivered_model_onnx_carries_its_readiness(one_thread, tmp_path):
    from prunefx.deliverable import write_model

    torch.manual_seed(0)
    program = capture(_Residual().eval(), torch.randn(1, 1, 16, 16), name="residual").eval()
    delivered = write_model(tmp_path, program, opset=18)
    assert set(delivered["readiness"]) == {"trt11", "ort"}
    for target, entry in delivered["readiness"].items():
        expected = check_model(onnx.load(str(tmp_path / "model.onnx")), target)
        assert entry["file"] == "model.onnx" and entry["errors"] == expected.count("error") == 0
        assert entry["warnings"] == expected.count("warning") == len(entry["findings"])


@pytest.mark.parametrize("flags, warned", [("fpu sse avx2 fma", False), ("fpu avx2 avx512f", True)])
def test_onnxruntimes_channel_multiple_follows_the_cpu_as_its_budgets_do(tmp_path, flags, warned):
    """24 channels are a multiple of ONNX Runtime's 8 on an AVX2 CPU (a budget's widths there), not of AVX-512's 16:
    `check --target ort` warned on every such layer of a model pruned on an AVX2 machine."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])]
    onnx.save(_model(nodes, {"w": np.ones((24, 32, 1, 1), np.float32)}), tmp_path / "m.onnx")
    (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags : {flags}\n")
    script = ("import json, pathlib, sys\nimport prunefx.runtime.measure.width_multiple as cpu\n"
              "cpu.CPUINFO = pathlib.Path(sys.argv[1])\nfrom prunefx.runtime.check.readiness import check_file\n"
              "print(json.dumps([f.rule for f in check_file(sys.argv[2], 'ort').findings]))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cpuinfo"), str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, check=True)
    assert ("channel-multiple" in json.loads(done.stdout)) is warned


def test_the_last_line_of_check_counts_the_findings(tmp_path, capsys):
    """docs/tensorrt.md: a CI step reads the count with `tail -1`; the operator-support citation came after it."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])]
    onnx.save(_model(nodes, {"w": np.ones((20, 32, 1, 1), np.float32)}), tmp_path / "m.onnx")
    assert main(["check", str(tmp_path / "m.onnx"), "--target", "trt10"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("0 errors, 1 warnings, 0 notes"), last
