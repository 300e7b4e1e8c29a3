"""FP16 lowering for strongly typed TensorRT: an FP16 graph with the float32 inputs and outputs kept.

A strongly typed engine (TensorRT >= 10, and every TensorRT 11 engine) runs each tensor in the type the ONNX
graph gives it, so FP16 must be in the file. The conversion is ONNX Runtime's own
`onnxruntime.transformers.float16.convert_float_to_float16`: initializers and tensor types become float16 over
float16's whole range, Cast nodes inside the graph cast to float16, an initializer read by both a float16 and a
kept-float32 operator is cast back for the latter, and Cast nodes stand at the borders of the operators left in
float32. What this module adds:
- the inputs and outputs stay float32 (`keep_io_types`), so callers feed and read the same tensors;
- numerically sensitive operators stay float32 (`KEEP_FLOAT32`): the normalisation statistics of LayerNorm /
  GroupNorm / InstanceNorm, Softmax, and the reductions and powers that spelled-out norms are made of; an
  FP16 sum of squares over hundreds of channels overflows or loses the small variances;
- Q/DQ files are refused: their precision is already explicit, and scales must stay float32;
- a kept-float32 result cast to float16 and straight back (on its way to an output) keeps its float32;
- the result is checked with types inferred (`full_check`) before it is written: a mistyped file is an error here,
  not at the engine build.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from prunefx.graph.whole_files import file_path, replaced_whole
from prunefx.runtime.errors import MeasurementError

# Operators kept in float32 (see the module docstring), on top of the converter's own block list.
KEEP_FLOAT32 = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "LogSoftmax",
                "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal", "Erf")


def _restore_float32_outputs(model: onnx.ModelProto) -> None:
    """A graph output the converter left float16 cast back, so the I/O types stay float32 whatever the converter
    does (ONNX Runtime's keeps them with keep_io_types, also behind kept-float32 operators)."""
    for output in model.graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        inner = f"{output.name}_float16"
        for node in model.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [output.name], to=onnx.TensorProto.FLOAT,
                                                      name=f"{output.name}_to_float32"))
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _drop_repeated_casts(model: onnx.ModelProto) -> None:
    """The converter casts a float16 value back to float32 once per kept-float32 reader, each time under the same
    name (two layer norms reading one merged zero bias): one Cast, and one record of its type, is kept."""
    seen: set[bytes] = set()
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        kept.append(node)
    _replace_nodes(model.graph, kept, {info.name: info for info in model.graph.value_info}.values())


def _drop_float16_round_trips(model: onnx.ModelProto) -> None:
    """A Cast to float16 read only by a Cast to float32 (a kept-float32 operator's result on its way to a graph output
    or to another kept-float32 operator) rounds to float16 for nothing: the second Cast reads the first's input."""
    graph = model.graph
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    returned = {output.name for output in graph.output}
    to_half = {node.output[0]: node for node in graph.node if _casts_to(node, onnx.TensorProto.FLOAT16)}
    dropped = set()
    for node in graph.node:
        first = to_half.get(node.input[0]) if _casts_to(node, onnx.TensorProto.FLOAT) else None
        if first is not None and readers[first.output[0]] == 1 and first.output[0] not in returned:
            node.input[0] = first.input[0]
            dropped.add(id(first))
    gone = {node.output[0] for node in graph.node if id(node) in dropped}
    _replace_nodes(graph, [node for node in graph.node if id(node) not in dropped],
                   [info for info in graph.value_info if info.name not in gone])


def _replace_nodes(graph: onnx.GraphProto, nodes, value_info) -> None:
    """The graph's nodes and recorded value types made `nodes` and `value_info` (copied before they are cleared)."""
    nodes, value_info = list(nodes), list(value_info)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def _casts_to(node: onnx.NodeProto, element_type: int) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and any(
        attribute.name == "to" and attribute.i == element_type for attribute in node.attribute)


def lower_to_float16(source: str | os.PathLike, target: str | os.PathLike, *,
                     keep_float32: tuple[str, ...] = KEEP_FLOAT32) -> Path:
    """Write the FP16 form of the ONNX file `source` to `target` (float32 inputs and outputs kept)."""
    from onnxruntime.transformers import float16  # ONNX Runtime's tools: imported only to lower
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        raise MeasurementError(f"{source} holds Q/DQ nodes: its precision is already explicit (INT8), "
                               "an FP16 lowering would change its scales")
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_float32))
    lowered = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    _restore_float32_outputs(lowered)
    _drop_repeated_casts(lowered)
    _drop_float16_round_trips(lowered)
    OnnxModel(lowered).topological_sort()  # the converter appends its Cast nodes after the nodes that read them
    try:
        onnx.checker.check_model(lowered, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise MeasurementError(f"the FP16 form of {source} is not a valid ONNX file: {error}") from None
    target = file_path(target)
    with replaced_whole(target) as partial:
        onnx.save_model(lowered, partial)
    return target
