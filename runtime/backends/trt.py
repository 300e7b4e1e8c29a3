"""TensorRT engines built from the ONNX file with the TensorRT Python API, timed with CUDA events.

Budgets: both Programs cut to the batch, exported (dynamo; a fake-quantized Program in TensorRT's symmetric
S8 Q/DQ form), built into engines (runtime/tensorrt/engine.py, cached on disk by file bytes and options) and
timed alternately. A file with Q/DQ nodes has its Q/DQ layers in INT8 and the others at the budget's precision
(runtime/tensorrt/plan.network_plan). `profile` times each
engine layer with an IProfiler (runtime/tensorrt/layer_profile.py).
"""

from __future__ import annotations

from collections.abc import Callable

from prunefx.runtime.backends.base import BenchModel, Settings
from prunefx.runtime.backends.facts import TensorRTFacts
from prunefx.runtime.backends.gpu_pair import gpu_timing, pair_of
from prunefx.runtime.backends.tensorrt_common import TensorRTFamily, onnx_files
from prunefx.runtime.measure.last_used import LastUsed
from prunefx.runtime.measure.speedup import PairMeasurer
from prunefx.runtime.tensorrt.engine import build_engine, free_gpu_cache, require_cuda, require_tensorrt
from prunefx.runtime.tensorrt.input_shapes import dynamic_input_shapes
from prunefx.runtime.tensorrt.layer_profile import (
    LayerProfile,
    build_layer_profile,
    parse_engine_information,
    profile_engine,
)
from prunefx.runtime.tensorrt.plan import BuildOptions


class TensorRTBackend(TensorRTFacts, TensorRTFamily):
    needs = "the `tensorrt` Python package and an NVIDIA GPU with CUDA"
    options = frozenset({"cache_dir", "sparse", "calibration"})

    def check_installed(self, settings: Settings) -> None:
        require_tensorrt()
        require_cuda()

    def software_version(self, settings: Settings) -> str:
        return str(require_tensorrt().__version__)

    def software(self, settings: Settings) -> str:
        return f"TensorRT {self.software_version(settings)}"

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        engines = _Engines(settings.precision or self.default_precision, settings.cache_dir, settings.sparse)
        return self.stamped(pair_of(onnx_files(settings.batch, settings.opset), gpu_timing(engines.timed), settings,
                                    self.width_multiple(settings.precision or self.default_precision),
                                    int8_refusal=self.int8_refusal_at(settings), holds=(engines,)), settings)

    def engine(self, model: BenchModel, settings: Settings):
        """The (cached) engine for the model's file with the settings' precision, sparsity and calibration."""
        options = BuildOptions(precision=settings.precision or self.default_precision, sparse=settings.sparse,
                               input_shapes=dynamic_input_shapes(model.onnx, model.inputs))
        engine = build_engine(model.onnx, options, calibration=model.calibration, cache_dir=settings.cache_dir)
        engine.set_inputs(*[x.cuda() for x in model.inputs])
        return engine

    def runner(self, model: BenchModel, settings: Settings):
        return self.engine(model, settings).time_once

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        engine = self.engine(model, settings)
        times = profile_engine(engine, warmup=settings.warmup, runs=settings.runs)
        return build_layer_profile(times.medians(), parse_engine_information(engine.engine_information()),
                                   model.onnx, model.program, runs=times.runs, source="tensorrt")


class _Engines:
    """TensorRT engines by file sha256, inputs bound: the dense model's engine is timed against every
    candidate, and loading it again each time would cost a deserialization and fresh GPU buffers. The two used
    last stay loaded (measure/last_used.LastUsed): a search's every engine kept would fill a Jetson's memory."""

    def __init__(self, precision: str, cache_dir: str | None, sparse: bool = False):
        self.precision, self.cache_dir, self.sparse = precision, cache_dir, sparse
        self.loaded = LastUsed(freed=free_gpu_cache)

    def close(self) -> None:
        """Every engine unloaded (a later measurement loads it again, from the engine cache where one is kept)."""
        self.loaded.clear()

    def timed(self, entry: tuple) -> Callable[[], float]:
        path, inputs, sha = entry
        return self.loaded.get(sha, lambda: self._load(path, inputs)).time_once

    def _load(self, path, inputs):
        options = BuildOptions(precision=self.precision, sparse=self.sparse,
                               input_shapes=dynamic_input_shapes(path, inputs))
        engine = build_engine(path, options, cache_dir=self.cache_dir)
        engine.set_inputs(*[x.cuda() for x in inputs])
        return engine


BACKEND = TensorRTBackend()
