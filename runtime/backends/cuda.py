"""PyTorch on an NVIDIA GPU, no TensorRT: the Program at fp16 or bf16, channels_last, optionally compiled
by torch.compile (inductor), replayed as a CUDA graph and timed with CUDA events (runtime/cuda_graph.py).

Budgets time the dense model and each candidate alternately, call by call, each prepared once and cached by
Program fingerprint (compiling and capturing cost far more than a replay). `bench` times the same replays;
`profile` times each graph node eagerly (runtime/cuda_profile.py). The device, its timer and the graph
capture all go through `self.device` (a runtime/cuda_graph.CudaDevice), which tests replace with a fake.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from prunefx.graph import Program
from prunefx.runtime.backends.base import Backend, BenchModel, Settings
from prunefx.runtime.backends.gpu_pair import gpu_timing, pair_of
from prunefx.runtime.cuda_graph import CudaDevice, GpuModel
from prunefx.runtime.cuda_profile import cuda_profile
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError
from prunefx.runtime.speedup import PairMeasurer, deployed, fingerprint
from prunefx.runtime.tensorrt_profile import LayerProfile
from prunefx.runtime.width_multiple import CUDA_TENSOR_CORE_MULTIPLE


class CudaBackend(Backend):
    name, label, rank = "cuda", "PyTorch on CUDA", 20
    needs = "an NVIDIA GPU and torch built with CUDA (no TensorRT); --compile also needs triton"
    precisions = ("fp16", "bf16")
    default_precision = "fp16"
    reads, gpu_timed = "program", True
    options = frozenset({"compile"})

    def __init__(self, device: CudaDevice | None = None):
        self.device = device or CudaDevice()

    def check_installed(self, settings: Settings) -> None:
        if not self.device.available():
            raise BackendUnavailableError(self.device.unavailable_reason())

    def width_multiple(self, precision: str) -> int:
        return CUDA_TENSOR_CORE_MULTIPLE[precision]

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        precision = settings.precision or self.default_precision
        models = PreparedModels(self.device, precision, settings.batch, settings.compile)
        pair = pair_of(models, gpu_timing(lambda entry: entry[0].time_once), settings, self.width_multiple(precision))
        pair.notes = models.notes
        return pair

    def prepared(self, model: BenchModel, settings: Settings, **options) -> GpuModel:
        return GpuModel(model.program, precision=settings.precision or self.default_precision, device=self.device,
                        **options)

    def runner(self, model: BenchModel, settings: Settings):
        return self.prepared(model, settings, compile=settings.compile).time_once

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        prepared = [self.prepared(model, settings, compile=settings.compile) for model in models]
        report = self.time_runners([model.time_once for model in prepared], settings)
        reasons = sorted({model.reason for model in prepared if model.reason})
        return {**report, "cuda_graph": all(model.mode == "graph" for model in prepared),
                **({"notes": reasons} if reasons else {}), **self.device.describe()}

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        if settings.compile:
            raise MeasurementError("--compile does not apply to profile: nodes are timed eagerly, one at a time")
        return cuda_profile(self.prepared(model, settings, capture=False), warmup=settings.warmup, runs=settings.runs)


class PreparedModels:
    """GpuModels by Program fingerprint, each cut to `batch` and prepared once; `notes` collects why a model
    was timed eagerly."""

    def __init__(self, device: CudaDevice, precision: str, batch: int, compile: bool):
        self.device, self.precision, self.batch, self.compile = device, precision, batch, compile
        self.models: dict[str, tuple[GpuModel, str]] = {}
        self.notes: list[str] = []

    def get(self, program: Program) -> tuple[GpuModel, str]:
        key = fingerprint(program)
        if key not in self.models:
            model = GpuModel(deployed(program, self.batch), precision=self.precision, device=self.device,
                             compile=self.compile)
            if model.reason and model.reason not in self.notes:
                self.notes.append(model.reason)
                warnings.warn(f"cuda backend: {model.reason}", stacklevel=2)
            self.models[key] = (model, key)
        return self.models[key]


BACKEND = CudaBackend()
