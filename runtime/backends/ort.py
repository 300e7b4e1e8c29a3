"""ONNX Runtime on this CPU: the default backend.

Budgets time both Programs' ONNX files alternately in this process (runtime/measure/speedup.onnx_latency_pair), and
confirm over fresh processes; every speed-up a command reports (`bench --vs`, compress, quantize, demo) spreads
its runs over `rounds` fresh processes, a pair of sessions each (`onnx_side_by_side`,
runtime/measure/latency.compare_rounds). Its width multiple is this CPU's SIMD width in float32 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prunefx.runtime.backends.base import Backend, BenchModel, Settings
from prunefx.runtime.backends.facts import OnnxRuntimeFacts
from prunefx.runtime.measure.latency import LatencyComparison, compare_rounds
from prunefx.runtime.measure.speedup import PairMeasurer, onnx_latency_pair
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple
from prunefx.runtime.ort.profile_nodes import ort_profile
from prunefx.runtime.ort.runners import OnnxRunnerMaker, timing_flushes_denormals
from prunefx.runtime.tensorrt.layer_profile import LayerProfile


class OnnxRuntimeBackend(OnnxRuntimeFacts, Backend):
    needs = "nothing beyond prunefx (onnxruntime is a dependency); runs on this CPU"
    options = frozenset({"threads", "spinning", "flush_denormals", "rounds"})
    times_on_cpu = True
    float32_only = True

    def precision_refusal(self, precision, allowed):
        return (f"precision {precision} applies to the GPU backends; ONNX Runtime times the float32 file "
                "(or the model's INT8 one)")

    def width_multiple(self, precision: str, *, cpuinfo: str | None = None) -> int:
        return onnxruntime_multiple(cpuinfo)

    def width_text(self) -> str:
        return "fp32: 16 with AVX-512, else 8 (read from this CPU)"

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        return self.stamped(onnx_latency_pair(threads=settings.threads, runs=settings.runs, warmup=settings.warmup,
                                              batch=settings.batch, opset=settings.opset,
                                              confirm_rounds=settings.rounds, spinning=settings.spinning,
                                              flush_denormals=settings.flush_denormals), settings)

    def runner(self, model: BenchModel, settings: Settings):
        return OnnxRunnerMaker(model.onnx, model.inputs, threads=settings.threads, spinning=settings.spinning,
                               flush_denormals=settings.flush_denormals)()

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        if len(models) == 1:
            return super().bench(models, settings)
        return onnx_side_by_side([(model.onnx, model.inputs) for model in models], settings).to_dict()

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        flush = timing_flushes_denormals() if settings.flush_denormals is None else settings.flush_denormals
        return ort_profile(model.onnx, model.inputs, threads=settings.threads, spinning=settings.spinning,
                           flush_denormals=flush, warmup=settings.warmup, runs=settings.runs)


def onnx_side_by_side(files: Sequence[tuple[Path, Sequence]], settings: Settings, *,
                      progress: bool | None = None) -> LatencyComparison:
    """Two ONNX files (each with its inputs), timed alternately over `settings.rounds` fresh processes, a pair of
    sessions each: the one way a command reports a speed-up on ONNX Runtime (`bench --vs`, compress, quantize,
    demo), with the interval that covers where a fresh process lands. A bar counts the runs (`progress` None: on
    a terminal)."""
    makers = [OnnxRunnerMaker(path, list(inputs), threads=settings.threads, spinning=settings.spinning,
                              flush_denormals=settings.flush_denormals) for path, inputs in files]
    return compare_rounds(*makers, rounds=min(settings.rounds, settings.runs), warmup=settings.warmup,
                          runs=settings.runs, threads=settings.threads, processes=True, progress=progress)


BACKEND = OnnxRuntimeBackend()
