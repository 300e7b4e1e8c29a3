"""The default-domain opsets the installed ONNX Runtime loads, for `prunefx check --target ort`.

ONNX Runtime refuses a model stamped with an opset newer than the last ONNX release it was built with ("Opset N
is under development ... Current official support for domain ai.onnx is till opset M"), and its Python package
has no call that returns M. Loading a one-node Identity model is the exact question and a cheap one: a few
milliseconds a load, about ten loads by bisection, once per process. (ONNX Runtime 1.31.1 answers 26.)
Opsets below 7 still load, with a warning (its docs/Versioning.md guarantees 7 and later), so the range
starts at 1: an old opset is not an error.
"""

from __future__ import annotations

import functools

from onnx import TensorProto, helper

OLDEST_OPSET = 1
GUARANTEED_OPSET = 7    # every ONNX Runtime release loads opset 7 (docs/Versioning.md): bisection starts there
CEILING_OPSET = 1024    # far above any ONNX opset: where bisection stops looking


def version() -> str:
    import onnxruntime  # imported here: only `--target ort` needs it, not every command's start

    return onnxruntime.__version__


def loads(opset: int) -> bool:
    """Whether the installed ONNX Runtime loads a one-node model stamped with default-domain `opset`."""
    import onnxruntime

    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "opset_probe", value[:1], value[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the refusal is the answer, not something to print
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ONNX Runtime raises its own Fail/InvalidGraph types: any refusal counts
        return False
    return True


@functools.cache
def newest_opset() -> int | None:
    """The newest default-domain opset the installed ONNX Runtime loads; None when it loads not even opset 7."""
    if not loads(GUARANTEED_OPSET):
        return None
    low, high = GUARANTEED_OPSET, CEILING_OPSET  # loads(low) holds; loads(high) is assumed not to
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if loads(middle) else (low, middle)
    return low
