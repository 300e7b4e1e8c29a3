"""Lower a fake-quantized Program (passes/quantize_int8.py) to ONNX with Q/DQ pairs and INT8 weights.

The exporter turns each fake-quantize operator into QuantizeLinear -> DequantizeLinear, and every weight
quantizer is applied once (INT8 initializers). Three lowerings: "s8" (TensorRT: the Program's quantizers
exactly), "u8" and "u8s7" (ONNX Runtime on x86 with and without VNNI: UINT8 activations, integer units,
8- or 7-bit weights; runtime/onnx/quantized_ort.py); `onnxruntime_lowering()` picks by CPU flags. The file
is not constant-folded with onnx-graphsurgeon, which would dequantize the INT8 weights back into float.
See docs/algorithms.md, 'The ONNX Runtime lowering'.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from prunefx.graph import Program
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.graph.whole_files import file_path, replaced_together
from prunefx.runtime.errors import OnnxExportError, describe_failure
from prunefx.runtime.model_precision import other_than_float32
from prunefx.runtime.onnx.export import DEFAULT_OPSET, dynamo_onnx_program
from prunefx.runtime.onnx.integer_units import S8_LEVELS, SEVEN_BIT_LEVELS
from prunefx.runtime.onnx.qdq import activation_quantizers, fold_weight_quantizers, name_inputs_and_outputs
from prunefx.runtime.onnx.quantize_static import quantize_static_file
from prunefx.runtime.onnx.quantized_ort import lower_for_onnxruntime

# lowering -> the integer units' weight levels (None: the TensorRT file, no ONNX Runtime rewrites)
LOWERINGS = {"s8": None, "u8": S8_LEVELS, "u8s7": SEVEN_BIT_LEVELS}
ACTIVATION_TYPES = tuple(LOWERINGS)
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}

__all__ = ["ACTIVATION_TYPES", "LOWERINGS", "QuantizedExport", "export_quantized_lowerings", "export_quantized_onnx",
           "onnxruntime_lowering", "quantize_static_file"]


def onnxruntime_lowering(cpu_flags: str | None = None) -> str:
    """The ONNX Runtime lowering for this x86 CPU: "u8" (8-bit weights) where the CPU has VNNI, whose 8-bit dot
    products accumulate in 32 bits; "u8s7" (7-bit weights) without, where the U8S8 kernels add pairs of
    products in 16 bits and 8-bit weights saturate them (what that costs: docs/benchmarks/int8.md).
    `cpu_flags`: /proc/cpuinfo's flags (read when None)."""
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpu_flags = ""
    return "u8" if set(cpu_flags.split()) & VNNI_FLAGS else "u8s7"


@dataclass(frozen=True)
class QuantizedExport:
    path: Path
    activations: str              # the lowering: s8 | u8 | u8s7
    weight_initializers: int      # INT8 weight initializers behind a DequantizeLinear, as exported
    activation_pairs: int         # QuantizeLinear -> DequantizeLinear pairs on activations
    integer_units: int = 0        # Convs / Adds in ONNX Runtime's DQ -> op -> Q form (u8, u8s7)
    unsigned_activations: int = 0  # non-negative activations on [0, amax] with zero-point 0 (u8, u8s7)
    weight_levels: int = S8_LEVELS  # the integer units' weights lie on +-weight_levels
    integer_matmuls: int = 0      # Gemms / MatMuls with a stored weight kept on INT8 (u8, u8s7)
    float_convolution_inputs: int = 0  # float convs reading their input unquantized (u8, u8s7)


def export_quantized_onnx(program: Program, path: str | os.PathLike, *, activations: str = "s8",
                          opset: int = DEFAULT_OPSET) -> QuantizedExport:
    """Export the fake-quantized `program` to `path` in the lowering `activations`: "s8" (TensorRT), "u8"
    (ONNX Runtime on x86 with VNNI) or "u8s7" (ONNX Runtime on x86 without VNNI); see the module docstring."""
    return export_quantized_lowerings(program, {path: activations}, opset=opset)[Path(path)]


def export_quantized_lowerings(program: Program, lowerings: Mapping[str | os.PathLike, str], *,
                               opset: int = DEFAULT_OPSET) -> dict[Path, QuantizedExport]:
    """export_quantized_onnx to each path of `lowerings` in its lowering, from one ONNX export of `program`
    (the export is most of the time; each lowering rewrites its own copy of the exported file)."""
    for activations in lowerings.values():
        if activations not in LOWERINGS:
            raise OnnxExportError(f"activations must be one of {', '.join(LOWERINGS)}, not {activations!r}")
    if not has_fake_quant(program.graph):
        raise OnnxExportError(f"model '{program.name}' holds no fake quantizers: run passes/quantize_int8 first")
    require_float32_quantizers(program)
    exported = _exported(program.clone().eval() if program.training else program, opset)
    written = {}
    with replaced_together([file_path(path) for path in lowerings]) as partials:  # every lowering, or the previous ones
        for index, ((path, activations), partial) in enumerate(zip(lowerings.items(), partials)):
            model = exported if index == len(lowerings) - 1 else _copy(exported)  # the last rewrites the original
            written[Path(path)] = _lowered(model, Path(path), partial, activations)
    return written


def require_float32_quantizers(program: Program) -> None:
    """The lowerings read float32 quantizers (their scales, and the float ops between them, as both runtimes take
    them); a half-precision Program exports other patterns, refused here rather than lowered wrong."""
    other = other_than_float32(program)
    if other:
        raise OnnxExportError(f"INT8 export takes float32 models, and {program.name} holds {' and '.join(other)} "
                              "tensors: quantize the float32 model (TensorRT runs the layers left in float at "
                              "fp16 when the engine is built with fp16 enabled)")


def _lowered(model: onnx.ModelProto, path: Path, partial: Path, activations: str) -> QuantizedExport:
    """`model` (exported, rewritten in place) lowered for `activations` and saved at `partial`, which becomes
    `path`."""
    weights = fold_weight_quantizers(model)
    levels = LOWERINGS[activations]
    if levels is None:
        lowered = {"activation_pairs": len(activation_quantizers(model))}
    else:
        result = lower_for_onnxruntime(model, levels)
        lowered = {"activation_pairs": result.activation_pairs, "integer_units": result.integer_units,
                   "unsigned_activations": result.unsigned, "weight_levels": levels,
                   "integer_matmuls": result.integer_matmuls, "float_convolution_inputs": result.float_inputs}
    name_inputs_and_outputs(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, partial)
    return QuantizedExport(path=path, activations=activations, weight_initializers=weights, **lowered)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _exported(program: Program, opset: int) -> onnx.ModelProto:
    try:
        return dynamo_onnx_program(program, opset).model_proto
    except Exception as error:  # torch.onnx raises many types; all mean "the exporter failed"
        raise OnnxExportError(f"could not export quantized model '{program.name}' to ONNX: "
                              f"{describe_failure(error)}") from error
