"""Lower a fake-quantized Program (passes/quantize_int8.py) to ONNX with Q/DQ pairs and INT8 weights.

The ONNX exporter turns each of torch's fake-quantize operators into QuantizeLinear -> DequantizeLinear.
This module then makes the file what TensorRT's explicit quantization and ONNX Runtime's integer kernels
read:
- every weight quantizer is applied once, here: the float weight and its QuantizeLinear become an INT8
  initializer read by the DequantizeLinear (values round half to even, like both QuantizeLinear and torch's
  fake quantization), so in the TensorRT file every Conv/Gemm/MatMul weight is an INT8 initializer behind a
  DequantizeLinear;
- `activations="s8"` (TensorRT): symmetric INT8 activations, zero-point 0, exactly the Program's quantizers.
  TensorRT 10 and 11 build strongly typed engines from this file;
- `activations="u8"` (ONNX Runtime on x86): the same scales, activations shifted to UINT8 with zero-point
  128. Q_u8(x) = Q_s8(x) + 128 and DQ_u8(q) = (q - 128) * s, so every real value is the same, bit for bit;
  only the integer type changes, to the U8 activations x S8 weights (U8S8) that ONNX Runtime's x86 integer
  kernels want (S8S8 runs slower than FP32 on these CPUs). Two more rewrites make the file run integer
  kernels wherever the Program's values allow it: `integer_units_for_onnxruntime` puts every Conv (and
  residual Add) whose output reaches only an activation quantizer, directly or through a ReLU/ReLU6, in the
  DQ -> op -> Q form ONNX Runtime fuses into QLinearConv / QLinearAdd (the ReLU becomes a Clip on the UINT8
  codes, the bias INT32); `dequantize_float_layer_weights` stores the weights of the layers left in float
  dequantized (exactly the values DequantizeLinear would compute on every run). A layer whose output is not
  quantized (the last convolution before pooling, the head) stays float: quantizing its output would change
  the Program's values.
- `activations="u8u8"`: the same, with the integer units' weights shifted to UINT8 too (zero-point 128, same
  values). On x86 CPUs without VNNI (AVX2 only) ONNX Runtime's U8S8 kernels add pairs of products in 16 bits
  and saturate, and zero-point 128 makes the codes large: measured here, -10 points of Fashion-MNIST
  accuracy; its U8U8 kernels do not saturate, and run slower. `onnxruntime_lowering()` picks by CPU flags.
The file is not constant-folded with onnx-graphsurgeon as runtime/onnx_export.py does, since folding would
dequantize the INT8 weights back into float; the exporter's own optimiser has already folded the rest.

`quantize_static_file` is ONNX Runtime's quantize_static on an FP32 file, for comparison (benchmarks) and for
INT8 TensorRT engines from calibration data when the file has no Q/DQ yet (runtime/tensorrt_engine.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from prunefx.graph import Program
from prunefx.graph.quantization import has_fake_quant
from prunefx.runtime.errors import OnnxExportError, describe_failure
from prunefx.runtime.onnx_export import DEFAULT_OPSET

ACTIVATION_TYPES = ("s8", "u8", "u8u8")
U8_ZERO_POINT = 128


def onnxruntime_lowering(cpu_flags: str | None = None) -> str:
    """The U8 lowering for ONNX Runtime on this x86 CPU: "u8" (U8S8 kernels, the fastest) where the CPU has
    VNNI, whose 8-bit dot products accumulate in 32 bits; "u8u8" without VNNI, where U8S8 kernels add pairs
    of products in 16 bits and saturate (measured: -10 points of Fashion-MNIST accuracy, see
    benchmarks/results/int8_latency.md). `cpu_flags`: /proc/cpuinfo's flags (read when None)."""
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpu_flags = ""
    flags = set(cpu_flags.split())
    return "u8" if flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"} else "u8u8"


@dataclass(frozen=True)
class QuantizedExport:
    path: Path
    activations: str
    weight_initializers: int      # INT8 weight initializers behind a DequantizeLinear
    activation_pairs: int         # QuantizeLinear -> DequantizeLinear pairs on activations
    integer_units: int = 0  # convolutions put in ONNX Runtime's DQ -> Conv -> Q form (u8 only)


def export_quantized_onnx(program: Program, path: str | os.PathLike, *, activations: str = "s8",
                          opset: int = DEFAULT_OPSET) -> QuantizedExport:
    """Export the fake-quantized `program` to `path`: INT8 weight initializers, Q/DQ activations in S8 (TensorRT),
    U8 (ONNX Runtime, U8S8 kernels) or U8 with the integer units' weights shifted to U8 too ("u8u8": ONNX
    Runtime on x86 CPUs without VNNI, whose U8S8 kernels saturate; see the module docstring)."""
    if activations not in ACTIVATION_TYPES:
        raise OnnxExportError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, not {activations!r}")
    if not has_fake_quant(program.graph):
        raise OnnxExportError(f"model '{program.name}' holds no fake quantizers: run passes/quantize_int8 first")
    program = program.clone().eval() if program.training else program
    try:
        exported = program.export()
        model = torch.onnx.export(exported, program.example_inputs, dynamo=True, opset_version=opset,
                                  external_data=False, optimize=True, verbose=False).model_proto
    except Exception as error:  # torch.onnx raises many types; all mean "the exporter failed"
        raise OnnxExportError(f"could not export quantized model '{program.name}' to ONNX: "
                              f"{describe_failure(error)}") from error
    weights = fold_weight_quantizers(model)
    for_onnxruntime = activations in ("u8", "u8u8")
    pairs = shift_activations_to_u8(model) if for_onnxruntime else count_activation_pairs(model)
    fused = integer_units_for_onnxruntime(model) if for_onnxruntime else 0
    if for_onnxruntime:
        dequantize_float_layer_weights(model)
    if activations == "u8u8":
        shift_integer_weights_to_u8(model)
    _name_inputs_and_outputs(model)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, path)
    return QuantizedExport(path=path, activations=activations, weight_initializers=weights, activation_pairs=pairs,
                           integer_units=fused)


# ---- graph rewrites (onnx protos) ------------------------------------------------------------------

def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if tensor in node.input]


def quantize_values(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """QuantizeLinear's arithmetic: round half to even of x / scale, plus the zero-point, saturated."""
    if scale.ndim == 1 and scale.size > 1:  # per channel: broadcast along `axis`
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    quantized = np.rint(values.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.int32)
    return np.clip(quantized, info.min, info.max).astype(zero_point.dtype)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(float initializer) by the INT8 initializer it computes; returns how many."""
    inits = _initializers(model)
    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        values, scale, zero_point = (numpy_helper.to_array(inits[name]) for name in node.input[:3])
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1)
        quantized = numpy_helper.from_array(quantize_values(values, scale, zero_point, axis), f"{node.input[0]}_int8")
        model.graph.initializer.append(quantized)
        for consumer in _consumers(model, node.output[0]):
            consumer.input[0] = quantized.name
        model.graph.node.remove(node)
        folded += 1
    _drop_unused_initializers(model)
    return folded


def _activation_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = _initializers(model)
    return [node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in inits]


def count_activation_pairs(model: onnx.ModelProto) -> int:
    return len(_activation_quantizers(model))


def shift_activations_to_u8(model: onnx.ModelProto) -> int:
    """Give every activation Q/DQ pair the UINT8 zero-point 128 (same scales, same real values)."""
    inits = _initializers(model)
    name = "activation_zero_point_u8"
    model.graph.initializer.append(numpy_helper.from_array(np.array(U8_ZERO_POINT, dtype=np.uint8), name))
    shifted = 0
    for quantizer in _activation_quantizers(model):
        zero_point = numpy_helper.to_array(inits[quantizer.input[2]])
        if zero_point.dtype != np.int8 or np.any(zero_point != 0):
            raise OnnxExportError(f"activation quantizer {quantizer.name} is not symmetric INT8 (zero-point "
                                  f"{zero_point.tolist()} of type {zero_point.dtype}): cannot shift it to U8")
        quantizer.input[2] = name
        for dequantizer in _consumers(model, quantizer.output[0]):
            if dequantizer.op_type != "DequantizeLinear":
                raise OnnxExportError(f"activation quantizer {quantizer.name} feeds {dequantizer.op_type}, not a "
                                      "DequantizeLinear")
            dequantizer.input[2] = name
        _set_type(model, quantizer.output[0], onnx.TensorProto.UINT8)
        shifted += 1
    _drop_unused_initializers(model)
    return shifted


def _scalar(model: onnx.ModelProto, name: str) -> float | None:
    init = _initializers(model).get(name)
    return float(numpy_helper.to_array(init)) if init is not None and numpy_helper.to_array(init).size == 1 else None


def _clip_bounds(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[float, float] | None:
    """The (min, max) of a Relu or of a Clip with constant bounds, else None."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type != "Clip":
        return None
    bounds = [(_scalar(model, name) if name else None) for name in [*node.input[1:3], "", ""][:2]]
    if any(name and value is None for name, value in zip(node.input[1:3], bounds)):
        return None  # a bound computed in the graph
    return (bounds[0] if bounds[0] is not None else -float("inf"), bounds[1] if bounds[1] is not None else float("inf"))


def integer_units_for_onnxruntime(model: onnx.ModelProto) -> int:
    """Put every Conv (and residual Add) whose output reaches one activation quantizer, directly or through
    one Relu / Clip, into the DQ -> Conv -> Q form ONNX Runtime runs on integers (QLinearConv, U8S8;
    QLinearAdd):
    - the Relu / Clip moves after the quantizer, as a Clip on the UINT8 codes: Q(clip(y, a, b)) equals
      clip(Q(y), Q(a), Q(b)) exactly, since quantization is monotone, so no real value changes;
    - the float bias becomes INT32 at scale s_x * s_w (ONNX Runtime's integer kernels need it; the change is
      at most half of s_x * s_w, far below the output's own quantization step).
    A Conv whose output also reaches float operators (residual adds) stays a float Conv: quantizing its
    output would change the Program's values. Returns how many Convs were rewritten."""
    producers = {output: node for node in model.graph.node for output in node.output}
    rewritten = 0
    for conv in [node for node in model.graph.node if node.op_type in ("Conv", "Add")]:
        found = _conv_unit(model, producers, conv)
        if found is None:
            continue
        clip, quantizer = found
        if conv.op_type == "Conv":
            _quantize_bias(model, producers, conv)
        if clip is not None:
            _move_clip_after(model, conv, clip, quantizer)
        rewritten += 1
    _drop_unused_initializers(model)
    return rewritten


def dequantize_float_layer_weights(model: onnx.ModelProto) -> int:
    """For ONNX Runtime: the INT8 weights of layers that stay float operators (not integer units) stored
    dequantized, (q - zero_point) * scale in float32 as DequantizeLinear computes it, so the same values.
    ONNX Runtime never constant-folds a DequantizeLinear (it keeps Q/DQ groups for its fusions), so it would
    dequantize those weights again on every run. Returns how many weights were stored dequantized."""
    inits = _initializers(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    done = 0
    for layer in [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]:
        source = producers.get(layer.input[1]) if len(layer.input) > 1 else None
        if source is None or source.op_type != "DequantizeLinear" or source.input[0] not in inits:
            continue
        if _is_integer_unit(model, producers, layer):
            continue
        codes, scale, zero = (numpy_helper.to_array(inits[name]) for name in source.input[:3])
        axis = next((attr.i for attr in source.attribute if attr.name == "axis"), 1)
        shape = [1] * codes.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        values = (codes.astype(np.int32) - zero.astype(np.int32).reshape(shape)).astype(np.float32) \
            * scale.astype(np.float32).reshape(shape)
        name = f"{source.input[0]}_dequantized"
        model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), name))
        layer.input[1] = name
        if not _consumers(model, source.output[0]):
            model.graph.node.remove(source)
        done += 1
    _drop_unused_initializers(model)
    return done


def _is_integer_unit(model, producers, layer) -> bool:
    """A Conv in integer form: DQ inputs and weight, its output read only by a QuantizeLinear."""
    users = _consumers(model, layer.output[0])
    return (layer.op_type == "Conv" and layer.input[0] in producers
            and producers[layer.input[0]].op_type == "DequantizeLinear"
            and len(users) == 1 and users[0].op_type == "QuantizeLinear")


def shift_integer_weights_to_u8(model: onnx.ModelProto) -> int:
    """INT8 weights still behind a DequantizeLinear (the integer units') as UINT8 with zero-point 128: the
    same real values, and ONNX Runtime then picks its U8U8 kernels, which widen to 32 bits before adding."""
    inits = _initializers(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    shifted = 0
    for layer in [node for node in model.graph.node if node.op_type == "Conv"]:
        source = producers.get(layer.input[1])
        if source is None or source.op_type != "DequantizeLinear" or inits[source.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        codes, zero = inits[source.input[0]], inits[source.input[2]]
        shifted_codes = (numpy_helper.to_array(codes).astype(np.int16) + U8_ZERO_POINT).astype(np.uint8)
        codes.CopyFrom(numpy_helper.from_array(shifted_codes, codes.name))
        zero.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(zero).shape, U8_ZERO_POINT, np.uint8),
                                              zero.name))
        shifted += 1
    return shifted


def _conv_unit(model, producers, conv):
    """(Relu/Clip node or None, the activation QuantizeLinear) when `conv` can become an integer unit."""
    if not all(name in producers and producers[name].op_type == "DequantizeLinear" for name in conv.input[:2]):
        return None
    if conv.op_type == "Conv" and len(conv.input) > 2 and conv.input[2] and conv.input[2] not in _initializers(model):
        return None
    users = _consumers(model, conv.output[0])
    if len(users) != 1 or conv.output[0] in {out.name for out in model.graph.output}:
        return None
    if users[0].op_type == "QuantizeLinear":
        return None, users[0]
    after = _consumers(model, users[0].output[0])
    if _clip_bounds(model, users[0]) is None or len(after) != 1 or after[0].op_type != "QuantizeLinear":
        return None
    return users[0], after[0]


def _quantize_bias(model, producers, conv) -> None:
    if len(conv.input) < 3 or not conv.input[2]:
        return
    inits = _initializers(model)
    input_scale = numpy_helper.to_array(inits[producers[conv.input[0]].input[1]]).astype(np.float64)
    weight_scale = numpy_helper.to_array(inits[producers[conv.input[1]].input[1]]).astype(np.float64)
    scale = (input_scale * weight_scale).astype(np.float32)
    bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
    codes = np.clip(np.rint(bias / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    stem = f"{conv.input[2]}_int32"
    model.graph.initializer.extend([numpy_helper.from_array(codes, stem),
                                    numpy_helper.from_array(np.broadcast_to(scale, codes.shape).copy(), f"{stem}_scale"),
                                    numpy_helper.from_array(np.zeros(codes.shape, np.int32), f"{stem}_zero_point")])
    dequantize = onnx.helper.make_node("DequantizeLinear", [stem, f"{stem}_scale", f"{stem}_zero_point"],
                                       [f"{stem}_dequantized"], name=f"{conv.name}_bias_dequantize", axis=0)
    model.graph.node.insert(list(model.graph.node).index(conv), dequantize)
    conv.input[2] = dequantize.output[0]


def _move_clip_after(model, conv, clip, quantizer) -> None:
    """conv -> clip -> Q  becomes  conv -> Q -> Clip on UINT8 codes (same values; see integer_units_for_onnxruntime)."""
    low, high = _clip_bounds(model, clip)
    scale = _scalar(model, quantizer.input[1])
    zero = int(numpy_helper.to_array(_initializers(model)[quantizer.input[2]]))
    info = np.iinfo(np.uint8)
    code = lambda value: int(np.clip(np.rint(value / scale) + zero, info.min, info.max)) if np.isfinite(value) \
        else (info.max if value > 0 else info.min)  # noqa: E731
    stem = f"{clip.name}_codes"
    model.graph.initializer.extend([numpy_helper.from_array(np.array(code(low), np.uint8), f"{stem}_min"),
                                    numpy_helper.from_array(np.array(code(high), np.uint8), f"{stem}_max")])
    codes = quantizer.output[0]
    quantizer.input[0] = conv.output[0]
    quantizer.output[0] = f"{stem}_unclipped"
    integer_clip = onnx.helper.make_node("Clip", [quantizer.output[0], f"{stem}_min", f"{stem}_max"], [codes],
                                         name=f"{clip.name}_on_codes")
    nodes = list(model.graph.node)
    model.graph.node.insert(nodes.index(quantizer) + 1, integer_clip)
    model.graph.node.remove(clip)


def _set_type(model: onnx.ModelProto, tensor: str, element_type: int) -> None:
    """The exporter recorded the quantized tensor's type in value_info: it must follow the zero-point's."""
    for value in model.graph.value_info:
        if value.name == tensor:
            value.type.tensor_type.elem_type = element_type


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _name_inputs_and_outputs(model: onnx.ModelProto) -> None:
    """input_0, ... and output_0, ... as runtime/onnx_export.py names them, every reference renamed."""
    renames = {value.name: f"input_{index}" for index, value in enumerate(model.graph.input)}
    renames.update({value.name: f"output_{index}" for index, value in enumerate(model.graph.output)})
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames[value.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


# ---- ONNX Runtime's quantize_static (a peer, and INT8 TensorRT engines from calibration data) --------------

def quantize_static_file(source: str | os.PathLike, target: str | os.PathLike,
                         batches: Sequence[Sequence[torch.Tensor]], *, activations: str = "u8",
                         method: str = "minmax") -> Path:
    """ONNX Runtime's quantize_static on the FP32 file `source`: QDQ format, per-channel symmetric INT8
    weights, activations U8 asymmetric (its default) or S8 symmetric (TensorRT's form)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    names = [value.name for value in onnx.load(str(source), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: t.detach().cpu().numpy() for name, t in zip(names, batch)} for batch in batches])

        def get_next(self):
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    symmetric = activations == "s8"
    ort_quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    return Path(target)
