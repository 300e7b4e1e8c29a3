"""`prunefx bench FILE.onnx` feeds a file random inputs of the types it declares (uint8 images included), one
--input-shape per input for a file with several (comma-separated), and checks a given shape against the file's
fixed dims before any timing process starts (prunefx/bench_models.py). The files are written with onnx's own
helpers and the oracle reads them with onnx and onnxruntime directly."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunefx.bench_models import bench_model
from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.runtime import backends
from prunefx.runtime.backends.base import Settings
from prunefx.runtime.backends.ort import onnx_side_by_side
from prunefx.runtime.errors import MeasurementError

RUNS = ["--runs", "2", "--warmup", "0", "--threads", "1"]


def _save(tmp_path, name: str, inputs: list, nodes: list, initializers=()) -> str:
    graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return str(path)


def _integer_image(tmp_path, elem_type: int) -> str:
    """An image of `elem_type` cast to float, then a convolution."""
    weight = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT), helper.make_node("Conv", ["f", "w"], ["y"])]
    name = f"image_{TensorProto.DataType.Name(elem_type).lower()}"
    return _save(tmp_path, name, [helper.make_tensor_value_info("img", elem_type, [1, 3, 8, 8])], nodes, [weight])


def _two_inputs(tmp_path, batch) -> str:
    """x (float, N x 3 x 4 x 4) and ids (int64, N x 5): a sum of each, added (`batch` a name: dynamic)."""
    nodes = [helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0), helper.make_node("Cast", ["ids"], ["fi"],
                                                                                         to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["fi"], ["si"], keepdims=0), helper.make_node("Add", ["sx", "si"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 5])]
    return _save(tmp_path, f"two_{batch}", inputs, nodes)


def _declared(path: str) -> list[tuple[str, np.dtype]]:
    return [(value.name, helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
            for value in onnx.load(path).graph.input]


def _inputs(path: str, input_shape: str | None = None) -> list[np.ndarray]:
    args = argparse.Namespace(batch=None, weights=None, input_shape=input_shape, calibrate=None)
    model = bench_model(path, args, backends.get("ort"), None, "a")
    return [tensor.numpy() for tensor in model.inputs]


def _runs_in_onnxruntime(path: str, arrays: list[np.ndarray]) -> None:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    session.run(None, {arg.name: array for arg, array in zip(session.get_inputs(), arrays)})


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("elem_type", [TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16])
def test_an_integer_image_file_gets_random_inputs_of_its_own_type(tmp_path, capsys, elem_type):
    path = _integer_image(tmp_path, elem_type)
    (array,) = _inputs(path)
    want = helper.tensor_dtype_to_np_dtype(elem_type)
    assert array.dtype == want and array.shape == (1, 3, 8, 8)
    assert len(np.unique(array)) > 1  # random over the type's range, not a constant
    _runs_in_onnxruntime(path, [array])
    assert main(["bench", path, *RUNS]) == 0, capsys.readouterr().err
    assert "median" in capsys.readouterr().out


def test_a_uint8_image_spans_the_pixel_range(tmp_path):
    (array,) = _inputs(_integer_image(tmp_path, TensorProto.UINT8))
    assert array.min() < 64 and array.max() > 192


def test_each_input_of_a_dynamic_file_takes_its_own_shape_and_type(tmp_path, capsys):
    path = _two_inputs(tmp_path, "N")
    arrays = _inputs(path, "2x3x4x4,2x5")
    (_, x_type), (_, ids_type) = _declared(path)
    assert [(array.shape, array.dtype) for array in arrays] == [((2, 3, 4, 4), x_type), ((2, 5), ids_type)]
    _runs_in_onnxruntime(path, arrays)
    assert main(["bench", path, "--input-shape", "2x3x4x4,2x5", *RUNS]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out  # the shapes timed, named unasked
    assert ", 1 thread (" in out and ", inputs 2x3x4x4 float32, 2x5 int64, backend ort" in out
    assert main(["bench", path, "--input-shape", "2x3x4x4,2x5", *RUNS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == ["2x3x4x4 float32", "2x5 int64"] and "batch" not in report  # two inputs: no guess


def test_a_dynamic_file_with_one_shape_for_two_inputs_says_give_one_per_input(tmp_path, capsys):
    path = _two_inputs(tmp_path, "N")
    err = _one_line_error(capsys, ["bench", path, "--input-shape", "1x3x4x4", *RUNS])
    assert "'ids'" in err and "one shape per input separated by commas" in err
    err = _one_line_error(capsys, ["bench", path, "--input-shape", "1x3x4x4,1x5,1", *RUNS])
    assert "takes 2 input(s)" in err and "gives 3 shapes" in err


def test_a_shape_for_the_first_input_of_a_static_file_keeps_the_second(tmp_path):
    path = _two_inputs(tmp_path, 1)
    arrays = _inputs(path, "1x3x4x4")
    assert [(name, array.shape, array.dtype) for (name, _), array in zip(_declared(path), arrays)] == [
        ("x", (1, 3, 4, 4), np.float32), ("ids", (1, 5), np.int64)]
    _runs_in_onnxruntime(path, arrays)


def test_a_shape_a_static_file_refuses_is_one_line_before_any_timing_process(tmp_path, capsys):
    path = _integer_image(tmp_path, TensorProto.UINT8)
    err = _one_line_error(capsys, ["bench", path, "--input-shape", "1x3x4x4", "--vs", path, *RUNS])
    assert "'img' expects shape 1x3x8x8, got 1x3x4x4" in err and "timing round" not in err


def test_a_timing_round_names_a_shape_its_file_refuses_in_full(tmp_path):
    """A round's process reports ONNX Runtime's multi-line message by its first line, cut before the dims: it
    checks the shapes itself (runtime/measure/rounds.py)."""
    path = _integer_image(tmp_path, TensorProto.FLOAT)
    wrong = [np.zeros((1, 3, 4, 4), np.float32)]
    with pytest.raises(MeasurementError, match=r"'img' expects shape \(1, 3, 8, 8\), got \(1, 3, 4, 4\)"):
        onnx_side_by_side([(path, wrong), (path, wrong)], Settings(runs=2, warmup=0, threads=1, rounds=1))


def test_a_files_inputs_are_the_same_every_run_and_leave_the_callers_random_state(tmp_path):
    # drawn from torch's global generator before: a bench run moved its caller's random state
    import torch

    path = _integer_image(tmp_path, TensorProto.UINT8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _inputs(path)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(np.array_equal(a, b) for a, b in zip(first, _inputs(path)))


def _scaled(tmp_path, scale_shape) -> str:
    """y = x * s, x 1x4 and s of `scale_shape` ([]: a scalar; None: no declared shape)."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, scale_shape)]
    return _save(tmp_path, f"scaled_{scale_shape is None}", inputs, [helper.make_node("Mul", ["x", "s"], ["y"])])


def test_a_scalar_input_is_fed_as_a_scalar(tmp_path, capsys):
    path = _scaled(tmp_path, [])
    arrays = _inputs(path)
    assert [array.shape for array in arrays] == [(1, 4), ()]
    _runs_in_onnxruntime(path, arrays)
    assert main(["bench", path, *RUNS]) == 0, capsys.readouterr().err  # a scalar kept its rank on its way to the run
    assert ", inputs 1x4 float32, scalar float32, backend ort" in capsys.readouterr().out
    err = _one_line_error(capsys, ["bench", path, "--input-shape", "1x4,2", *RUNS])
    assert "'s' is a scalar: leave it out of --input-shape" in err


def test_an_input_without_a_declared_shape_takes_the_shape_given(tmp_path, capsys):
    path = _scaled(tmp_path, None)
    assert onnx.load(path).graph.input[1].type.tensor_type.HasField("shape") is False  # the case: no shape at all
    err = _one_line_error(capsys, ["bench", path, *RUNS])
    assert "input 's' has no declared shape: give --input-shape" in err
    arrays = _inputs(path, "1x4,1x4")
    assert [array.shape for array in arrays] == [(1, 4), (1, 4)]
    assert main(["bench", path, "--input-shape", "1x4,1x4", *RUNS]) == 0, capsys.readouterr().err
