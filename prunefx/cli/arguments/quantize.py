"""`prunefx quantize`'s flags (the command: prunefx/cli/commands/quantize.py): quantize_int8's options, each
flag made from its config field, the runtime model.onnx is lowered for, and the shared ones."""

from __future__ import annotations

from prunefx.cli import flags
from prunefx.passes.rewrites.quantize_config import QuantizeInt8Config

BACKENDS = {"ort": "model_ort.onnx", "trt": "model_trt.onnx"}
OPTIONS = ("method", "percentile", "max_batches", "skip_nodes", "skip_operators", "sensitive", "fold_batchnorm",
           "attention")


def add_arguments(parser) -> None:
    flags.add_calibration(parser, reads="the activation ranges are read from it (required)")
    flags.add_pass_options(parser, QuantizeInt8Config, OPTIONS)
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="ort",
                        help="the runtime model.onnx is lowered for: ort (ONNX Runtime on this CPU, default) or trt "
                             "(TensorRT: symmetric S8)")
    flags.add_measurement(parser, runs=50)
    flags.add_device(parser, runs="the calibration (activation ranges, their search) and the batch-norm fold")
    flags.add_opset(parser)
    flags.add_output(parser, "model.pt2, model_trt.onnx, model_ort.onnx and report.json")
