"""`prunefx check --target ort` against ONNX Runtime itself: an error exactly when the installed ONNX Runtime
refuses the file (an operator ONNX does not define at the file's opset, an opset newer than it loads), and no
error for a weight-only Q/DQ layer it runs in float."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from prunefx.runtime.check.readiness import check_model


def _model(op_type, opset, *, inputs=("x",), initializers=None):
    graph = helper.make_graph(
        [helper.make_node(op_type, list(inputs), ["y"], name="node")], "oracle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in (initializers or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _session(model, **options):
    settings = onnxruntime.SessionOptions()
    settings.log_severity_level = 3
    settings.intra_op_num_threads = 1
    for name, value in options.items():
        setattr(settings, name, value)
    return onnxruntime.InferenceSession(model.SerializeToString(), settings, providers=["CPUExecutionProvider"])


def _onnxruntime_loads(model) -> bool:
    """The oracle: whether ONNX Runtime builds a session and runs the file."""
    try:
        _session(model).run(None, {"x": np.ones((1, 1, 2, 2), np.float32)})
    except Exception:  # noqa: BLE001 - its Fail, InvalidGraph, NotImplemented: any refusal
        return False
    return True


def _errors(model, target="ort"):
    return [finding for finding in check_model(model, target).findings if finding.severity == "error"]


UPSAMPLE_SCALES = {"scales": np.array([1, 1, 2, 2], np.float32)}


@pytest.mark.parametrize("op_type, opset, initializers", [
    ("Foo", 17, None),                   # no ONNX operator of that name
    ("Gelu", 17, None), ("Gelu", 20, None),  # Gelu came in opset 20
    ("Upsample", 9, UPSAMPLE_SCALES), ("Upsample", 17, UPSAMPLE_SCALES),  # deprecated since opset 10
    ("Relu", 17, None),
])
def test_an_operator_is_an_error_on_ort_exactly_when_onnxruntime_refuses_it(op_type, opset, initializers):
    inputs = ("x", "scales") if initializers else ("x",)
    model = _model(op_type, opset, inputs=inputs, initializers=initializers)
    errors = _errors(model)
    assert bool(errors) == (not _onnxruntime_loads(model)), [finding.line() for finding in errors]
    assert all(finding.node == "node" and finding.rule == "unsupported-operator" for finding in errors)


def test_an_operator_onnx_does_not_define_is_an_error_on_tensorrt_too():
    [finding] = _errors(_model("Foo", 17), "trt10")
    assert (finding.node, finding.op) == ("node", "Foo") and "not an ONNX operator at opset 17" in finding.message


@pytest.mark.parametrize("opset", [6, 18, 21, 22, 23, 24, 25, 26, 27, 28, 30, 200])
def test_an_opset_is_an_error_on_ort_exactly_when_onnxruntime_refuses_it(opset):
    model = _model("Relu", opset)
    errors = [finding for finding in _errors(model) if finding.op == "opset"]
    assert bool(errors) == (not _onnxruntime_loads(model))
    if errors:  # the message names the file's opset and the newest one ONNX Runtime loads
        newest = max(version for version in range(7, opset) if _onnxruntime_loads(_model("Relu", version)))
        assert f"opset {opset} " in errors[0].message and f"-{newest} " in errors[0].message
        assert onnxruntime.__version__ in errors[0].message


def _weight_only_convolution(data_dequantized=False):
    """A Conv whose weight alone is INT8 behind a DequantizeLinear (optionally the data too, quantized)."""
    rng = np.random.default_rng(0)
    inits = {"codes": rng.integers(-127, 127, (32, 32, 3, 3)).astype(np.int8), "s": np.float32(0.01),
             "z": np.int8(0)}
    nodes = [helper.make_node("DequantizeLinear", ["codes", "s", "z"], ["w"], name="weight_dq")]
    data = "x"
    if data_dequantized:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="data_q"),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="data_dq")]
        data = "xd"
    nodes.append(helper.make_node("Conv", [data, "w"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "woq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])],
        initializer=[numpy_helper.from_array(np.asarray(value), name) for name, value in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model, inits


def test_a_weight_only_dequantized_convolution_is_a_warning_on_ort_which_runs_it_in_float(tmp_path):
    model, inits = _weight_only_convolution()
    optimized = tmp_path / "optimized.onnx"
    x = np.random.default_rng(1).standard_normal((1, 32, 16, 16)).astype(np.float32)
    [y] = _session(model, optimized_model_filepath=str(optimized)).run(None, {"x": x})
    weight = torch.from_numpy(inits["codes"].astype(np.float32) * inits["s"])
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), weight, padding=1).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)  # ONNX Runtime runs it, in float
    assert {node.op_type for node in onnx.load(str(optimized)).graph.node} & {"QLinearConv", "ConvInteger"} == set()
    found = check_model(model, "ort").findings
    assert [(f.severity, f.rule, f.node) for f in found] == [("warning", "qdq-missing-input", "conv")]
    assert "float" in found[0].message


def test_a_weight_only_dequantized_convolution_runs_in_float_on_tensorrt_a_warning():
    """TensorRT dequantizes the weight as it builds (weight-only INT4 is even its documented pattern): no error."""
    model, _ = _weight_only_convolution()
    assert _errors(model, "trt10") == []
    found = check_model(model, "trt10").findings
    assert [(f.severity, f.rule, f.node) for f in found] == [("warning", "qdq-missing-input", "conv")]
    assert _errors(_weight_only_convolution(data_dequantized=True)[0], "trt10") == []


def _one_node_file(tmp_path, name, node, inputs, output_type=TensorProto.FLOAT, *, initializers=(), opsets=(("", 17),),
                   ir_version=8):
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", output_type, None)], initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=ir_version)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path, model


LOAD_CASES = {  # what only a load finds: a kernel missing at a type, an undefined operator of ONNX Runtime's domains
    "float64_conv": lambda tmp: _one_node_file(
        tmp, "float64_conv", helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        [("x", TensorProto.DOUBLE, [1, 3, 8, 8])], TensorProto.DOUBLE,
        initializers=[numpy_helper.from_array(np.ones((4, 3, 3, 3)), "w")]),
    "int8_matmul": lambda tmp: _one_node_file(
        tmp, "int8_matmul", helper.make_node("MatMul", ["x", "x2"], ["y"], name="matmul"),
        [("x", TensorProto.INT8, [2, 2]), ("x2", TensorProto.INT8, [2, 2])], TensorProto.INT8),
    "float_plus_int": lambda tmp: _one_node_file(
        tmp, "float_plus_int", helper.make_node("Add", ["x", "c"], ["y"], name="add"), [("x", TensorProto.FLOAT, [1, 4])],
        initializers=[numpy_helper.from_array(np.ones((1, 4), np.int64), "c")]),
    "undefined_contrib_operator": lambda tmp: _one_node_file(
        tmp, "undefined_contrib_operator", helper.make_node("NoSuchOp", ["x"], ["y"], name="op", domain="com.microsoft"),
        [("x", TensorProto.FLOAT, [1, 4])], opsets=(("", 17), ("com.microsoft", 1))),
    "ir_version_99": lambda tmp: _one_node_file(
        tmp, "ir_version_99", helper.make_node("Relu", ["x"], ["y"], name="relu"), [("x", TensorProto.FLOAT, [1, 4])],
        ir_version=99),
    "relu": lambda tmp: _one_node_file(
        tmp, "relu", helper.make_node("Relu", ["x"], ["y"], name="relu"), [("x", TensorProto.FLOAT, [1, 4])]),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_check_on_ort_is_an_error_exactly_when_onnxruntime_does_not_load_the_file(tmp_path, capsys, case):
    from prunefx.cli import main

    path, model = LOAD_CASES[case](tmp_path)
    try:
        _session(model)
        loads = True
    except Exception:  # noqa: BLE001 - the oracle: any refusal of ONNX Runtime's own
        loads = False
    status = main(["check", str(path), "--target", "ort"])
    out = capsys.readouterr().out
    assert status == (0 if loads else 1), out
    assert ("onnxruntime-refuses" in out) == (not loads) and (loads or onnxruntime.__version__ in out)


@pytest.mark.parametrize("pad_value", [0.0, -np.inf])
def test_a_zero_pad_into_a_max_pool_is_a_warning_exactly_where_onnxruntime_fuses_it_wrong(pad_value):
    value = numpy_helper.from_array(np.array(pad_value, np.float32), "value")
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads", "value"], ["padded"], name="pad", mode="constant"),
         helper.make_node("MaxPool", ["padded"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])],
        "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[pads, value])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    x = -np.ones((1, 1, 6, 6), np.float32)  # every window's values negative: only padding can give a 0
    fused = _session(model).run(None, {"x": x})[0]
    unfused = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"],
                                           disabled_optimizers=["Pad_Fusion"]).run(None, {"x": x})[0]
    warned = [f for f in check_model(model, "ort").findings if f.rule == "zero-pad-into-max-pool"]
    assert bool(warned) == (not np.array_equal(fused, unfused)) == (pad_value == 0)
