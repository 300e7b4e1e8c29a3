"""Helpers on ONNX protos with Q/DQ pairs, shared by the INT8 lowerings (runtime/onnx/quantized.py for
TensorRT's S8 file, runtime/onnx/quantized_ort.py for ONNX Runtime's U8 file).

`fold_weight_quantizers` applies every weight quantizer once: QuantizeLinear(float initializer) becomes the
INT8 initializer it computes (round half to even, like QuantizeLinear and torch's fake quantization), read by
the DequantizeLinear. The rest are look-ups (initializers, producers, consumers) and bookkeeping.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if tensor in node.input]


def array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(initializers(model)[name])


def scalar(model: onnx.ModelProto, name: str) -> float | None:
    """The value of a one-element initializer `name`, else None (absent, or not a scalar)."""
    init = initializers(model).get(name)
    return float(numpy_helper.to_array(init).reshape(())) if init is not None and \
        numpy_helper.to_array(init).size == 1 else None


def set_initializer(model: onnx.ModelProto, name: str, values: np.ndarray) -> str:
    """Add (or replace) the initializer `name` with `values`; returns `name`."""
    tensor = numpy_helper.from_array(values, name)
    existing = initializers(model).get(name)
    if existing is not None:
        existing.CopyFrom(tensor)
    else:
        model.graph.initializer.append(tensor)
    return name


def axis_of(node: onnx.NodeProto) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "axis"), 1)


def broadcast_shape(ndim: int, axis: int, size: int) -> list[int]:
    """The shape that broadcasts a per-channel vector of `size` along `axis` of an `ndim`-dim tensor."""
    shape = [1] * ndim
    if size > 1:
        shape[axis] = size
    return shape


def quantize_values(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """QuantizeLinear's arithmetic: round half to even of x / scale, plus the zero-point, saturated."""
    if scale.ndim == 1 and scale.size > 1:
        shape = broadcast_shape(values.ndim, axis, scale.size)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    quantized = np.rint(values.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.int32)
    return np.clip(quantized, info.min, info.max).astype(zero_point.dtype)


def dequantized_weight(model: onnx.ModelProto, dequantize: onnx.NodeProto) -> np.ndarray:
    """(q - zero_point) * scale in float32, as DequantizeLinear computes it for the initializer it reads."""
    codes, scale, zero = (array(model, name) for name in dequantize.input[:3])
    shape = broadcast_shape(codes.ndim, axis_of(dequantize), scale.size)
    return ((codes.astype(np.int32) - zero.astype(np.int32).reshape(shape)).astype(np.float32)
            * scale.astype(np.float32).reshape(shape))


def fold_initializer_casts(model: onnx.ModelProto) -> None:
    """Replace each Cast of an initializer by the initializer it computes. The exporter casts every quantizer's
    int32 zero-point to INT8 and its optimizer folds most such casts, not all (TinyViT's 1000-class head kept
    one): the lowering reads zero-points as initializers."""
    inits = initializers(model)
    for node in list(model.graph.node):
        if node.op_type != "Cast" or node.input[0] not in inits:
            continue
        to = next(attribute.i for attribute in node.attribute if attribute.name == "to")
        values = numpy_helper.to_array(inits[node.input[0]]).astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        model.graph.node.remove(node)
    drop_unused_initializers(model)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(float initializer) by the INT8 initializer it computes; returns how many. Casts of
    initializers are folded first, so that every zero-point it reads is one."""
    fold_initializer_casts(model)
    inits = initializers(model)
    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        values, scale, zero_point = (numpy_helper.to_array(inits[name]) for name in node.input[:3])
        quantized = numpy_helper.from_array(quantize_values(values, scale, zero_point, axis_of(node)),
                                            f"{node.input[0]}_int8")
        model.graph.initializer.append(quantized)
        for consumer in consumers(model, node.output[0]):
            consumer.input[0] = quantized.name
        model.graph.node.remove(node)
        folded += 1
    drop_unused_initializers(model)
    return folded


def activation_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """QuantizeLinear nodes that read a computed tensor (not a weight initializer)."""
    inits = initializers(model)
    return [node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in inits]


def set_type(model: onnx.ModelProto, tensor: str, element_type: int) -> None:
    """The exporter recorded the quantized tensor's type in value_info: it must follow the zero-point's."""
    for value in model.graph.value_info:
        if value.name == tensor:
            value.type.tensor_type.elem_type = element_type


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def name_inputs_and_outputs(model: onnx.ModelProto) -> None:
    """input_0, ... and output_0, ... as runtime/onnx/export.py names them, every reference renamed."""
    renames = {value.name: f"input_{index}" for index, value in enumerate(model.graph.input)}
    renames.update({value.name: f"output_{index}" for index, value in enumerate(model.graph.output)})
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames[value.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
