"""Lowering and measuring: ONNX export with graph-surgeon cleanup, ONNX Runtime, parity, latency.

This is the only layer that imports onnx, onnxruntime and onnx_graphsurgeon (and, later, tensorrt).
"""

from prunefx.runtime.errors import MeasurementError, OnnxExportError, OnnxSessionError, ParityError
from prunefx.runtime.latency import LatencyComparison, LatencyStats, compare_latency, measure_latency
from prunefx.runtime.onnx_export import OnnxExport, export_onnx
from prunefx.runtime.onnxruntime_session import DEFAULT_THREADS, OnnxRuntimeSession
from prunefx.runtime.parity import OutputParity, Parity, check_parity
from prunefx.runtime.runners import OnnxRunner, TorchRunner, onnx_runner, torch_runner

__all__ = [
    "DEFAULT_THREADS", "LatencyComparison", "LatencyStats", "MeasurementError", "OnnxExport",
    "OnnxExportError", "OnnxRunner", "OnnxRuntimeSession", "OnnxSessionError", "OutputParity", "Parity",
    "ParityError", "TorchRunner", "check_parity", "compare_latency", "export_onnx", "measure_latency",
    "onnx_runner", "torch_runner",
]
