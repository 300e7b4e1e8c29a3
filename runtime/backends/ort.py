"""ONNX Runtime on this CPU: the default backend.

Budgets time both Programs' ONNX files alternately in this process (runtime/measure/speedup.onnx_latency_pair), and
confirm over fresh processes; `bench --vs` spreads its runs over `rounds` fresh processes, a pair of sessions
each (runtime/measure/latency.compare_rounds). Its width multiple is this CPU's SIMD width in float32 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

from prunefx.runtime.backends.base import Backend, BenchModel, Settings
from prunefx.runtime.measure.latency import compare_rounds
from prunefx.runtime.measure.speedup import Measure, PairMeasurer, onnx_latency_pair, onnx_speedup
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple
from prunefx.runtime.ort.runners import OnnxRunnerMaker


class OnnxRuntimeBackend(Backend):
    name, label, rank = "ort", "ONNX Runtime", 0
    needs = "nothing beyond prunefx (onnxruntime is a dependency); runs on this CPU"
    options = frozenset({"threads", "spinning", "flush_denormals", "rounds"})

    def precision_refusal(self, precision, allowed):
        return (f"precision {precision} applies to the GPU backends; ONNX Runtime times the float32 file "
                "(or the model's INT8 one)")

    def width_multiple(self, precision: str, *, cpuinfo: str | None = None) -> int:
        return onnxruntime_multiple(cpuinfo)

    def width_text(self) -> str:
        return "fp32: 16 with AVX-512, else 8 (read from this CPU)"

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        return onnx_latency_pair(threads=settings.threads, runs=settings.runs, warmup=settings.warmup,
                                 batch=settings.batch)

    def speedup(self, settings: Settings) -> Measure:
        return onnx_speedup(threads=settings.threads, runs=settings.runs, warmup=settings.warmup,
                            batch=settings.batch)

    def maker(self, model: BenchModel, settings: Settings) -> OnnxRunnerMaker:
        return OnnxRunnerMaker(model.onnx, model.inputs, threads=settings.threads, spinning=settings.spinning,
                               flush_denormals=settings.flush_denormals)

    def runner(self, model: BenchModel, settings: Settings):
        return self.maker(model, settings)()

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        if len(models) == 1:
            return super().bench(models, settings)
        makers = [self.maker(model, settings) for model in models]
        return compare_rounds(*makers, rounds=min(settings.rounds, settings.runs), warmup=settings.warmup,
                              runs=settings.runs, threads=settings.threads, processes=True).to_dict()


BACKEND = OnnxRuntimeBackend()
