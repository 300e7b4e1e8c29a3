"""Lowering and measuring: ONNX export with graph-surgeon cleanup, ONNX Runtime, parity, latency, TensorRT
engines and per-layer profiles, Torch-TensorRT, PyTorch on CUDA, trtexec on Jetson boards, deployment reports.
The latency backends are a registry (runtime/backends/): `latency_pair(backend, ...)` and `speedup_measure`
read it. Folders by concept: onnx/ (lowering), ort/ (ONNX Runtime sessions), tensorrt/, cuda/ (PyTorch on a
GPU), measure/ (timing, statistics, latency pairs), tables/ (per-layer latency tables), check/ (`prunefx
check`); the old flat module paths still import, with a DeprecationWarning (runtime/_moved.py).

This is the only layer that imports onnx, onnxruntime, onnx_graphsurgeon, tensorrt and torch_tensorrt
(the last two only when a TensorRT backend is used: without them the rest works and those backends say
what to install).
"""

from prunefx.runtime import _moved
from prunefx.runtime.backends.ort import onnx_side_by_side
from prunefx.runtime.errors import (
    BackendUnavailableError,
    DeviceToolError,
    MeasurementError,
    OnnxExportError,
    OnnxSessionError,
    ParityError,
)
from prunefx.runtime.measure.deployment_report import (
    Variant,
    read_variants,
    variants_from_compress,
    write_chart,
    write_deployment_report,
)
from prunefx.runtime.measure.gpu_latency import compare_gpu_latency, measure_gpu_latency
from prunefx.runtime.measure.latency import LatencyComparison, LatencyStats, compare_latency, measure_latency
from prunefx.runtime.measure.pairs import latency_pair, speedup_measure
from prunefx.runtime.measure.speedup import onnx_latency_pair, onnx_speedup
from prunefx.runtime.onnx.export import OnnxExport, export_onnx
from prunefx.runtime.onnx.float16 import lower_to_float16
from prunefx.runtime.onnx.parity import OutputParity, Parity, check_parity, program_parity
from prunefx.runtime.onnx.provenance import map_to_program, onnx_node_origins
from prunefx.runtime.onnx.quantized import (
    QuantizedExport,
    export_quantized_lowerings,
    export_quantized_onnx,
    onnxruntime_lowering,
)
from prunefx.runtime.ort.runners import OnnxRunner, OnnxRunnerMaker, TorchRunner, onnx_runner, torch_runner
from prunefx.runtime.ort.session import DEFAULT_THREADS, LATENCY_THREADS, OnnxRuntimeSession
from prunefx.runtime.tensorrt.engine import Engine, build_engine
from prunefx.runtime.tensorrt.engine_cache import engine_cache_key
from prunefx.runtime.tensorrt.jetson import (
    JetsonState,
    TegrastatsSampler,
    jetson_state,
    parse_tegrastats_line,
)
from prunefx.runtime.tensorrt.layer_profile import (
    LayerProfile,
    build_layer_profile,
    format_profile_table,
    onnx_nodes_of_layer,
    parse_engine_information,
    profile_engine,
)
from prunefx.runtime.tensorrt.plan import BuildOptions
from prunefx.runtime.tensorrt.torch_compiled import compile_torch_tensorrt
from prunefx.runtime.tensorrt.trtexec_command import TrtexecOptions, run_trtexec, trtexec_arguments
from prunefx.runtime.tensorrt.trtexec_output import parse_performance_summary

_moved.install()

__all__ = [
    "DEFAULT_THREADS", "LATENCY_THREADS", "BackendUnavailableError", "BuildOptions", "DeviceToolError", "Engine", "JetsonState",
    "LatencyComparison", "LatencyStats", "LayerProfile", "MeasurementError", "OnnxExport", "OnnxExportError",
    "OnnxRunner", "OnnxRuntimeSession", "OnnxSessionError", "OutputParity", "Parity", "ParityError",
    "TegrastatsSampler", "TorchRunner", "TrtexecOptions", "Variant", "build_engine", "build_layer_profile",
    "check_parity", "compare_gpu_latency", "compare_latency", "compile_torch_tensorrt", "engine_cache_key",
    "export_onnx", "format_profile_table", "jetson_state", "latency_pair", "map_to_program", "measure_gpu_latency",
    "measure_latency", "onnx_node_origins", "onnx_nodes_of_layer", "QuantizedExport", "export_quantized_lowerings", "export_quantized_onnx", "lower_to_float16", "onnx_latency_pair", "onnx_side_by_side", "onnxruntime_lowering", "onnx_runner", "OnnxRunnerMaker", "onnx_speedup", "parse_engine_information",
    "parse_performance_summary", "parse_tegrastats_line", "profile_engine", "program_parity", "read_variants", "run_trtexec", "speedup_measure",
    "torch_runner", "trtexec_arguments", "variants_from_compress", "write_chart", "write_deployment_report",
]
