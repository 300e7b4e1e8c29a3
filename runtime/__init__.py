"""Lowering and measuring: ONNX export with graph-surgeon cleanup, ONNX Runtime, parity, latency, TensorRT
engines and per-layer profiles, Torch-TensorRT, PyTorch on CUDA, trtexec on Jetson boards, deployment reports.
The latency backends are a registry (runtime/backends/): `latency_pair(backend, ...)` and `speedup_measure`
read it.

This is the only layer that imports onnx, onnxruntime, onnx_graphsurgeon, tensorrt and torch_tensorrt
(the last two only when a TensorRT backend is used: without them the rest works and those backends say
what to install).
"""

from prunefx.runtime.budget_backends import latency_pair, speedup_measure
from prunefx.runtime.deployment_report import (
    Variant,
    read_variants,
    variants_from_compress,
    write_chart,
    write_deployment_report,
)
from prunefx.runtime.errors import (
    BackendUnavailableError,
    DeviceToolError,
    MeasurementError,
    OnnxExportError,
    OnnxSessionError,
    ParityError,
)
from prunefx.runtime.gpu_latency import compare_gpu_latency, measure_gpu_latency
from prunefx.runtime.jetson import JetsonState, TegrastatsSampler, jetson_state, parse_tegrastats_line
from prunefx.runtime.latency import LatencyComparison, LatencyStats, compare_latency, measure_latency
from prunefx.runtime.onnx_export import OnnxExport, export_onnx
from prunefx.runtime.onnx_float16 import lower_to_float16
from prunefx.runtime.onnx_provenance import map_to_program, onnx_node_origins
from prunefx.runtime.onnx_quantized import QuantizedExport, export_quantized_onnx, onnxruntime_lowering
from prunefx.runtime.onnxruntime_session import DEFAULT_THREADS, LATENCY_THREADS, OnnxRuntimeSession
from prunefx.runtime.parity import OutputParity, Parity, check_parity
from prunefx.runtime.runners import OnnxRunner, OnnxRunnerMaker, TorchRunner, onnx_runner, torch_runner
from prunefx.runtime.speedup import onnx_latency_pair, onnx_speedup
from prunefx.runtime.tensorrt_cache import engine_cache_key
from prunefx.runtime.tensorrt_engine import Engine, build_engine
from prunefx.runtime.tensorrt_plan import BuildOptions
from prunefx.runtime.tensorrt_profile import (
    LayerProfile,
    build_layer_profile,
    format_profile_table,
    onnx_nodes_of_layer,
    parse_engine_information,
    profile_engine,
)
from prunefx.runtime.torch_tensorrt_backend import compile_torch_tensorrt
from prunefx.runtime.trtexec import TrtexecOptions, parse_performance_summary, run_trtexec, trtexec_arguments

__all__ = [
    "DEFAULT_THREADS", "LATENCY_THREADS", "BackendUnavailableError", "BuildOptions", "DeviceToolError", "Engine", "JetsonState",
    "LatencyComparison", "LatencyStats", "LayerProfile", "MeasurementError", "OnnxExport", "OnnxExportError",
    "OnnxRunner", "OnnxRuntimeSession", "OnnxSessionError", "OutputParity", "Parity", "ParityError",
    "TegrastatsSampler", "TorchRunner", "TrtexecOptions", "Variant", "build_engine", "build_layer_profile",
    "check_parity", "compare_gpu_latency", "compare_latency", "compile_torch_tensorrt", "engine_cache_key",
    "export_onnx", "format_profile_table", "jetson_state", "latency_pair", "map_to_program", "measure_gpu_latency",
    "measure_latency", "onnx_node_origins", "onnx_nodes_of_layer", "QuantizedExport", "export_quantized_onnx", "lower_to_float16", "onnx_latency_pair", "onnxruntime_lowering", "onnx_runner", "OnnxRunnerMaker", "onnx_speedup", "parse_engine_information",
    "parse_performance_summary", "parse_tegrastats_line", "profile_engine", "read_variants", "run_trtexec", "speedup_measure",
    "torch_runner", "trtexec_arguments", "variants_from_compress", "write_chart", "write_deployment_report",
]
