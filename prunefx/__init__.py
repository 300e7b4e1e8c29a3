"""prunefx: make vision models smaller and faster.

Capture a model with torch.export, rewrite it with an ordered pipeline of verified passes, lower it
to ONNX and measure it on ONNX Runtime or TensorRT.

    import prunefx
    program = prunefx.capture(model, torch.randn(1, 3, 224, 224))
    result = prunefx.Pipeline([prunefx.passes.fold_batchnorm]).run(program.eval())
    prunefx.runtime.export_onnx(result.program, "model.onnx")
"""

from prunefx import passes, runtime
from prunefx.detectors import prune_part
from prunefx.graph import CaptureError, Program, PrunefxError, VerificationError, capture, count, verify
from prunefx.graph.channel_rules import channel_rule
from prunefx.passes.pipeline import Pipeline, PipelineError
from prunefx.passes.recipe import load_recipe

load = Program.load

__all__ = [
    "CaptureError", "Pipeline", "PipelineError", "Program", "PrunefxError", "VerificationError",
    "capture", "channel_rule", "count", "load", "load_recipe", "passes", "prune_part", "runtime",
    "verify",
]
