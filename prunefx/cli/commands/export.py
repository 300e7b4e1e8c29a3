"""prunefx export MODEL -o model.onnx: a cleaned, checked ONNX file, with torch-vs-ORT parity printed."""

from __future__ import annotations

from prunefx import options
from prunefx.graph.whole_files import followed
from prunefx.loading import program_from_args
from prunefx.output import staged_file
from prunefx.output_paths import check_output_file
from prunefx.runtime import check_parity, export_onnx
from prunefx.runtime.onnx.external import remove_stale_side_files, rename_external_data, side_file_name


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=options.opset, default=18, help="ONNX opset (default 18)")


def run(args) -> int:
    destination = followed(check_output_file(args.output))  # a link: the file it names, its side files beside it
    program = program_from_args(args, writes_onnx=True).eval()
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
    print(f"parity torch vs ONNX Runtime: max abs error {parity.max_abs_error:.3e} "
          f"(output scale {parity.output_scale:.3e}, relative {parity.relative:.2e})")
    return 0
