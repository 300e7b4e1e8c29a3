"""prunefx export MODEL -o model.onnx: a cleaned, checked ONNX file, with torch-vs-ORT parity printed."""

from __future__ import annotations

from prunefx import options
from prunefx.loading import program_from_args
from prunefx.output import check_output_file, staged_file
from prunefx.runtime import check_parity, export_onnx

NAME = "export"
HELP = "export a model to a cleaned, checked ONNX file and print its parity with torch"


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=options.opset, default=18, help="ONNX opset (default 18)")


def run(args) -> int:
    destination = check_output_file(args.output)
    program = program_from_args(args).eval()
    with staged_file(destination) as staging:  # an existing file is replaced only by a checked, complete one
        exported = export_onnx(program, staging, opset=args.opset)
        parity = check_parity(program, exported.path)
    print(f"wrote {destination} ({exported.node_count} nodes, {exported.exporter} exporter)")
    if exported.fallback_reason:
        print(f"note: the dynamo exporter failed ({exported.fallback_reason}); used the TorchScript exporter")
    print(f"parity torch vs ONNX Runtime: max abs error {parity.max_abs_error:.3e} "
          f"(output scale {parity.output_scale:.3e}, relative {parity.relative:.2e})")
    return 0
