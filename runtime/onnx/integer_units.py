"""ONNX Runtime's integer units in a Q/DQ file: the rewrites of runtime/onnx/quantized_ort.py that keep a layer
on INT8 weights (the module there says where they sit in the lowering).

`integer_units` (Conv / Add in the DQ -> op -> Q form), `integer_matmuls` (Gemm / MatMul on INT8 weights) and
`weight_levels` (7-bit weights on CPUs without VNNI, whose int16 pair sums saturate). The forms ONNX Runtime
fuses and the saturation arithmetic: see docs/algorithms.md, 'Integer units'.
"""

from __future__ import annotations

import numpy as np
import onnx

from prunefx.runtime.errors import OnnxExportError
from prunefx.runtime.onnx.qdq import (
    array,
    axis_of,
    broadcast_shape,
    consumers,
    dequantized_weight,
    drop_unused_initializers,
    initializers,
    producers,
    scalar,
    set_initializer,
)

S8_LEVELS = 127
SEVEN_BIT_LEVELS = 63  # 2 x 255 x 63 < 32767: no int16 pair of AVX2's vpmaddubsw can saturate


# ---- integer units --------------------------------------------------------------------------------

def integer_units(model: onnx.ModelProto, weight_levels: int = S8_LEVELS) -> int:
    """Put every Conv (and residual Add) whose output reaches one activation quantizer, directly or through one
    Relu / Clip, into ONNX Runtime's DQ -> op -> Q form (see the module docstring); a Conv's weights go to
    +-`weight_levels` and its bias to INT32. Returns how many units."""
    made_by = producers(model)
    rewritten = 0
    for node in [node for node in model.graph.node if node.op_type in ("Conv", "Add")]:
        found = _unit(model, made_by, node)
        if found is None:
            continue
        clip, quantizer = found
        if node.op_type == "Conv":
            if weight_levels < S8_LEVELS:
                _requantize_weight(model, made_by[node.input[1]], weight_levels)
            _quantize_bias(model, made_by, node)
        if clip is not None:
            _move_clip_after(model, node, clip, quantizer)
        rewritten += 1
    drop_unused_initializers(model)
    return rewritten


def _unit(model, made_by, node):
    """(Relu/Clip node or None, the activation QuantizeLinear) when `node` can become an integer unit."""
    if not all(name in made_by and made_by[name].op_type == "DequantizeLinear" for name in node.input[:2]):
        return None
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] and node.input[2] not in initializers(model):
        return None
    users = consumers(model, node.output[0])
    if len(users) != 1 or node.output[0] in {out.name for out in model.graph.output}:
        return None
    if users[0].op_type == "QuantizeLinear":
        return None, users[0]
    after = consumers(model, users[0].output[0])
    if _clip_bounds(model, users[0]) is None or len(after) != 1 or after[0].op_type != "QuantizeLinear":
        return None
    return users[0], after[0]


def integer_matmuls(model: onnx.ModelProto, weight_levels: int = S8_LEVELS) -> int:
    """Every Gemm / MatMul with a dequantized input and a dequantized stored weight keeps its INT8 weight, on
    +-`weight_levels`, and its bias (a Gemm's, or the Add's after a MatMul) becomes INT32 (see the module
    docstring). Returns how many."""
    made_by, inits = producers(model), initializers(model)
    rewritten = 0
    for node in [node for node in model.graph.node if node.op_type in ("Gemm", "MatMul")]:
        if not _integer_matmul(model, made_by, inits, node):
            continue
        if weight_levels < S8_LEVELS:
            _requantize_weight(model, made_by[node.input[1]], weight_levels)
        _quantize_bias(model, made_by, node)
        rewritten += 1
    drop_unused_initializers(model)
    return rewritten


def _integer_matmul(model, made_by, inits, node) -> bool:
    """A Gemm / MatMul ONNX Runtime runs on integers: dequantized input and stored weight (per tensor or per
    output channel), no transposed input, a Gemm's bias absent or stored with beta 1."""
    if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2:
        return False
    sources = [made_by.get(name) for name in node.input[:2]]
    if not all(source is not None and source.op_type == "DequantizeLinear" for source in sources):
        return False
    weight = sources[1]
    if weight.input[0] not in inits or inits[weight.input[0]].data_type != onnx.TensorProto.INT8:
        return False
    if len(inits[weight.input[0]].dims) != 2:
        return False
    attributes = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    # the weight's output channels: MatMul's [K, N] and Gemm's (transB=0) on axis 1, Gemm's [N, K] on axis 0
    out_axis = 0 if attributes.get("transB", 0) else 1
    if array(model, weight.input[1]).size > 1 and axis_of(weight) % 2 != out_axis:
        return False
    if node.op_type == "MatMul":
        return True
    if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0:
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    bias = made_by.get(node.input[2])  # stored, or already INT32 behind a DequantizeLinear
    stored = node.input[2] in inits or (bias is not None and bias.op_type == "DequantizeLinear")
    return stored and attributes.get("beta", 1.0) == 1.0


def is_integer_unit(model, made_by, layer) -> bool:
    """A layer whose INT8 weight stays: a Conv in integer form (DQ input and weight, its output read only by a
    QuantizeLinear), or a Gemm / MatMul `integer_matmuls` kept on integers."""
    if layer.op_type in ("Gemm", "MatMul"):
        return _integer_matmul(model, made_by, initializers(model), layer)
    users = consumers(model, layer.output[0])
    return (layer.op_type == "Conv" and layer.input[0] in made_by
            and made_by[layer.input[0]].op_type == "DequantizeLinear"
            and len(users) == 1 and users[0].op_type == "QuantizeLinear")


def _requantize_weight(model, dequantize: onnx.NodeProto, levels: int) -> None:
    """The INT8 weight behind `dequantize` on +-`levels` per output channel: scale max|w| / levels."""
    values = dequantized_weight(model, dequantize).astype(np.float64)
    axis = axis_of(dequantize)
    amax = np.abs(np.moveaxis(values, axis, 0)).reshape(values.shape[axis], -1).max(axis=1)
    old_scale = array(model, dequantize.input[1]).astype(np.float64).reshape(-1)
    scale = np.where(amax > 0, amax / levels, np.broadcast_to(old_scale, amax.shape)).astype(np.float32)
    shape = broadcast_shape(values.ndim, axis, scale.size)
    codes = np.clip(np.rint(values / scale.reshape(shape)), -levels, levels).astype(np.int8)
    stem = f"{dequantize.input[0]}_{levels}levels"
    dequantize.input[0] = set_initializer(model, stem, codes)
    dequantize.input[1] = set_initializer(model, f"{stem}_scale", scale)
    dequantize.input[2] = set_initializer(model, f"{stem}_zero_point", np.zeros(scale.shape, np.int8))


def _quantize_bias(model, made_by, layer) -> None:
    """The stored float bias of a Conv / Gemm `layer` as INT32 at s_x * s_w behind a DequantizeLinear; a
    MatMul's bias is the stored vector of the Add that alone reads its output (x @ W + b, as the exporter
    writes a Linear on 3-D inputs), which ONNX Runtime fuses with the MatMul into a Gemm (QGemm)."""
    if layer.op_type == "MatMul":
        found = _matmul_bias(model, layer)
        if found is not None:
            add, index = found
            add.input[index] = _int32_bias(model, made_by, layer, add.input[index], before=add)
        return
    if len(layer.input) < 3 or not layer.input[2]:
        return
    layer.input[2] = _int32_bias(model, made_by, layer, layer.input[2], before=layer)


def _matmul_bias(model, matmul) -> tuple[onnx.NodeProto, int] | None:
    """(the Add, the index of its stored bias) when `matmul`'s output is read only by an Add of a stored
    float vector of the weight's N entries, else None."""
    users = consumers(model, matmul.output[0])
    if len(users) != 1 or users[0].op_type != "Add" or matmul.output[0] in {out.name for out in model.graph.output}:
        return None
    add, inits = users[0], initializers(model)
    others = [index for index, name in enumerate(add.input[:2]) if name != matmul.output[0]]
    weight = inits[producers(model)[matmul.input[1]].input[0]]
    if len(others) != 1 or add.input[others[0]] not in inits:
        return None
    bias = inits[add.input[others[0]]]
    if bias.data_type != onnx.TensorProto.FLOAT or list(bias.dims) != [weight.dims[-1]]:
        return None
    return add, others[0]


def _int32_bias(model, made_by, layer, bias_name: str, *, before: onnx.NodeProto) -> str:
    """DequantizeLinear(INT32 codes of the stored bias `bias_name` at `layer`'s s_x * s_w), inserted before
    `before`; returns its output. Named after `layer`'s output: the exporter shares equal initializers (zero
    biases) between layers whose scales differ."""
    input_scale = array(model, made_by[layer.input[0]].input[1]).astype(np.float64)
    weight_scale = array(model, made_by[layer.input[1]].input[1]).astype(np.float64)
    scale = (input_scale * weight_scale).astype(np.float32)
    bias = array(model, bias_name).astype(np.float64)
    codes = np.rint(bias / scale)
    if not np.all(np.abs(codes) <= np.iinfo(np.int32).max):  # clipped, the layer would compute another bias
        raise OnnxExportError(f"the bias of {layer.name} ({np.abs(bias).max():.3g}) over its input's and weight's "
                              f"scales ({float(np.min(scale)):.3g}) is past the INT32 range: it cannot be lowered "
                              "for ONNX Runtime")
    codes = codes.astype(np.int32)
    stem = f"{layer.output[0]}_bias_int32"
    set_initializer(model, stem, codes)
    set_initializer(model, f"{stem}_scale", np.broadcast_to(scale, codes.shape).copy())
    set_initializer(model, f"{stem}_zero_point", np.zeros(codes.shape, np.int32))
    dequantize = onnx.helper.make_node("DequantizeLinear", [stem, f"{stem}_scale", f"{stem}_zero_point"],
                                       [f"{stem}_dequantized"], name=f"{layer.name}_bias_dequantize", axis=0)
    model.graph.node.insert(list(model.graph.node).index(before), dequantize)
    return dequantize.output[0]


def _clip_bounds(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[float, float] | None:
    """The (min, max) of a Relu or of a Clip with constant bounds, else None."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type != "Clip":
        return None
    names = [*node.input[1:3], "", ""][:2]
    bounds = [scalar(model, name) if name else None for name in names]
    if any(name and value is None for name, value in zip(names, bounds)):
        return None  # a bound computed in the graph
    return (bounds[0] if bounds[0] is not None else -float("inf"), bounds[1] if bounds[1] is not None else float("inf"))


def _move_clip_after(model, conv, clip, quantizer) -> None:
    """conv -> clip -> Q  becomes  conv -> Q (-> Clip on the UINT8 codes, unless Q's saturation clips there)."""
    scale, zero = scalar(model, quantizer.input[1]), int(scalar(model, quantizer.input[2]))
    info = np.iinfo(np.uint8)
    low, high = (int(np.clip(np.rint(value / scale) + zero, info.min, info.max)) if np.isfinite(value)
                 else (info.max if value > 0 else info.min) for value in _clip_bounds(model, clip))
    codes = quantizer.output[0]
    quantizer.input[0] = conv.output[0]
    model.graph.node.remove(clip)
    if low <= info.min and high >= info.max:
        return
    stem = f"{clip.name}_codes"
    quantizer.output[0] = f"{stem}_unclipped"
    bounds = [set_initializer(model, f"{stem}_min", np.array(low, np.uint8)),
              set_initializer(model, f"{stem}_max", np.array(high, np.uint8))]
    integer_clip = onnx.helper.make_node("Clip", [quantizer.output[0], *bounds], [codes], name=f"{clip.name}_on_codes")
    model.graph.node.insert(list(model.graph.node).index(quantizer) + 1, integer_clip)
