"""Latency of runners that time themselves on the GPU with CUDA events (runtime/tensorrt_engine.Engine.time_once,
a compiled Torch-TensorRT module, a CUDA-graph replay of runtime/cuda_graph.GpuModel): one runner, or two
measured alternately for a fair speed-up."""

from __future__ import annotations

from collections.abc import Callable

from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.latency import CONFIDENCE, LatencyComparison, LatencyStats, ratio_interval


def measure_gpu_latency(timed: Callable[[], float], *, warmup: int = 50, runs: int = 200) -> LatencyStats:
    """Median/p90/p99 of `timed()` (a run that returns its own milliseconds, e.g. Engine.time_once)."""
    _check(warmup, runs)
    for _ in range(warmup):
        timed()
    return LatencyStats.from_seconds([timed() / 1e3 for _ in range(runs)])


def compare_gpu_latency(timed_a: Callable[[], float], timed_b: Callable[[], float], *, warmup: int = 50,
                        runs: int = 200) -> LatencyComparison:
    """Two CUDA-event-timed runners measured alternately (a, b, a, b, ...): no CPU thread pool spins between
    runs here, so call-by-call alternation is fair (latency.compare_latency needs blocks for that)."""
    _check(warmup, runs)
    for _ in range(warmup):
        timed_a()
        timed_b()
    samples_a, samples_b = [], []
    for _ in range(runs):
        samples_a.append(timed_a() / 1e3)
        samples_b.append(timed_b() / 1e3)
    a, b = LatencyStats.from_seconds(samples_a), LatencyStats.from_seconds(samples_b)
    low, high = ratio_interval([[x] for x in samples_a], [[x] for x in samples_b])  # call-by-call pairs
    return LatencyComparison(a=a, b=b, speedup=a.median_ms / b.median_ms if b.median_ms > 0 else float("inf"),
                             speedup_low=low, speedup_high=high, confidence=CONFIDENCE)


def _check(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise MeasurementError(f"a latency measurement needs runs >= 1 and warmup >= 0, got {runs} and {warmup}")
