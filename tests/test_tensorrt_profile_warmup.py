"""A TensorRT layer profile starts once the engine's times have settled, not after a fixed count of runs: a GPU
whose clocks are still down reads every layer slow. Checked with a stand-in engine (no TensorRT here) that runs
slower for its first calls, its clocks ramping up."""

from __future__ import annotations

from types import SimpleNamespace

from prunefx.runtime.tensorrt.layer_profile import profile_engine

SLOW_CALLS = 25  # more than the warm-up count asked: a count-only warm-up would profile slow runs


class _SlowToWarmEngine:
    def __init__(self):
        self.calls, self.profiled = 0, []

        class IProfiler:
            def __init__(self):
                pass

        self.trt = SimpleNamespace(IProfiler=IProfiler)
        self.context = SimpleNamespace(profiler=None)

    def ms(self) -> float:
        """Clocks ramping up: each of the first SLOW_CALLS runs faster than the one before, then steady."""
        return 1.0 + 9.0 * max(SLOW_CALLS - self.calls, 0) / SLOW_CALLS

    def time_once(self) -> float:
        self.calls += 1
        return self.ms()

    def __call__(self):
        self.calls += 1
        if self.context.profiler is not None:
            self.profiled.append(self.calls)
            self.context.profiler.report_layer_time("conv", self.ms())


def test_profiling_waits_until_the_engine_runs_at_speed():
    engine = _SlowToWarmEngine()
    times = profile_engine(engine, warmup=10, runs=5, warm_seconds=1e-9)
    assert len(engine.profiled) == 5 and min(engine.profiled) >= SLOW_CALLS
    assert times.medians() == {"conv": 1.0}
