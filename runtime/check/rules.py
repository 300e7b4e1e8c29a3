"""The rules of `prunefx check` (runtime/check/readiness.py documents what each one finds and why it matters).

Each rule reads a GraphIndex (producers, consumers, constants of one ONNX graph) and yields Findings; the
target (runtime/check/targets.py) decides which rules apply and with which numbers. Q/DQ placement follows
TensorRT's explicit-quantization rules: a layer runs INT8 when a DequantizeLinear feeds both its data and its
weight input (through shape-only operators such as Transpose, which TensorRT moves Q/DQ across).

The graph and its memoised walks are in runtime/check/graph_index.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from prunefx.runtime.check.findings import Finding
from prunefx.runtime.check.graph_index import LAYERS, GraphIndex
from prunefx.runtime.check.parser_limits import attribute_limits, type_limits
from prunefx.runtime.check.targets import DEFAULT_DOMAINS, TENSORRT_OWN_OPERATORS, Target
from prunefx.runtime.onnx.float16 import KEEP_FLOAT32


def _find(severity: str, rule: str, node: onnx.NodeProto, message: str) -> Finding:
    return Finding(severity=severity, rule=rule, node=node.name or node.output[0], op=node.op_type, message=message)


def unsupported_operators(index: GraphIndex, target: Target) -> Iterator[Finding]:
    yield from _opsets_outside(index, target)
    opset = _default_opset(index.model)
    # a function the file defines is imported from its body, whatever its domain (the parser's local functions)
    defined = {(function.domain, function.name) for function in index.model.functions}
    for node in index.nodes:
        if (node.domain, node.op_type) in defined or (target.tensorrt and
                                                      (node.domain, node.op_type) in TENSORRT_OWN_OPERATORS):
            continue
        if node.domain not in target.domains:
            yield _find("error", "unsupported-operator", node,
                        f"domain '{node.domain}' has no kernels on {target.name} (a plugin would be needed)")
        elif node.domain not in DEFAULT_DOMAINS:
            continue
        elif (problem := _not_an_onnx_operator(node.op_type, opset, target)) is not None:
            yield _find("error", "unsupported-operator", node, problem)
        elif node.op_type in target.unsupported:
            yield _find("error", "unsupported-operator", node, f"{target.name}'s ONNX parser does not support it")


def _opsets_outside(index: GraphIndex, target: Target) -> Iterator[Finding]:
    bounds = target.opset_bounds()
    if bounds is None:
        return
    low, high, reader = bounds
    for opset in index.model.opset_import:
        if opset.domain in DEFAULT_DOMAINS and not low <= opset.version <= high:
            # TensorRT's parser reads any opset (it warns below 7); its matrix documents 9 to the newest it knows
            severity = "warning" if target.tensorrt else "error"
            yield Finding(severity, "unsupported-operator", "-", "opset",
                          f"opset {opset.version} is outside the {low}-{high} that {reader}")


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((opset.version for opset in model.opset_import if opset.domain in DEFAULT_DOMAINS), None)


def _not_an_onnx_operator(op_type: str, opset: int | None, target: Target) -> str | None:
    """Why a default-domain operator is not one of ONNX's at `opset`, or None when it is (or cannot be told)."""
    if opset is None or opset > onnx.defs.onnx_opset_version():
        return None  # the installed onnx knows no operator of an opset newer than its own
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except (onnx.defs.SchemaError, TypeError):  # TypeError: a name that is not text (bytes not UTF-8) is none of ONNX's
        return f"not an ONNX operator at opset {opset}: {target.name} has no kernel for it"
    if schema.deprecated and not target.tensorrt:
        # ONNX Runtime refuses a deprecated operator; TensorRT's parser imports by name (unverified there)
        return f"deprecated in ONNX since opset {schema.since_version}: the file's opset {opset} has no such operator"
    return None


def missing_dequantize(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        if not index.is_int8_layer(node):
            continue
        for position, role in enumerate(("data", "weight")):
            if position >= len(node.input) or index.dequantized(node.input[position]) is None:
                yield _unpaired_dequantize(node, position, role, target)


def _unpaired_dequantize(node: onnx.NodeProto, position: int, role: str, target: Target) -> Finding:
    """Neither runtime refuses such a layer: TensorRT dequantizes the weight as it builds (its weight-only INT4
    kernels aside), ONNX Runtime fuses Q/DQ into an integer kernel only with both inputs dequantized."""
    unpaired = f"DequantizeLinear on one input but not on its {role} input (input {position})"
    return _find("warning", "qdq-missing-input", node, f"{unpaired}: {target.name} runs it in float, not INT8")


def zero_points(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = node.input[2] if len(node.input) > 2 else ""
        if not zero:
            if node.op_type == "QuantizeLinear":  # the parser takes INT8 where ONNX says UINT8
                yield _find("warning", "qdq-zero-point", node, "no zero point: ONNX makes its output UINT8, "
                                                               "TensorRT INT8, so the two runtimes' numbers differ")
            continue
        tensor = index.constants.get(zero)
        if tensor is None:
            yield _find("error", "qdq-zero-point", node, "its zero point is computed, not a constant")
        elif tensor.data_type not in target.quantized_types:
            kind = _type_name(tensor.data_type)
            yield _find("error", "qdq-zero-point", node, f"{kind} zero point: TensorRT quantizes to INT8 (or FP8)")
        elif np.any(index.array(zero) != 0):
            yield _find("error", "qdq-zero-point", node, "non-zero (asymmetric) zero point: TensorRT is symmetric")


def _type_name(data_type: int) -> str:
    """ONNX's name for an element type; the number for one ONNX does not define."""
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"element type {data_type}"


def dangling_quantizers(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        if node.op_type != "QuantizeLinear" or node.output[0] in index.outputs:
            continue
        following = index.consumers.get(node.output[0], [])
        others = sorted({other.op_type for other in following if other.op_type != "DequantizeLinear"})
        if not following or others:
            read_by = f"read by {', '.join(others)}" if others else "read by nothing"
            yield _find("error", "dangling-quantize", node,
                        f"not followed by a DequantizeLinear ({read_by}): TensorRT needs Q/DQ pairs")


def residual_adds(index: GraphIndex, target: Target) -> Iterator[Finding]:
    """An Add of two computed tensors, one from an INT8 convolution (through a BatchNormalization), with no
    DequantizeLinear on either input: the convolution cannot absorb the Add in INT8."""
    if not any(node.op_type == "QuantizeLinear" for node in index.nodes):
        return
    for node in index.nodes:
        if node.op_type != "Add" or any(name in index.constants for name in node.input):
            continue
        from_convolution = any(_int8_convolution(index, name) for name in node.input)
        if from_convolution and not any(index.producer.get(name, node).op_type == "DequantizeLinear"
                                        for name in node.input):
            yield _find("warning", "residual-add-without-qdq", node,
                        "residual Add after an INT8 convolution with no Q/DQ on its skip input: the Add cannot be "
                        "fused into the convolution and runs in float")


def _int8_convolution(index: GraphIndex, name: str) -> bool:
    node = index.producer.get(name)
    if node is not None and node.op_type == "BatchNormalization":
        node = index.producer.get(node.input[0])
    return node is not None and node.op_type in ("Conv", "ConvTranspose") and index.is_int8_layer(node)


def concat_scales(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        if node.op_type != "Concat" or len(node.input) < 2:
            continue
        found = [index.producer.get(name) for name in node.input]
        dequantizers = [d for d in found if d is not None and d.op_type == "DequantizeLinear" and len(d.input) > 1]
        if len(dequantizers) < len(found):
            continue
        scales = {float(np.asarray(index.value(d.input[1])).reshape(-1)[0]) for d in dequantizers
                  if index.value(d.input[1]) is not None and np.asarray(index.value(d.input[1])).size == 1}
        if len(scales) > 1:
            yield _find("warning", "concat-scales", node,
                        f"its {len(node.input)} dequantized inputs have {len(scales)} different scales: TensorRT "
                        "requantizes them before concatenating")


def channel_multiples(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        counts = _channels(index, node)
        if counts is None:
            continue
        out_channels, in_channels, depthwise = counts
        if depthwise:
            continue  # one channel per group: no tensor-core GEMM to fill
        precision = "int8" if index.is_int8_layer(node) else "float"
        multiple = target.multiples[precision]
        checked = []
        if out_channels % multiple and not index.reaches_output(node.output[0]):
            checked.append(f"{out_channels} output")
        if in_channels % multiple and index.origin(node.input[0]) not in index.inputs:
            checked.append(f"{in_channels} input")
        if checked:
            yield _find("warning", "channel-multiple", node,
                        f"{' and '.join(checked)} channels are not multiples of {multiple}, what {target.name}'s "
                        f"{precision.upper()} kernels want (they pad)")


def _channels(index: GraphIndex, node: onnx.NodeProto) -> tuple[int, int, bool] | None:
    """(output channels, input channels, depthwise) of a layer with a constant weight; None otherwise."""
    if node.op_type not in LAYERS or len(node.input) < 2:
        return None
    weight = index.value(node.input[1])
    if weight is None or weight.ndim < 2:
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        groups = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
        if node.op_type == "Conv":
            return weight.shape[0], weight.shape[1] * groups, groups > 1 and weight.shape[1] == 1
        return weight.shape[1] * groups, weight.shape[0], groups > 1 and weight.shape[1] == 1
    reduction = _reduction_axis(node, weight)
    return weight.shape[1 - reduction if weight.ndim == 2 else -1], weight.shape[reduction], False


def _reduction_axis(node: onnx.NodeProto, weight: np.ndarray) -> int:
    if node.op_type == "Gemm":
        return 1 if any(attr.name == "transB" and attr.i for attr in node.attribute) else 0
    if node.op_type == "MatMul":
        return weight.ndim - 2
    return 1  # Conv: [out, in, ...]


def dynamic_shapes(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for value in index.model.graph.input:
        if value.name not in index.inputs:
            continue
        dims = value.type.tensor_type.shape.dim
        # a dimension set to a number is fixed, 0 included (an empty input: empty_inputs' finding)
        dynamic = [dim.dim_param or "?" for dim in dims if not dim.HasField("dim_value")]
        if dynamic:
            yield Finding("warning", "dynamic-shape", value.name, "input",
                          f"dimensions {', '.join(dynamic)} are not fixed: the engine needs an optimization profile "
                          "(min/opt/max shapes)")


def empty_inputs(index: GraphIndex, target: Target) -> Iterator[Finding]:
    """A graph input with a dimension fixed at 0 or below: it holds no data, and nothing can be timed on it."""
    for value in index.model.graph.input:
        dims = value.type.tensor_type.shape.dim
        empty = [str(dim.dim_value) for dim in dims if dim.HasField("dim_value") and dim.dim_value <= 0]
        if value.name in index.inputs and empty:
            yield Finding("error", "empty-input", value.name, "input",
                          f"a dimension of {', '.join(empty)}: the input holds no data, so no runtime builds or "
                          "times it; export at a batch and size of at least 1")


def zero_pads_into_max_pools(index: GraphIndex, target: Target) -> Iterator[Finding]:
    """A constant Pad of zeros whose readers are MaxPools: ONNX Runtime's Pad fusion folds it into the pool's own
    padding, which is -inf (runtime/onnx/zero_pads_before_max_pools.py writes such a Pad safely)."""
    for node in index.nodes:
        if node.op_type != "Pad" or any(a.name == "mode" and a.s not in (b"", b"constant") for a in node.attribute):
            continue
        readers = index.consumers.get(node.output[0], [])
        value = node.input[2] if len(node.input) > 2 else ""
        zero = not value or (value in index.constants and not np.any(index.array(value)))
        if zero and readers and all(reader.op_type == "MaxPool" for reader in readers):
            yield _find("warning", "zero-pad-into-max-pool", node,
                        "ONNX Runtime's Pad fusion folds this zero padding into the MaxPool after it, which pads with "
                        "-inf: a window whose values are all negative no longer takes the 0 (disable it with "
                        "disabled_optimizers=['Pad_Fusion'], or export with prunefx, which writes the Pad safely)")


def sparse_eligible(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        if node.op_type not in LAYERS or len(node.input) < 2:
            continue
        weight = index.value(node.input[1])
        if weight is None or weight.ndim < 2 or weight.shape[_reduction_axis(node, weight)] % 4:
            continue
        if 2 * np.count_nonzero(weight) > weight.size:
            continue  # 2:4 zeroes at least half the weights: a dense layer is settled without regrouping it
        groups = np.moveaxis(weight, _reduction_axis(node, weight), -1).reshape(-1, 4)
        if np.all((groups != 0).sum(axis=1) <= 2) and np.any(groups):
            yield _find("info", "sparse-eligible", node, "weights are 2:4 along input channels: sparse tensor-core "
                                                         "kernels can run it (build with --sparse)")


def float32_in_float16_graph(index: GraphIndex, target: Target) -> Iterator[Finding]:
    """In an FP16 graph (a strongly typed build runs each tensor in its file type): layers still reading FP32,
    and the operators kept in FP32 on purpose (runtime/onnx/float16.KEEP_FLOAT32) as notes."""
    if not any(init.data_type == onnx.TensorProto.FLOAT16 for init in index.model.graph.initializer):
        return
    types = index.element_types()
    for node in index.nodes:
        if types.get(node.input[0] if node.input else "") != onnx.TensorProto.FLOAT:
            continue
        if node.op_type in KEEP_FLOAT32:
            yield _find("info", "float32-kept", node, "kept in FP32 on purpose (numerically sensitive)")
        elif node.op_type in LAYERS:
            yield _find("warning", "float32-layer", node, "reads FP32 in an FP16 graph: the strongly typed "
                                                          "engine runs it in FP32")


TENSORRT_RULES = (unsupported_operators, attribute_limits, type_limits, missing_dequantize, zero_points,
                  dangling_quantizers, residual_adds, concat_scales, channel_multiples, dynamic_shapes, empty_inputs,
                  sparse_eligible, float32_in_float16_graph)
ONNXRUNTIME_RULES = (unsupported_operators, missing_dequantize, residual_adds, concat_scales, channel_multiples,
                     empty_inputs, zero_pads_into_max_pools)


def run_rules(index: GraphIndex, target: Target) -> list[Finding]:
    rules = TENSORRT_RULES if target.tensorrt else ONNXRUNTIME_RULES
    return [finding for rule in rules for finding in rule(index, target)]
