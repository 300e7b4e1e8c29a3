"""The ONNX Runtime (x86 CPU) lowering of a Q/DQ file: UINT8 activations, integer units, 7-bit weights where
the CPU's integer kernels would saturate.

It starts from the TensorRT form runtime/onnx_quantized.py exports (symmetric S8 activations with the
Program's scales s = amax / 127, INT8 weight initializers behind DequantizeLinear) and rewrites it for ONNX
Runtime's x86 kernels, which want U8 activations x S8 weights (U8S8; S8S8 runs slower than FP32 there):
- `activations_to_u8`: a tensor that cannot be negative (after a Relu, a Clip at >= 0, a max pool of such a
  tensor, ...) gets zero-point 0 and scale amax / 255: the same range [0, amax] on twice the levels the S8
  grid spends on it (what quantize_static's asymmetric U8 does after a Relu); any other tensor keeps its
  scale with zero-point 128, Q_u8(x) = Q_s8(x) + 128, the same values as the Program;
- `quantize_before_max_pool`: relu -> MaxPool -> Q becomes relu -> Q -> MaxPool on UINT8 codes (exact: Q is
  monotone, so Q(max(x)) = max(Q(x))), so the convolution before the pool becomes an integer unit;
- `integer_units`: every Conv (and residual Add) whose output reaches one activation quantizer, directly or
  through one Relu / Clip, in the DQ -> op -> Q form ONNX Runtime fuses into QLinearConv / QLinearAdd. The
  Relu / Clip moves after the quantizer as a Clip on the codes (Q(clip(y, a, b)) = clip(Q(y), Q(a), Q(b)),
  since Q is monotone), and disappears when Q's own saturation already clips there (a Relu before a
  zero-point-0 quantizer, a ReLU6 whose 6 lies above amax); the float bias becomes INT32 at s_x * s_w;
- `fold_weight_transposes`: a stored INT8 weight read through DequantizeLinear -> Transpose (what the
  exporter writes for a Linear on 3-D inputs, the tokens of a ViT: x @ DQ(W).T as a MatMul) becomes the
  transposed INT8 initializer read by the DequantizeLinear, its per-channel axis moved with the transpose
  (Transpose(DQ(q), perm) = DQ(Transpose(q, perm)) with axis perm.index(axis): exact). The MatMul then reads
  DQ -> MatMul, the form `integer_matmuls` and ONNX Runtime's QDQ fusions (MatMulIntegerToFloat,
  QLinearMatMul, QGemm after its MatMul + Add fusion) match. The TensorRT file keeps the Transpose, which
  TensorRT folds itself;
- `integer_matmuls`: every Gemm, and every MatMul with a stored weight, whose input and weight are
  dequantized keeps its INT8 weight (and gets an INT32 bias), quantized output or not: ONNX Runtime runs it
  as QGemm (float output allowed) or MatMulIntegerToFloat / QLinearMatMul. A MatMul's bias is the stored
  vector of the Add after it: ONNX Runtime fuses MatMul + Add into a Gemm first and makes that Gemm a QGemm
  only with an INT32 bias where its output is float (a ViT's qkv and fc1 stayed float Gemms without it).
  A classifier's output is never quantized, and a float Gemm there (MobileNetV2's 1280 x 1000) is a cost
  neither INT8 nor pruning removes;
- `weight_levels`: on x86 CPUs without VNNI (AVX2 only) ONNX Runtime's U8S8 convolution kernels multiply with
  vpmaddubsw, which adds pairs of u8 x s8 products into int16 and saturates: 2 x 255 x 127 > 32767. Measured
  here: -10 points of Fashion-MNIST accuracy with 8-bit weights (benchmarks/results/int8_latency.md). With
  weights on +-63 (7 bits: 2 x 255 x 63 < 32767) no pair can saturate. That is ONNX Runtime's documented
  `reduce_range` ("quantize weights with 7-bits ... for non-VNNI machines") and NNCF's saturation fix; the
  integer units' weights are requantized per output channel (scale max|w| / 63) and their biases with them.
  On CPUs with VNNI (32-bit accumulation) the weights keep their 8 bits;
- `dequantize_float_layer_weights`: layers left in float store their weights dequantized (the values
  DequantizeLinear would compute on every run; ONNX Runtime never constant-folds a DequantizeLinear).
A convolution whose output is not quantized stays float: quantizing its output would need a range the
Program never calibrated, and ONNX Runtime has no integer convolution with a float output. (The convolution
before a global pool is quantized: passes/quantize_int8 quantizes the pool's input.)
- `float_convolution_inputs`: such a float convolution then reads its input unquantized. Its Q -> DQ pair
  would only cost time: ONNX Runtime runs it as two float passes over the tensor before a float Conv, and
  the pair breaks the Conv's own fusions (EfficientNet-B0, whose expand, depthwise and squeeze-excitation
  convs feed a SiLU: 63 of 81 convs float, the INT8 file 0.85x the FP32 one with the pairs,
  benchmarks/results/int8_latency.md). This is the one step that is not exact: those convs see x where the
  Program sees Q(x), a difference of at most half a quantization step per value, which the parity check
  against the Program reports; the TensorRT file keeps every pair (TensorRT runs DQ -> Conv -> float).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from prunefx.runtime.errors import OnnxExportError
from prunefx.runtime.onnx_qdq import (
    activation_quantizers,
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
    set_type,
)

S8_LEVELS, U8_LEVELS = 127, 255
SIGNED_ZERO_POINT = 128
SEVEN_BIT_LEVELS = 63
# operators whose output is >= 0 whatever their input; and those >= 0 when their (data) inputs are
NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs"}
FIRST_INPUT_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
                          "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Resize"}
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
    if node.op_type in FIRST_INPUT_KEEPS_SIGN or node.op_type == "Clip":
        return non_negative(model, node.input[0], made_by, memo)
    if node.op_type in ALL_INPUTS_KEEP_SIGN:
        return all(non_negative(model, name, made_by, memo) for name in node.input if name)
    return False


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


def _is_integer_unit(model, made_by, layer) -> bool:
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
    codes = np.clip(np.rint(bias / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
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
        if _is_integer_unit(model, made_by, layer):
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
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or _is_integer_unit(model, made_by, layer):
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
