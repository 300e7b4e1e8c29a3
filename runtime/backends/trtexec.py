"""The trtexec program (Jetson boards): the same ONNX files as `trt`, built and timed by trtexec.

trtexec runs are separate processes, one after the other, not alternately, so a load change between the
two runs is not cancelled out as it is on the other backends; medians are trtexec's GPU compute time, and
trtexec keeps its own warm-up (in milliseconds), so `warmup` is not read. `profile` reads trtexec's
--exportProfile and --exportLayerInfo.
"""

from __future__ import annotations

from collections.abc import Sequence

from prunefx.runtime.backends.base import BenchModel, Settings
from prunefx.runtime.backends.gpu_pair import pair_of
from prunefx.runtime.backends.tensorrt_common import TensorRTFamily, onnx_files
from prunefx.runtime.measure.speedup import PairMeasurer, medians_and_spread
from prunefx.runtime.tensorrt.layer_profile import LayerProfile, build_layer_profile, parse_engine_information
from prunefx.runtime.tensorrt.trtexec_command import (
    ASSUMED_VERSION,
    TrtexecOptions,
    find_trtexec,
    run_trtexec,
    trtexec_version,
)


class TrtexecBackend(TensorRTFamily):
    name, label, rank = "trtexec", "trtexec", 40
    needs = "the trtexec program (JetPack's, or on PATH; --trtexec PATH)"
    options = frozenset({"trtexec", "sparse"})

    def check_installed(self, settings: Settings) -> None:
        find_trtexec(settings.trtexec)

    def software_version(self, settings: Settings) -> str:
        return trtexec_version(find_trtexec(settings.trtexec)) or ASSUMED_VERSION  # as run_trtexec assumes

    def software(self, settings: Settings) -> str:
        return f"trtexec of TensorRT {self.software_version(settings)}"

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        precision = settings.precision or self.default_precision
        program = find_trtexec(settings.trtexec)

        def timing(a: tuple, b: tuple, *, runs: int, warmup: int) -> tuple[float, float, float]:
            stats = [run_trtexec(path, TrtexecOptions(precision=precision, iterations=runs),
                                 executable=program).latency for path, _, _ in (a, b)]
            return medians_and_spread(*stats)

        return pair_of(onnx_files(settings.batch), timing, settings, self.width_multiple(precision),
                       int8_refusal=self.int8_refusal_at(settings))

    def _options(self, settings: Settings) -> TrtexecOptions:
        return TrtexecOptions(precision=settings.precision or self.default_precision, sparse=settings.sparse,
                              iterations=settings.runs)

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        report = {}
        for side, model in zip(("a", "b"), models):
            result = run_trtexec(model.onnx, self._options(settings), executable=settings.trtexec)
            report[side] = {**result.latency.to_dict(), "trtexec": result.to_dict()}
        if "b" not in report:
            return {"latency": report["a"]}
        return {**report, "speedup": report["a"]["median_ms"] / report["b"]["median_ms"],
                "note": "trtexec runs one after the other, not alternately"}

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        result = run_trtexec(model.onnx, self._options(settings), executable=settings.trtexec, profile=True)
        return build_layer_profile(result.layer_times, parse_engine_information(result.layer_info or "{}"),
                                   model.onnx, model.program, runs=result.profiled_runs, source="trtexec")


BACKEND = TrtexecBackend()
