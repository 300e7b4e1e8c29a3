"""The trtexec program (Jetson boards): the same ONNX files as `trt`, built and timed by trtexec.

trtexec runs are separate processes, one after the other, not alternately, so a load change between the
two runs is not cancelled out as it is on the other backends; medians are trtexec's GPU compute time, and
trtexec keeps its own warm-up (in milliseconds), so `warmup` is not read. `profile` reads trtexec's
--exportProfile and --exportLayerInfo.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from prunefx.runtime.backends.base import BenchModel, Settings
from prunefx.runtime.backends.facts import TrtexecFacts
from prunefx.runtime.backends.gpu_pair import pair_of
from prunefx.runtime.backends.tensorrt_common import TensorRTFamily, onnx_files
from prunefx.runtime.measure.last_used import LastUsed
from prunefx.runtime.measure.latency import LatencyStats
from prunefx.runtime.measure.speedup import PairMeasurer, medians_and_spread
from prunefx.runtime.tensorrt.input_shapes import InputShapes, dynamic_input_shapes
from prunefx.runtime.tensorrt.layer_profile import LayerProfile, build_layer_profile, parse_engine_information
from prunefx.runtime.tensorrt.trtexec_command import (
    ASSUMED_VERSION,
    BuiltEngine,
    TrtexecOptions,
    build_with_trtexec,
    find_trtexec,
    run_trtexec,
    time_with_trtexec,
    trtexec_version,
)


class TrtexecBackend(TrtexecFacts, TensorRTFamily):
    needs = "the trtexec program (JetPack's, or on PATH; --trtexec PATH)"
    options = frozenset({"trtexec", "sparse"})
    reads_warmup = False  # trtexec warms up for its own --warmUp milliseconds

    def check_installed(self, settings: Settings) -> None:
        find_trtexec(settings.trtexec)

    def software_version(self, settings: Settings) -> str:
        return trtexec_version(find_trtexec(settings.trtexec)) or ASSUMED_VERSION  # as run_trtexec assumes

    def software(self, settings: Settings) -> str:
        return f"trtexec of TensorRT {self.software_version(settings)}"

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        precision = settings.precision or self.default_precision
        engines = _Engines(find_trtexec(settings.trtexec), precision, settings.sparse)

        def timing(a: tuple, b: tuple, *, runs: int, warmup: int) -> tuple[float, float, float]:
            return medians_and_spread(*(engines.timed(entry, runs) for entry in (a, b)))

        return self.stamped(pair_of(onnx_files(settings.batch, settings.opset), timing, settings,
                                    self.width_multiple(precision), int8_refusal=self.int8_refusal_at(settings),
                                    holds=(engines,), sampled=False), settings)

    def _options(self, settings: Settings, model: BenchModel) -> TrtexecOptions:
        return TrtexecOptions(precision=settings.precision or self.default_precision, sparse=settings.sparse,
                              iterations=settings.runs, input_shapes=dynamic_input_shapes(model.onnx, model.inputs))

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        report = {}
        for side, model in zip(("a", "b"), models):
            result = run_trtexec(model.onnx, self._options(settings, model), executable=settings.trtexec)
            report[side] = {**result.latency.to_dict(), "trtexec": result.to_dict()}
        timed = " and ".join(str(side["runs"]) for side in report.values())
        notes = [f"trtexec timed {timed} queries: at least --runs, for at least {TrtexecOptions.duration_s:g} s"]
        if "b" not in report:
            return {"latency": report["a"], "notes": notes}
        return {**report, "speedup": report["a"]["median_ms"] / report["b"]["median_ms"], "notes": notes,
                "note": "trtexec runs one after the other, not alternately"}

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        result = run_trtexec(model.onnx, self._options(settings, model), executable=settings.trtexec, profile=True)
        return build_layer_profile(result.layer_times, parse_engine_information(result.layer_info or "{}"),
                                   model.onnx, model.program, runs=result.profiled_runs, source="trtexec")


class _Engines:
    """trtexec's engines by file sha256, each in a folder of its own: the dense model is timed against every
    candidate, and building it again each time would cost minutes on a Jetson. The two used last stay, with the
    shapes they were built at (measure/last_used.LastUsed), the others are removed; the builds of one search share
    a timing cache."""

    def __init__(self, program: str, precision: str, sparse: bool = False):
        self.program, self.precision, self.sparse = program, precision, sparse
        self.version = trtexec_version(program) or ASSUMED_VERSION
        self.folder = tempfile.TemporaryDirectory(prefix="prunefx-trtexec-engines-")
        self.built = LastUsed(released=lambda built: shutil.rmtree(built[0].path.parent, ignore_errors=True))

    def close(self) -> None:
        """Every engine removed (their shared timing cache stays: a later build reads it)."""
        self.built.clear()

    def timed(self, entry: tuple, runs: int) -> LatencyStats:
        path, inputs, sha = entry
        engine, shapes = self.built.get(sha, lambda: self._build(path, inputs, sha))
        options = TrtexecOptions(precision=self.precision, sparse=self.sparse, iterations=runs, input_shapes=shapes)
        return time_with_trtexec(engine, options, self.program, self.version).latency

    def _build(self, path, inputs, sha: str) -> tuple[BuiltEngine, InputShapes]:
        shapes = dynamic_input_shapes(path, inputs)
        folder = Path(self.folder.name) / sha
        folder.mkdir()
        options = TrtexecOptions(precision=self.precision, sparse=self.sparse, input_shapes=shapes)
        return build_with_trtexec(path, options, self.program, self.version, folder,
                                  timing_cache=Path(self.folder.name) / "timing.cache"), shapes


BACKEND = TrtexecBackend()
