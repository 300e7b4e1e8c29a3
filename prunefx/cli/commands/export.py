"""prunefx export MODEL -o model.onnx: a cleaned, checked ONNX file, with torch-vs-ORT parity printed.

A quantized model (a model.pt2 of `prunefx quantize`) is written in one of the INT8 lowerings `quantize`
delivers (runtime/onnx/quantized.py), never as the float weights and Q/DQ pairs a plain export gives, which
neither runtime runs as INT8."""

from __future__ import annotations

from prunefx.graph.errors import PrunefxError
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.graph.whole_files import followed
from prunefx.loading import program_from_args
from prunefx.output import staged_file
from prunefx.output_paths import check_output_file
from prunefx.reports.parity_text import CONSTANT
from prunefx.runtime import check_parity, export_onnx, export_quantized_onnx, onnxruntime_lowering
from prunefx.runtime.onnx.external import remove_stale_side_files, rename_external_data, side_file_name
from prunefx.runtime.onnx.parity import warn_if_constant, warn_if_inexact
from prunefx.runtime.onnx.quantized import require_float32_quantizers


def run(args) -> int:
    destination = followed(check_output_file(args.output))  # a link: the file it names, its side files beside it
    program = program_from_args(args, writes_onnx=True).eval()
    quantized = has_fake_quant(program.graph)
    if args.backend and not quantized:
        raise PrunefxError(f"--backend picks the INT8 lowering of a quantized model, and {program.name} is not "
                           "quantized (prunefx quantize makes one)")
    if quantized:
        require_float32_quantizers(program)
        return _export_int8(program, destination, args)
    with staged_file(destination) as staging:  # an existing file is replaced only by a checked, complete one
        exported = export_onnx(program, staging, opset=args.opset)
        # weights in a side file (over 2 GB) take export_onnx's name for the destination: one of this run's where
        # the usual one is the replaced file's, so that, published first, they never pair with another run's file
        side = side_file_name(destination)
        if not rename_external_data(exported.path, side):
            side = None
        parity = check_parity(program, exported.path)
    remove_stale_side_files(destination, keep=side)
    print(f"wrote {destination} ({exported.node_count} nodes, {exported.exporter} exporter)")
    if exported.fallback_reason:
        print(f"note: the dynamo exporter failed ({exported.fallback_reason}); used the TorchScript exporter")
    _print_parity(parity)
    warn_if_inexact(parity, str(destination))
    warn_if_constant(parity, str(destination))
    return 0


def _export_int8(program, destination, args) -> int:
    lowering = "s8" if args.backend == "trt" else onnxruntime_lowering()
    with staged_file(destination) as staging:
        exported = export_quantized_onnx(program, staging, activations=lowering, opset=args.opset)
        parity = check_parity(program, exported.path)
    remove_stale_side_files(destination, keep=None)
    runtime = "TensorRT" if lowering == "s8" else "ONNX Runtime on this CPU"
    print(f"wrote {destination} (INT8 for {runtime}, lowering {lowering}: {exported.weight_initializers} INT8 "
          f"weights, {exported.activation_pairs} activation Q/DQ pairs)")
    _print_parity(parity)
    warn_if_constant(parity, str(destination))
    return 0


def _print_parity(parity) -> None:
    if parity.outputs_constant:
        print(f"parity torch vs ONNX Runtime: {CONSTANT}")
        return
    print(f"parity torch vs ONNX Runtime: max abs error {parity.max_abs_error:.3e} "
          f"(output scale {parity.output_scale:.3e}, relative {parity.relative:.2e})")
