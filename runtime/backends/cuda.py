"""PyTorch on an NVIDIA GPU, no TensorRT: the Program at fp16 or bf16, channels_last, cuDNN autotuned,
optionally compiled by torch.compile (inductor), replayed as a CUDA graph and timed with CUDA events
(runtime/cuda/graph.py says how a sample is taken).

Budgets time the dense model and each candidate alternately, sample by sample, each prepared once by Program
fingerprint (compiling and capturing cost far more than a replay); only the dense model and the candidate
being measured stay on the GPU. `bench` times the same replays, a latency table times each layer as a plain
module (runtime/cuda/layer_timer.py) and `profile` replays each graph node (runtime/cuda/node_profile.py). The
device, its timer and the graph capture all go through `self.device` (a CudaDevice), which tests fake.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from prunefx.graph import Program
from prunefx.graph.fingerprint import fingerprint
from prunefx.runtime.backends.base import Backend, BenchModel, Settings
from prunefx.runtime.backends.facts import CudaFacts
from prunefx.runtime.backends.gpu_pair import gpu_timing, pair_of
from prunefx.runtime.cuda.graph import CudaDevice, GpuModel
from prunefx.runtime.cuda.layer_timer import CudaLayerTimer
from prunefx.runtime.cuda.node_profile import cuda_profile
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError
from prunefx.runtime.measure.last_used import LastUsed
from prunefx.runtime.measure.measured_files import deployed
from prunefx.runtime.measure.speedup import PairMeasurer
from prunefx.runtime.measure.width_multiple import CUDA_TENSOR_CORE_MULTIPLE
from prunefx.runtime.tensorrt.layer_profile import LayerProfile


class CudaBackend(CudaFacts, Backend):
    needs = "an NVIDIA GPU and torch built with CUDA (no TensorRT); --compile also needs triton"
    # a GPU layer's time does not follow its MACs: the table's choice measured faster than the MACs choice on
    # every model compared at equal MACs (docs/benchmarks/gpu-speedup.md)
    channel_choice = "latency"
    reads, gpu_timed = "program", True
    # PyTorch on the GPU would run the fake quantizers as float operators
    int8_refusal = "the cuda backend runs no INT8 kernels (ONNX Runtime and TensorRT do)"
    options = frozenset({"compile"})

    def __init__(self, device: CudaDevice | None = None):
        self.device = device or CudaDevice()

    def check_installed(self, settings: Settings) -> None:
        if not self.device.available():
            raise BackendUnavailableError(self.device.unavailable_reason())
        reason = self.device.refusal(settings.precision or self.default_precision, settings.compile)
        if reason:
            raise BackendUnavailableError(reason)

    def width_multiple(self, precision: str) -> int:
        return CUDA_TENSOR_CORE_MULTIPLE[precision]

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        precision = settings.precision or self.default_precision
        models = PreparedModels(self.device, precision, settings.batch, settings.compile)
        timing = gpu_timing(lambda entry: entry[0].time_once, self.device.warm_seconds)
        pair = pair_of(models, timing, settings, self.width_multiple(precision), int8_refusal=self.int8_refusal_at(settings))
        pair.notes, pair.facts = models.notes, models.facts
        return self.stamped(pair, settings)

    def layer_timer(self, settings: Settings) -> CudaLayerTimer:
        """Latency-table entries as plain modules on the GPU (runtime/cuda/layer_timer.py), at the precision."""
        return CudaLayerTimer(self.device, settings.precision or self.default_precision)

    def prepared(self, model: BenchModel, settings: Settings, **options) -> GpuModel:
        return GpuModel(model.program, precision=settings.precision or self.default_precision, device=self.device,
                        **options)

    def runner(self, model: BenchModel, settings: Settings):
        return self.prepared(model, settings, compile=settings.compile).time_once

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        prepared = [self.prepared(model, settings, compile=settings.compile) for model in models]
        if any(model.capture_failed for model in prepared):  # graphs against eager calls: not like with like
            sample_alike(prepared)
        report = self.time_runners([model.time_once for model in prepared], settings)
        reasons = sorted({model.reason for model in prepared if model.reason})
        return {**report, "cuda_graph": all(model.mode == "graph" for model in prepared),
                "timing": [model.timing() for model in prepared], "warm_seconds": self.device.warm_seconds,
                **({"notes": reasons} if reasons else {}), **self.device.describe()}

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        if settings.compile:
            raise MeasurementError("--compile does not apply to profile: nodes are timed eagerly, one at a time")
        return cuda_profile(self.prepared(model, settings, capture=False), warmup=settings.warmup, runs=settings.runs)


ALIKE = "timed eagerly, many calls back to back, as a model it is compared with could not be captured"


def sample_alike(models) -> None:
    """The models sampled as CUDA graphs sampled eagerly instead, as a model compared with them has to be."""
    for model in models:
        if model.mode == "graph":
            model.sample_eagerly(ALIKE)


def _eager(key: str) -> str:
    return key.rpartition(":")[0] + ":eager"


class PreparedModels:
    """GpuModels by Program fingerprint, each cut to `batch` and prepared once. Only the `keep` models used
    last stay on the GPU (the dense model, fetched for every measurement, and the candidate): a search meets
    hundreds. `notes` collects why a model was timed eagerly."""

    def __init__(self, device: CudaDevice, precision: str, batch: int, compile: bool, keep: int = 2):
        self.device, self.precision, self.batch, self.compile = device, precision, batch, compile
        # the least recently used goes, with its graph and memory pool
        self.models = LastUsed(keep, freed=device.release)
        self.notes: list[str] = []
        self.capture = True  # until a model cannot be captured: from then on every model is sampled eagerly

    def key(self, program: Program) -> str:
        """The Program's fingerprint and how it is sampled now: a pair measured as graphs is not an answer once
        models are sampled eagerly (the pair's cache keys on this)."""
        return f"{fingerprint(program)}:{'graph' if self.capture else 'eager'}"

    def get(self, program: Program, key: str | None = None) -> tuple[GpuModel, str]:
        """The prepared model of `program`, whose `key` is given where the caller knows it already."""
        key = key or self.key(program)
        entry = self.models.get(key, lambda: (self._prepared(program), key))
        if not self.capture and key.endswith(":graph"):
            # a capture failed meanwhile: the models kept are sampled eagerly now, and the next pair asks for them by
            # their eager keys (else it would prepare the dense model again)
            self.models.rekey(lambda old, kept: (_eager(old), (kept[0], _eager(old))))
            entry = self.models.get(_eager(key), lambda: (self._prepared(program), _eager(key)))
        return entry

    def _prepared(self, program: Program) -> GpuModel:
        model = GpuModel(deployed(program, self.batch), precision=self.precision, device=self.device,
                         compile=self.compile, capture=self.capture)
        if model.capture_failed:  # a graph against eager calls would not compare like with like
            self.capture = False
            sample_alike(kept for kept, _ in self.models.entries.values())
        elif not self.capture:
            model.reason = model.reason or ALIKE
        if model.reason and model.reason not in self.notes:
            self.notes.append(model.reason)
            warnings.warn(f"cuda backend: {model.reason}", stacklevel=4)
        return model

    def close(self) -> None:
        """Every model off the GPU, with its graph and memory pool (a later `get` prepares it again)."""
        self.models.clear()

    def facts(self) -> dict:
        """What a budget report says of the measurements: how samples were taken, warm-up, autotuning, memory."""
        return {**self.device.describe(), "warm_seconds": self.device.warm_seconds,
                "models_prepared": self.models.made, "models_freed": self.models.dropped,
                "peak_gpu_memory_bytes": self.device.peak_memory(),
                "timing": [model.timing() for model, _ in self.models.entries.values()]}


BACKEND = CudaBackend()
