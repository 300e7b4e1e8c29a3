"""The sizes an ONNX file's graph asks for, checked before ONNX Runtime allocates them.

A few hundred bytes of ONNX can ask for gigabytes at run time (`ConstantOfShape` of [3, 2**29] is 6 GiB).
ONNX's shape inference, with constant propagation, computes every static size the graph will hold
without running it; a value over MAX_TENSOR_ELEMENTS (the bound every loaded `.pt2` is held to,
graph/safety/graph_bounds.py) refuses the file before a session exists. Sizes that depend on run-time data
cannot be known ahead: the run's own failure is then reported in one line. External data must lie
beside the model, as regular files (runtime/onnx/external.py), before ONNX Runtime opens any of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx

from prunefx.graph.errors import printable
from prunefx.graph.safety.tensor_bound import MAX_TENSOR_ELEMENTS
from prunefx.runtime.errors import OnnxSessionError
from prunefx.runtime.onnx.external import check_external_data


def check_value_sizes(path: Path) -> None:
    """Raise OnnxSessionError if any statically known value of the graph exceeds MAX_TENSOR_ELEMENTS, and
    ExternalDataError for external data outside the model's folder or not a regular file."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: ONNX Runtime's own loading says why, in one line
        return
    check_external_data(model, path)
    _weights_as_inputs(model.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # unreadable or not inferable: ONNX Runtime's own loading says why, in one line
        return
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            sizes = [d.dim_value for d in dims]
            if math.prod(sizes) > MAX_TENSOR_ELEMENTS:
                raise OnnxSessionError(
                    f"{printable(path.name)}: value '{printable(value.name)[:60]}' would be "
                    f"{'x'.join(map(str, sizes))}, more than the limit of 2**28 elements (refused before running)")


# Values that no static size can depend on: every shape-computing operator reads integer tensors.
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def _weights_as_inputs(graph: onnx.GraphProto) -> None:
    """Turn floating-point initializers into typed graph inputs, in place. Shape inference serialises the
    model it is given and hands a copy back: with the weights inside, that is three more copies of them for a
    check that reads only their shapes (kept as the inputs' types), never their values."""
    weights = [tensor for tensor in graph.initializer if tensor.data_type in _FLOAT_TYPES]
    if not weights:
        return
    inputs = {value.name for value in graph.input}
    graph.input.extend(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
                       for tensor in weights if tensor.name not in inputs)
    kept = [_copy(tensor) for tensor in graph.initializer if tensor.data_type not in _FLOAT_TYPES]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copied = onnx.TensorProto()
    copied.CopyFrom(tensor)  # a message of a repeated field is not to be used once the field is cleared
    return copied
