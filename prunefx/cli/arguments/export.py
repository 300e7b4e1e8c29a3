"""`prunefx export`'s flags (the command: prunefx/cli/commands/export.py)."""

from __future__ import annotations

from prunefx.cli import flags

INT8_BACKENDS = ("ort", "trt")


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    flags.add_opset(parser)
    parser.add_argument("--backend", choices=INT8_BACKENDS, default=None,
                        help="a quantized model only: the runtime its INT8 file is lowered for, ort (ONNX Runtime "
                             "on this CPU, default) or trt (TensorRT: symmetric S8), as prunefx quantize writes them")
