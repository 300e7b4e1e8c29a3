"""Old import paths of runtime modules that moved into the folders by concept (onnx/, ort/, tensorrt/, check/,
measure/, tables/, cuda/): `import prunefx.runtime.onnx_export` still works, with a DeprecationWarning, and
is the very module `prunefx.runtime.onnx.export` (one module object, so patches and isinstance agree)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "onnx_bounds": "onnx.bounds",
    "onnx_export": "onnx.export",
    "onnx_external": "onnx.external",
    "onnx_float16": "onnx.float16",
    "onnx_integer_units": "onnx.integer_units",
    "onnx_provenance": "onnx.provenance",
    "onnx_qdq": "onnx.qdq",
    "onnx_quantize_static": "onnx.quantize_static",
    "onnx_quantized": "onnx.quantized",
    "onnx_quantized_ort": "onnx.quantized_ort",
    "onnx_reshape_layout": "onnx.reshape_layout",
    "onnx_write": "onnx.write",
    "parity": "onnx.parity",
    "onnxruntime_options": "ort.options",
    "onnxruntime_session": "ort.session",
    "run_interrupts": "ort.interrupts",
    "runners": "ort.runners",
    "tensorrt_cache": "tensorrt.engine_cache",
    "tensorrt_engine": "tensorrt.engine",
    "tensorrt_migration": "tensorrt.migration",
    "tensorrt_plan": "tensorrt.plan",
    "tensorrt_profile": "tensorrt.layer_profile",
    "trtexec": "tensorrt.trtexec_command",
    "torch_tensorrt_backend": "tensorrt.torch_compiled",
    "jetson": "tensorrt.jetson",
    "engine_check": "check.readiness",
    "engine_findings": "check.findings",
    "engine_graph": "check.graph_index",
    "engine_rules": "check.rules",
    "engine_targets": "check.targets",
    "latency": "measure.latency",
    "latency_round": "measure.rounds",
    "timing_loop": "measure.timing_loop",
    "gpu_latency": "measure.gpu_latency",
    "speedup": "measure.speedup",
    "width_multiple": "measure.width_multiple",
    "budget_backends": "measure.pairs",
    "deployment_report": "measure.deployment_report",
    "layer_latency": "tables.table",
    "latency_cache": "tables.times_cache",
    "layer_timers": "tables.timers",
    "backend_layer_timer": "tables.timer_by_name",
    "cuda_layer_timer": "cuda.layer_timer",
    "cuda_graph": "cuda.graph",
    "cuda_profile": "cuda.node_profile",
    "semi_structured": "cuda.semi_structured",
}


class _Alias(importlib.abc.Loader):
    """Loads the old name as the new module itself; importlib writes the old spec into it on the way, which
    exec_module puts back."""

    def __init__(self, new: str):
        self.new, self.spec = new, None

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds `prunefx.runtime.OLD` as the module it became."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.rpartition(".")
        if prefix != __package__ or old not in MOVED:
            return None
        new = f"{__package__}.{MOVED[old]}"
        warnings.warn(f"{fullname} moved to {new}; the old path goes in a later release", DeprecationWarning,
                      stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
