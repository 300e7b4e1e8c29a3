"""Warm-up by time until the timings settle (runtime/measure/gpu_latency.py), against a stand-in GPU whose clocks
ramp up: its first samples are slow, as an idle GPU's are, and a fake clock says how long each took."""

from __future__ import annotations

import pytest

from prunefx.runtime.measure.gpu_latency import WarmUp, compare_gpu_latency, warm_until_steady


class RampingGpu:
    """A runner whose time falls from `slow` to `fast` ms over its first `ramp` calls (clocks coming up), and
    a clock that advances by each call's time."""

    def __init__(self, slow: float = 3.0, fast: float = 1.0, ramp: int = 40):
        self.slow, self.fast, self.ramp, self.calls, self.now = slow, fast, ramp, 0, 0.0

    def __call__(self) -> float:
        ms = self.fast + (self.slow - self.fast) * max(self.ramp - self.calls, 0) / self.ramp
        self.calls += 1
        self.now += ms / 1e3
        return ms

    def clock(self) -> float:
        return self.now


def test_warm_up_goes_on_until_the_clocks_are_up_not_for_a_count():
    gpu = RampingGpu()
    warmed = warm_until_steady([gpu], WarmUp(warmup=5, seconds=0.01, max_seconds=10), gpu.clock)
    assert warmed.settled and warmed.calls >= gpu.ramp  # a count of 5 would have stopped on the ramp
    assert gpu() == pytest.approx(gpu.fast)


def test_warm_up_lasts_at_least_its_seconds_and_stops_at_its_limit():
    steady = RampingGpu(slow=1.0, fast=1.0, ramp=1)
    warmed = warm_until_steady([steady], WarmUp(warmup=1, seconds=0.5, max_seconds=10), steady.clock)
    assert warmed.settled and warmed.seconds >= 0.5 and warmed.calls >= 500
    drifting = RampingGpu(slow=1000.0, fast=1.0, ramp=10**6)  # never settles within the limit
    warmed = warm_until_steady([drifting], WarmUp(warmup=1, seconds=0.1, max_seconds=2), drifting.clock)
    assert not warmed.settled and 2 <= warmed.seconds < 3


def test_a_measured_pair_reads_the_warm_clocks_on_both_sides():
    """Without time-based warm-up the first (slow) samples would be measured: the candidate would read up to
    3x slower than it runs."""
    gpu = RampingGpu()
    comparison = compare_gpu_latency(gpu, gpu, warmup=2, runs=20, warm_seconds=0.01, clock=gpu.clock)
    assert comparison.a.median_ms == pytest.approx(gpu.fast) and comparison.b.median_ms == pytest.approx(gpu.fast)
