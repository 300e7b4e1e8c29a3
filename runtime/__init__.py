"""Lowering and measuring: ONNX export with graph-surgeon cleanup, ONNX Runtime, parity, latency, TensorRT
engines and per-layer profiles, Torch-TensorRT, PyTorch on CUDA, trtexec on Jetson boards, deployment reports.
The latency backends are a registry (runtime/backends/): `latency_pair(backend, ...)` and `speedup_measure`
read it. Folders by concept: onnx/ (lowering), ort/ (ONNX Runtime sessions), tensorrt/, cuda/ (PyTorch on a
GPU), measure/ (timing, statistics, latency pairs), tables/ (per-layer latency tables), check/ (`prunefx
check`); the old flat module paths still import, with a DeprecationWarning (runtime/_moved.py).

This is the only layer that imports onnx, onnxruntime, onnx_graphsurgeon, tensorrt and torch_tensorrt
(the last two only when a TensorRT backend is used: without them the rest works and those backends say
what to install).

The names below are imported on first use (as prunefx's own are): `prunefx check`, which reads an ONNX file with
onnx alone, takes no torch.
"""

from prunefx.graph.lazy_package import lazy_names
from prunefx.runtime import _moved

# module (under prunefx.runtime) -> the names it defines
_MODULES = {
    "backends.ort": ("onnx_side_by_side",),
    "errors": (
        "BackendUnavailableError", "DeviceToolError", "MeasurementError", "OnnxExportError", "OnnxSessionError",
        "ParityError"
    ),
    "measure.deployment_report": (
        "Variant", "read_variants", "variants_from_compress", "write_chart", "write_deployment_report"
    ),
    "measure.gpu_latency": ("compare_gpu_latency", "measure_gpu_latency"),
    "measure.latency": ("LatencyComparison", "LatencyStats", "compare_latency", "measure_latency"),
    "measure.pairs": ("latency_pair", "speedup_measure"),
    "measure.speedup": ("onnx_latency_pair", "onnx_speedup"),
    "onnx.export": ("OnnxExport", "export_onnx"),
    "onnx.float16": ("lower_to_float16",),
    "onnx.parity": ("OutputParity", "Parity", "check_parity", "program_parity"),
    "onnx.provenance": ("map_to_program", "onnx_node_origins"),
    "onnx.quantized": (
        "QuantizedExport", "export_quantized_lowerings", "export_quantized_onnx", "onnxruntime_lowering"
    ),
    "ort.runners": ("OnnxRunner", "OnnxRunnerMaker", "TorchRunner", "onnx_runner", "torch_runner"),
    "ort.session": ("OnnxRuntimeSession",),
    "ort.threads": ("DEFAULT_THREADS", "LATENCY_THREADS"),
    "tensorrt.engine": ("Engine", "build_engine"),
    "tensorrt.engine_cache": ("engine_cache_key",),
    "tensorrt.jetson": ("JetsonState", "TegrastatsSampler", "jetson_state", "parse_tegrastats_line"),
    "tensorrt.layer_profile": (
        "LayerProfile", "build_layer_profile", "format_profile_table", "onnx_nodes_of_layer",
        "parse_engine_information", "profile_engine"
    ),
    "tensorrt.plan": ("BuildOptions",),
    "tensorrt.torch_compiled": ("compile_torch_tensorrt",),
    "tensorrt.trtexec_command": ("TrtexecOptions", "run_trtexec", "build_arguments", "timing_arguments"),
    "tensorrt.trtexec_output": ("parse_performance_summary",),
}
_LAZY = {name: f"{__name__}.{module}" for module, names in _MODULES.items() for name in names}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)

_moved.install()

__all__ = sorted(_LAZY)
