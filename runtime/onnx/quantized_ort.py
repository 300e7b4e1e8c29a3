"""The ONNX Runtime (x86 CPU) lowering of a Q/DQ file: UINT8 activations, integer units, 7-bit weights where
the CPU's integer kernels would saturate.

Starts from the TensorRT form runtime/onnx/quantized.py exports and rewrites it for ONNX Runtime's U8S8
kernels, step by step (each exact except `float_convolution_inputs`). The steps and why: see
docs/algorithms.md, 'The ONNX Runtime lowering'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from prunefx.runtime.errors import OnnxExportError
from prunefx.runtime.onnx.integer_units import (
    S8_LEVELS,
    integer_matmuls,
    integer_units,
    is_integer_unit,
)
from prunefx.runtime.onnx.qdq import (
    activation_quantizers,
    array,
    axis_of,
    consumers,
    dequantized_weight,
    drop_unused_initializers,
    initializers,
    producers,
    scalar,
    set_initializer,
    set_type,
)

U8_LEVELS = 255
SIGNED_ZERO_POINT = 128
# operators whose output is >= 0 whatever their input; and those >= 0 when their (data) inputs are
NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs"}
FIRST_INPUT_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
                          "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
ALL_INPUTS_KEEP_SIGN = {"Concat", "Add", "Mul", "Max"}


@dataclass(frozen=True)
class OnnxRuntimeLowering:
    activation_pairs: int   # activation Q/DQ pairs, now UINT8
    unsigned: int           # of which non-negative tensors on [0, amax] with zero-point 0
    integer_units: int      # Convs / Adds in ONNX Runtime's DQ -> op -> Q form
    weight_levels: int      # the integer units' weights lie on +-weight_levels
    integer_matmuls: int = 0  # Gemms / MatMuls with a stored weight on INT8 inputs (float output allowed)
    float_inputs: int = 0     # float convolutions that now read their input unquantized


def lower_for_onnxruntime(model: onnx.ModelProto, weight_levels: int) -> OnnxRuntimeLowering:
    """Rewrite the S8 Q/DQ `model` in place for ONNX Runtime (see the module docstring)."""
    fold_weight_transposes(model)
    pairs, unsigned = activations_to_u8(model)
    quantize_before_max_pool(model)
    units = integer_units(model, weight_levels)
    matmuls = integer_matmuls(model, weight_levels)
    dequantize_float_layer_weights(model)
    float_inputs = float_convolution_inputs(model)
    return OnnxRuntimeLowering(pairs, unsigned, units, weight_levels, matmuls, float_inputs)


# ---- activations ----------------------------------------------------------------------------------

def non_negative(model: onnx.ModelProto, tensor: str, made_by: dict, memo: dict | None = None) -> bool:
    """Whether `tensor` is >= 0 for every input, read from the operators that compute it."""
    memo = {} if memo is None else memo
    if tensor not in memo:
        memo[tensor] = False  # until proven (and for cycles, which a valid graph has not)
        node = made_by.get(tensor)
        memo[tensor] = node is not None and _non_negative_node(model, node, made_by, memo)
    return memo[tensor]


def _non_negative_node(model, node, made_by, memo) -> bool:
    if node.op_type in NON_NEGATIVE:
        return True
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
        low = scalar(model, node.input[1])
        if low is not None and low >= 0:
            return True
    if node.op_type in FIRST_INPUT_KEEPS_SIGN or node.op_type == "Clip" or _convex_resize(node):
        return non_negative(model, node.input[0], made_by, memo)
    if node.op_type in ALL_INPUTS_KEEP_SIGN:
        return all(non_negative(model, name, made_by, memo) for name in node.input if name)
    return False


def _convex_resize(node: onnx.NodeProto) -> bool:
    """A Resize whose outputs are weighted means of its inputs with weights >= 0 (nearest, linear); cubic's
    weights go negative, and its overshoot takes a non-negative input below zero."""
    modes = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"]
    return node.op_type == "Resize" and (modes[0] if modes else b"nearest") in (b"nearest", b"linear")


def activations_to_u8(model: onnx.ModelProto) -> tuple[int, int]:
    """Every activation Q/DQ pair in UINT8: zero-point 0 and scale amax / 255 for non-negative tensors,
    zero-point 128 and the same scale otherwise. Returns (pairs, unsigned pairs)."""
    made_by, memo = producers(model), {}
    pairs = unsigned = 0
    for quantizer in activation_quantizers(model):
        scale = _symmetric_s8_scale(model, quantizer)
        positive = non_negative(model, quantizer.input[0], made_by, memo)
        new_scale, zero = (scale * S8_LEVELS / U8_LEVELS, 0) if positive else (scale, SIGNED_ZERO_POINT)
        stem = f"{quantizer.output[0]}_u8"
        scale_name = set_initializer(model, f"{stem}_scale", np.array(new_scale, np.float32))
        zero_name = set_initializer(model, f"{stem}_zero_point", np.array(zero, np.uint8))
        for node in [quantizer, *consumers(model, quantizer.output[0])]:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                raise OnnxExportError(f"activation quantizer {quantizer.name} feeds {node.op_type}, not a "
                                      "DequantizeLinear")
            node.input[1:3] = [scale_name, zero_name]
        set_type(model, quantizer.output[0], onnx.TensorProto.UINT8)
        pairs, unsigned = pairs + 1, unsigned + positive
    drop_unused_initializers(model)
    return pairs, unsigned


def _symmetric_s8_scale(model, quantizer) -> float:
    zero = array(model, quantizer.input[2])
    scale = scalar(model, quantizer.input[1])
    if zero.dtype != np.int8 or np.any(zero != 0) or scale is None:
        raise OnnxExportError(f"activation quantizer {quantizer.name} is not symmetric per-tensor INT8 (zero-point "
                              f"{zero.tolist()} of type {zero.dtype}): cannot lower it to U8")
    return scale


def quantize_before_max_pool(model: onnx.ModelProto) -> int:
    """x -> MaxPool -> Q  becomes  x -> Q -> MaxPool (on codes), where the pool feeds only Q. Returns how many."""
    made_by = producers(model)
    moved = 0
    for quantizer in activation_quantizers(model):
        pool = made_by.get(quantizer.input[0])
        if pool is None or pool.op_type != "MaxPool" or len(pool.output) != 1 or \
                len(consumers(model, pool.output[0])) != 1:
            continue
        codes, float_pooled = quantizer.output[0], pool.output[0]
        quantizer.input[0], quantizer.output[0] = pool.input[0], f"{codes}_before_pool"
        pool.input[0], pool.output[0] = quantizer.output[0], codes
        model.graph.node.remove(quantizer)
        model.graph.node.insert(list(model.graph.node).index(pool), quantizer)
        _drop_value_info(model, float_pooled)
        moved += 1
    return moved


# ---- weights ----------------------------------------------------------------------------------------

def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """DequantizeLinear(stored INT8 q) -> Transpose(perm)  becomes  DequantizeLinear(q transposed), with the
    per-channel axis at perm.index(axis): the same values, and no Transpose between the weight's
    DequantizeLinear and the layer. Returns how many Transposes went."""
    inits, made_by = initializers(model), producers(model)
    outputs = {out.name for out in model.graph.output}
    folded = 0
    for transpose in [node for node in model.graph.node if node.op_type == "Transpose"]:
        dequantize = made_by.get(transpose.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or transpose.output[0] in outputs:
            continue
        codes = inits.get(dequantize.input[0])
        if codes is None or codes.data_type != onnx.TensorProto.INT8 or \
                any(attr.name == "block_size" and attr.i for attr in dequantize.attribute):
            continue  # not a stored INT8 weight, or blocked quantization (scales shaped like the weight)
        ndim = len(codes.dims)
        perm = next((list(attr.ints) for attr in transpose.attribute if attr.name == "perm"),
                    list(range(ndim))[::-1])
        scale = array(model, dequantize.input[1])
        stem = f"{dequantize.input[0]}_transposed_{'_'.join(map(str, perm))}"
        set_initializer(model, stem, np.ascontiguousarray(np.transpose(array(model, dequantize.input[0]), perm)))
        inputs = [stem, *dequantize.input[1:]]
        axis = perm.index(axis_of(dequantize) % ndim) if scale.size > 1 else axis_of(dequantize)
        moved = onnx.helper.make_node("DequantizeLinear", inputs, [transpose.output[0]],
                                      name=f"{transpose.name}_dequantize", axis=axis)
        model.graph.node.insert(list(model.graph.node).index(transpose), moved)
        model.graph.node.remove(transpose)
        if not consumers(model, dequantize.output[0]) and dequantize.output[0] not in outputs:
            model.graph.node.remove(dequantize)
        inits = initializers(model)
        folded += 1
    drop_unused_initializers(model)
    return folded


# ---- layers left in float -------------------------------------------------------------------------

def dequantize_float_layer_weights(model: onnx.ModelProto) -> int:
    """The INT8 weights of layers that stay float operators stored dequantized, as DequantizeLinear computes
    them (the same values, without dequantizing on every run). Returns how many."""
    inits, made_by = initializers(model), producers(model)
    done = 0
    for layer in [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]:
        source = made_by.get(layer.input[1]) if len(layer.input) > 1 else None
        if source is None or source.op_type != "DequantizeLinear" or source.input[0] not in inits:
            continue
        if is_integer_unit(model, made_by, layer):
            continue
        layer.input[1] = set_initializer(model, f"{source.input[0]}_dequantized", dequantized_weight(model, source))
        if not consumers(model, source.output[0]):
            model.graph.node.remove(source)
        done += 1
    drop_unused_initializers(model)
    return done


def float_convolution_inputs(model: onnx.ModelProto) -> int:
    """Every Conv / ConvTranspose that is not an integer unit reads the tensor its input quantizer read, and the
    Q -> DQ pair goes where nothing else reads it (see the module docstring). Returns how many convolutions."""
    made_by = producers(model)
    bypassed = 0
    for layer in [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")]:
        dequantize = made_by.get(layer.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or is_integer_unit(model, made_by, layer):
            continue
        quantize = made_by.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or _requantizes_a_unit(model, made_by, quantize):
            continue
        layer.input[0] = quantize.input[0]
        for node in (dequantize, quantize):  # in this order: the Q is read by the DQ until the DQ goes
            if not consumers(model, node.output[0]) and node.output[0] not in {o.name for o in model.graph.output}:
                model.graph.node.remove(node)
                _drop_value_info(model, node.output[0])
        bypassed += 1
    drop_unused_initializers(model)
    return bypassed


def _requantizes_a_unit(model, made_by, quantize: onnx.NodeProto) -> bool:
    """Whether `quantize` is the output quantizer of an integer unit: reading the unit's float output instead
    would turn the unit back into a float operator (the projection conv of a MobileNet block feeds the next
    block's float expand conv and the residual add)."""
    source = made_by.get(quantize.input[0])
    return (source is not None and source.op_type in ("Conv", "Add")
            and [user.name for user in consumers(model, quantize.input[0])] == [quantize.name])


def _drop_value_info(model: onnx.ModelProto, tensor: str) -> None:
    for value in list(model.graph.value_info):
        if value.name == tensor:
            model.graph.value_info.remove(value)
