"""The latency pair of backends whose runners time themselves with CUDA events (trt, torch-trt, cuda).

Both models of a pair are timed call by call, alternately (runtime/measure/gpu_latency.compare_gpu_latency), and the
measurements are cached by what is timed (a file's sha256, a Program's fingerprint): the search's short
measurement, `confirm` (CONFIRM_FACTOR x the runs, twice the warm-up) and the longer one share one set of
compiled or built models. A confirmation takes at least MIN_CONFIRM_BLOCKS blocks of samples: its interval is over
blocks, and with fewer than two there is none, so a budget would be judged on a point.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from prunefx.runtime.backends.base import CONFIRM_FACTOR, Settings
from prunefx.runtime.measure import gpu_latency
from prunefx.runtime.measure.gpu_latency import compare_gpu_latency
from prunefx.runtime.measure.speedup import PairMeasurer, cached_pair, timing_of

MIN_CONFIRM_BLOCKS = 3  # the fewest blocks of gpu_latency.BLOCK samples a confirmation's interval is made over


def gpu_timing(timed_of: Callable[[tuple], Callable[[], float]], warm_seconds: float | None = None):
    """timing(entry_a, entry_b, runs=, warmup=) -> Timing, both runners alternately after a warm-up of at least
    `warm_seconds` (None: gpu_latency.WARM_SECONDS when timed); `timed_of(entry)` is the entry's zero-argument
    runner returning its ms."""
    def timing(a: tuple, b: tuple, *, runs: int, warmup: int):
        warm = gpu_latency.WARM_SECONDS if warm_seconds is None else warm_seconds
        return timing_of(compare_gpu_latency(timed_of(a), timed_of(b), warmup=warmup, runs=runs, warm_seconds=warm))

    return timing


def pair_of(sources, timing, settings: Settings, round_to: int, *, int8_refusal: str | None = None,
            holds: Sequence = (), sampled: bool = True) -> PairMeasurer:
    """A PairMeasurer over `sources.get(program) -> entry` (its last item the cache key) timed by
    `timing(a, b, runs=, warmup=)`: the search's runs, CONFIRM_FACTOR x for `confirm`, twice that longer.
    `int8_refusal`: why INT8 candidates are not measured (PairMeasurer). The measurer's close() closes `sources`
    and `holds` (what `timing` keeps loaded, e.g. engines). `sampled`: `timing` gives an interval over blocks of
    samples (not trtexec's, which runs one model after the other): a confirmation then takes enough for one."""
    runs, warmup = settings.runs, settings.warmup
    confirm_runs = max(CONFIRM_FACTOR * runs, MIN_CONFIRM_BLOCKS * gpu_latency.BLOCK if sampled else 0)
    return PairMeasurer(
        cached_pair(sources, functools.partial(timing, runs=runs, warmup=warmup)),
        cached_pair(sources, functools.partial(timing, runs=confirm_runs, warmup=2 * warmup)),
        round_to,
        cached_pair(sources, functools.partial(timing, runs=2 * confirm_runs, warmup=2 * warmup)),
        int8_refusal=int8_refusal, held=(sources, *holds))

