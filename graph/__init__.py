"""The IR: capture, Program, shape refresh, counting and verification."""

from prunefx.graph.capture import capture
from prunefx.graph.counting import Cost, count, count_macs, count_params, node_macs, operator_histogram
from prunefx.graph.errors import CaptureError, ProgramFileError, PrunefxError, VerificationError
from prunefx.graph.program import Program
from prunefx.graph.verify import verify

__all__ = [
    "CaptureError", "Cost", "Program", "ProgramFileError", "PrunefxError", "VerificationError",
    "capture", "count", "count_macs", "count_params", "node_macs", "operator_histogram", "verify",
]
