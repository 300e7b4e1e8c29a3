"""Latency of runners that time themselves on the GPU with CUDA events (runtime/tensorrt/engine.Engine.time_once,
a compiled Torch-TensorRT module, runtime/cuda/graph.GpuModel.time_once): one runner, or two measured
alternately for a fair speed-up.

A sample is many back-to-back calls between one pair of events (`BackToBack`, `calls_per_sample`): one short
call alone would time its launch, the GPU idle while the host enqueues it. Each sample is led by a short busy-wait
on the GPU (`LEAD_CYCLES`, torch.cuda._sleep), which keeps it busy while the start event and the timed calls are
enqueued behind it: the start is then stamped when the GPU reaches the timed work, not when the host asks, and the
first call's launch is not timed. A wait, not an untimed call: a call of a millisecond would double every sample.

Warm-up is time, not a count: after seconds of CPU work between candidates a GPU's clocks are down (an idle
H200 read 345 MHz, a busy one 1980 MHz), so both runners are called until their times settle (the medians of
the last two windows of samples agree) and at least `warm_seconds` have passed. Alternation then protects the
ratio, and the settled warm-up the absolute milliseconds a `--latency-ms` budget reads.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.measure.latency import LatencyComparison, LatencyStats, comparison_of_blocks
from prunefx.runtime.measure.timing_loop import in_turn

WARM_SECONDS = 0.3  # what a GPU measurement warms up for at least (runners on a real GPU)
WINDOW = 5          # samples per window of the settling check
TOLERANCE = 0.03    # the last two windows' medians within this fraction: settled
SAMPLE_MS = 1.0     # one timed sample: back-to-back calls between one pair of events, at least this long
MAX_CALLS = 2000    # calls in one sample
# Alternating pairs of samples per unit of a speed-up's interval: neighbouring samples share the GPU's clocks and
# temperature, so one pair is not independent of the next, and an interval over single pairs would be too narrow.
BLOCK = 10
LEAD_CYCLES = 100_000  # GPU clock cycles of the busy-wait before a sample's start event: about 50 us at 2 GHz


def calls_per_sample(per_call_ms: float) -> int:
    """The back-to-back calls a sample takes to last SAMPLE_MS, when one takes `per_call_ms` (1 to MAX_CALLS)."""
    return min(max(math.ceil(SAMPLE_MS / max(per_call_ms, 1e-6)), 1), MAX_CALLS)


def event_ms(run: Callable[[], object], calls: int = 1, stream=None) -> float:
    """Milliseconds per call of `calls` back-to-back calls of `run`, between one pair of CUDA events recorded on
    `stream` (the current stream when None), where `run` enqueues its work."""
    import torch  # here: the CPU paths that import this module never start CUDA

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _keep_busy(run, stream)  # the start event waits behind it: the GPU is busy when the timed calls begin
    start.record(stream)
    for _ in range(calls):
        run()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / calls


def _keep_busy(run: Callable[[], object], stream) -> None:
    """Enqueue LEAD_CYCLES of busy-waiting on `stream` (the current one when None); where torch has no such wait,
    one untimed call of `run` instead."""
    import torch

    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        run()
        return
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        sleep(LEAD_CYCLES)


class BackToBack:
    """A runner's sampling for work that enqueues on the GPU (an engine's execute, a compiled module's call):
    `sampler(call)` takes one sample of as many back-to-back calls of `call` as last SAMPLE_MS, between one
    pair of events on `stream`, and reads as the milliseconds of one call. The count is chosen on the first
    sample, after one untimed call (lazy set-up), and kept, so every sample of a runner is alike. The call is
    handed in each time, not kept: an engine holding a sampler that held its bound method would be a cycle,
    alive after its last reference went (and its GPU memory with it). `timer`: event_ms's signature."""

    def __init__(self, stream=None, timer: Callable[..., float] = event_ms):
        self.stream, self.timer, self.calls = stream, timer, 0

    def __call__(self, call: Callable[[], object]) -> float:
        if not self.calls:
            self.timer(call, 1, self.stream)
            self.calls = calls_per_sample(self.timer(call, 1, self.stream))
        return self.timer(call, self.calls, self.stream)


@dataclass(frozen=True)
class WarmUp:
    """How long a measurement warmed up: at least `warmup` calls and `seconds`, until settled or `max_seconds`."""

    warmup: int = 10
    seconds: float = 0.0
    max_seconds: float = 3.0


@dataclass(frozen=True)
class Warmed:
    calls: int
    seconds: float
    settled: bool


def _steady(samples: list[float]) -> bool:
    if len(samples) < 2 * WINDOW:
        return False
    last, before = statistics.median(samples[-WINDOW:]), statistics.median(samples[-2 * WINDOW:-WINDOW])
    return abs(last - before) <= TOLERANCE * max(last, 1e-12)


def warm_until_steady(runners: Sequence[Callable[[], float]], warm: WarmUp,
                      clock: Callable[[], float] = time.perf_counter) -> Warmed:
    """Call every runner in turn until each has run `warm.warmup` times, `warm.seconds` have passed and all
    their times have settled, or `warm.max_seconds` have passed."""
    samples: list[list[float]] = [[] for _ in runners]
    start, calls = clock(), 0
    while True:
        elapsed = clock() - start
        if calls >= warm.warmup and elapsed >= warm.seconds:
            settled = all(_steady(s) for s in samples)
            if settled or elapsed >= warm.max_seconds or warm.seconds == 0:
                return Warmed(calls, elapsed, settled)
        for runner, kept in zip(runners, samples):
            kept.append(runner())
        calls += 1


def measure_gpu_latency(timed: Callable[[], float], *, warmup: int = 50, runs: int = 200,
                        warm_seconds: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Median/p90/p99 of `timed()` (a run that returns its own milliseconds, e.g. Engine.time_once)."""
    _check(warmup, runs)
    warm_until_steady([timed], WarmUp(warmup, warm_seconds), clock)
    return LatencyStats.from_seconds([timed() / 1e3 for _ in range(runs)])


def compare_gpu_latency(timed_a: Callable[[], float], timed_b: Callable[[], float], *, warmup: int = 50,
                        runs: int = 200, warm_seconds: float = 0.0,
                        clock: Callable[[], float] = time.perf_counter) -> LatencyComparison:
    """Two CUDA-event-timed runners measured alternately (a b, b a, a b, ...: neither always first): no CPU thread
    pool spins between runs here, so call-by-call alternation is fair (latency.compare_latency needs blocks for
    that). The speed-up is the ratio of the pooled medians, as on the CPU; its interval is over pairs of BLOCK
    samples each."""
    _check(warmup, runs)
    warm_until_steady([timed_a, timed_b], WarmUp(warmup, warm_seconds), clock)
    samples_a, samples_b = [], []
    for index in range(runs):
        for timed, samples in in_turn(((timed_a, samples_a), (timed_b, samples_b)), index):
            samples.append(timed() / 1e3)
    blocks_a, blocks_b = _blocks(samples_a), _blocks(samples_b)
    return comparison_of_blocks(blocks_a, blocks_b, [0] * len(blocks_a))


def _blocks(samples: list[float]) -> list[list[float]]:
    return [samples[start:start + BLOCK] for start in range(0, len(samples), BLOCK)]


def _check(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise MeasurementError(f"a latency measurement needs runs >= 1 and warmup >= 0, got {runs} and {warmup}")
