"""The IR: capture, Program, shape refresh, counting and verification.

The names below are imported on first use, so that a module of this package that needs no torch (errors,
the safe file readers) is imported without it: `prunefx check` reads an ONNX file in a fraction of a second."""

from prunefx.graph.lazy_package import functions_over_modules, lazy_names

# name -> module that defines it
_LAZY = {
    "capture": "prunefx.graph.capture",
    "Cost": "prunefx.graph.counting", "count": "prunefx.graph.counting", "count_macs": "prunefx.graph.counting",
    "count_params": "prunefx.graph.counting", "node_macs": "prunefx.graph.counting",
    "operator_histogram": "prunefx.graph.counting",
    "CaptureError": "prunefx.graph.errors", "ProgramFileError": "prunefx.graph.errors",
    "PrunefxError": "prunefx.graph.errors", "VerificationError": "prunefx.graph.errors",
    "Program": "prunefx.graph.program",
    "verify": "prunefx.graph.verify",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
functions_over_modules(__name__, _LAZY)

__all__ = sorted(_LAZY)
