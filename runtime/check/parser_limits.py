"""What TensorRT's ONNX parser refuses in an operator it supports: an attribute value, or an element type.

Each entry is a check of onnx-tensorrt's importer or op checker (the 10.x parser, onnxOpCheckers.cpp and
onnxOpImporters.cpp, and docs/operators.md's per-operator notes); the parser stops at the first one, so an
engine build fails there. Element types: TensorRT has no INT16 or UINT16 tensors, UINT8 only at the network's
inputs and outputs, and dequantizes INT8, FP8, INT4 (and FP4 from 10.8) only, with positive scales.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from prunefx.runtime.check.findings import Finding
from prunefx.runtime.check.graph_index import GraphIndex
from prunefx.runtime.check.targets import Target

TOPK_MAX_K = 3840  # operators.md, TopK: "K input must be less than 3840"
_NO_TENSORRT_TYPE = {onnx.TensorProto.INT16: "INT16", onnx.TensorProto.UINT16: "UINT16",
                     onnx.TensorProto.STRING: "STRING", onnx.TensorProto.COMPLEX64: "COMPLEX64",
                     onnx.TensorProto.COMPLEX128: "COMPLEX128"}


def _attribute(node: onnx.NodeProto, name: str, default=None):
    found = next((attribute for attribute in node.attribute if attribute.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _refused(node: onnx.NodeProto, why: str) -> Finding:
    return Finding(severity="error", rule="parser-limit", node=node.name or node.output[0], op=node.op_type,
                   message=f"TensorRT's ONNX parser refuses it: {why}")


def _attribute_problem(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """Why the parser refuses this node's attributes (or a constant input that acts as one), or None."""
    op = node.op_type
    if op == "BatchNormalization" and _attribute(node, "training_mode", 0):
        return "training_mode=1 (export the model in eval mode)"
    if op == "Resize":
        if _attribute(node, "antialias", 0):
            return "antialias=1 (interpolate without antialias)"
        if _text(_attribute(node, "coordinate_transformation_mode", "half_pixel")) == "tf_crop_and_resize":
            return "coordinate_transformation_mode tf_crop_and_resize"
        if _text(_attribute(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
            return "keep_aspect_ratio_policy other than stretch"
    if op == "MaxPool":
        if len(node.output) > 1 and node.output[1]:
            return "the indices output of MaxPool"
        if any(step != 1 for step in _attribute(node, "dilations", []) or []):
            return "MaxPool with dilations other than 1"
    if op == "LpPool" and _attribute(node, "p", 2) not in (1, 2):
        return f"LpPool with p={_attribute(node, 'p')} (only 1 or 2)"
    if op == "ScatterND" and _text(_attribute(node, "reduction", "none")) != "none":
        return f"ScatterND with reduction {_text(_attribute(node, 'reduction'))}"
    if op == "TopK" and len(node.input) > 1:
        k = index.value(node.input[1])
        if k is not None and k.size == 1 and int(k.reshape(-1)[0]) >= TOPK_MAX_K:
            return f"TopK with K={int(k.reshape(-1)[0])} (K must be below {TOPK_MAX_K})"
    return None


def attribute_limits(index: GraphIndex, target: Target) -> Iterator[Finding]:
    for node in index.nodes:
        if node.domain in ("", "ai.onnx") and (why := _attribute_problem(node, index)) is not None:
            yield _refused(node, why)


def type_limits(index: GraphIndex, target: Target) -> Iterator[Finding]:
    """A tensor of a type TensorRT lacks, said once: at the node that makes it, or that reads it from the
    network's inputs or constants."""
    types = index.element_types()
    for node in index.nodes:
        problem = next((why for name in (*node.output, *(n for n in node.input if n not in index.producer))
                        if (why := _type_problem(name, types.get(name), node, index)) is not None), None)
        if problem is not None:
            yield _refused(node, problem)
        else:
            yield from _quantizer_limits(node, index, types, target)


def _without_zero_point(node: onnx.NodeProto | None) -> bool:
    """A QuantizeLinear without a zero point: UINT8 to ONNX, INT8 to the parser (rules.zero_points says so)."""
    return node is not None and node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2])


def _type_problem(name: str, kind: int | None, node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if kind in _NO_TENSORRT_TYPE:
        return f"{_NO_TENSORRT_TYPE[kind]} tensor {name} (TensorRT has no such type)"
    inside = name in node.output and name not in index.outputs
    if kind == onnx.TensorProto.UINT8 and inside and not _without_zero_point(node):
        return f"UINT8 tensor {name} inside the network (UINT8 only at its inputs and outputs)"
    return None


def _quantizer_limits(node: onnx.NodeProto, index: GraphIndex, types: dict[str, int],
                      target: Target) -> Iterator[Finding]:
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
        return
    if node.op_type == "DequantizeLinear" and not _without_zero_point(index.producer.get(node.input[0])):
        kind = types.get(node.input[0])
        if kind is not None and kind not in target.quantized_types:
            name = onnx.TensorProto.DataType.Name(kind) if kind in onnx.TensorProto.DataType.values() else kind
            yield _refused(node, f"a DequantizeLinear of {name} (it dequantizes INT8, FP8 and INT4)")
            return
    scale = index.value(node.input[1]) if node.input[1] in index.constants else None
    if scale is not None and np.any(scale <= 0):
        yield _refused(node, "a scale that is not positive")
