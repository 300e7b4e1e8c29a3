"""The sizes an ONNX file's graph asks for, checked before ONNX Runtime allocates them.

A few hundred bytes of ONNX can ask for gigabytes at run time (`ConstantOfShape` of [3, 2**29] is 6 GiB).
ONNX's shape inference, with constant propagation, computes every static size the graph will hold
without running it; a value over MAX_TENSOR_ELEMENTS (the bound every loaded `.pt2` is held to,
graph/safety/graph_bounds.py) refuses the file before a session exists. Sizes that depend on run-time data
cannot be known ahead: the run's own failure is then reported in one line. External data must lie
beside the model, as regular files (runtime/onnx_external.py), before ONNX Runtime opens any of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx

from prunefx.graph.errors import printable
from prunefx.graph.safety.graph_bounds import MAX_TENSOR_ELEMENTS
from prunefx.runtime.errors import OnnxSessionError
from prunefx.runtime.onnx_external import check_external_data


def check_value_sizes(path: Path) -> None:
    """Raise OnnxSessionError if any statically known value of the graph exceeds MAX_TENSOR_ELEMENTS, and
    ExternalDataError for external data outside the model's folder or not a regular file."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: ONNX Runtime's own loading says why, in one line
        return
    check_external_data(model, path)
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
