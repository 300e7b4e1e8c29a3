"""A measuring function for passes that must only make a model faster on the target runtime.

Passes never import the runtime (the layers import downward only); a pass that needs a measurement (merge_blocks
merges only what runs faster, linearize_blocks can stop at a speed-up target) takes a callable
`(before: Program, after: Program) -> speed-up of after over before`. `onnx_speedup` builds one for ONNX
Runtime: both Programs are cut to batch 1 (the deployment case, graph/rebatch.py), exported, and timed
alternately in this process, so machine noise hits both alike; the speed-up is the ratio of medians.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.timing import Timing
from prunefx.runtime.measure.last_used import LastUsed
from prunefx.runtime.measure.latency import LatencyComparison, LatencyStats, compare_latency, compare_rounds
from prunefx.runtime.measure.measured_files import ExportCache
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple
from prunefx.runtime.model_precision import require_float32
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET
from prunefx.runtime.ort.runners import OnnxRunnerMaker
from prunefx.runtime.ort.threads import LATENCY_THREADS

Measure = Callable[[Program, Program], float]
CONFIRM_ROUNDS = 4  # fresh processes a confirmation spreads its runs over (latency.compare_rounds)
# A search reading, and each round of a confirmation, times whole passes of blocks within this long (at least one;
# smaller blocks where calls are long, so that several passes fit: timing_loop.fitted_blocks): a ViT-L on 2 cores
# (1.1 s for a call of each model) then takes 4 runs a side, call by call, not 30, and a median of long calls is
# steady (a confirmation's interval, over its rounds, widens where it is not)
ROUND_SECONDS = 5.0
# (before, after) -> (before ms, after ms, spread): medians measured side by side, and the after side's
# p90/median - 1 (how noisy the measurement was), for passes that meet a latency budget
LatencyPair = Callable[[Program, Program], tuple[float, float, float]]


def onnx_speedup(*, threads: int = LATENCY_THREADS, runs: int = 50, warmup: int = 10, batch: int = 1) -> Measure:
    """A `(before, after) -> speed-up` callable timing both Programs with ONNX Runtime at `batch`: the search
    reading of `onnx_latency_pair`, the one `--backend ort` gives a merge pass on the command line (TorchScript
    files, as every search of prunefx times its candidates: docs/design.md). A Program met again is not exported
    again (a merge pass measures the same model before every merge it considers) and a pair measured before is
    answered again."""
    return speedup_of(onnx_latency_pair(threads=threads, runs=runs, warmup=warmup, batch=batch))


def speedup_of(pair: LatencyPair) -> SpeedupOf:
    """`(before, after) -> speed-up of after over before` from a latency pair's (short) reading."""
    return SpeedupOf(pair)


class SpeedupOf:
    """A latency pair read as `(before, after) -> speed-up of after over before`; `close()` (or a with-block)
    lets go of what the pair holds (its exported files, its models on a GPU), as the pair's own close does."""

    def __init__(self, pair: LatencyPair):
        self.pair = pair

    def __call__(self, before: Program, after: Program) -> float:
        before_ms, after_ms, _ = self.pair(before, after)
        return before_ms / after_ms

    def confirmed(self, before: Program, after: Program, against: float) -> Timing:
        """The pair's longer confirmation, with its interval, stopped once that interval clears or misses
        `against` (merge_blocks asks it of a merge its short reading calls faster); the short reading where the
        pair has no confirmation."""
        confirm = getattr(self.pair, "confirm", None)
        if not callable(confirm):
            return Timing.of(self.pair(before, after))
        return Timing.of(confirm(before, after, against=against))

    def close(self) -> None:
        close = getattr(self.pair, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> SpeedupOf:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class PairMeasurer:
    """A `passes.measurement.Measurer`: `search(dense, candidate)` for the search's short measurement,
    `confirm` for the longer one that answers a `Timing` with its speed-up interval, and the backend's width
    multiple `round_to` (runtime/measure/width_multiple.py). `stops_early`: its confirmations take `against`,
    the speed-up their interval is judged against, and stop once it clears or misses it. `int8_refusal`: why its
    backend cannot time a fake-quantized Program like for like (None: it can; else none is measured at all).
    `held`: what its measurements keep (exported files, models prepared or engines loaded on a GPU), each with a
    `close()` that lets it go."""

    def __init__(self, search: LatencyPair, confirm: Callable[..., Timing], round_to: int | None,
                 longer: Callable[..., Timing] | None = None, *, int8_refusal: str | None = None,
                 held: Sequence = ()):
        self.search, self._confirm, self.round_to, self.int8_refusal = search, confirm, round_to, int8_refusal
        self._longer = longer or confirm
        self.stops_early = bool(getattr(confirm, "stops_early", False))
        self.held = held
        self.measured_as = None  # (backend name, Settings) where a backend made it (Backend.stamped)

    def close(self) -> None:
        """Remove the files it exported and let go of the models it keeps on a GPU, now (a garbage-collected
        measurer does too, but one that a raised error's traceback holds, or a report that times a stage now and
        then, would keep them: two models and their CUDA graphs through every later pass). A later measurement
        prepares them again."""
        for holder in self.held:
            holder.close()

    def __enter__(self) -> PairMeasurer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


    def __call__(self, dense: Program, candidate: Program) -> Timing:
        return Timing.of(self.search(dense, candidate))

    def confirm(self, dense: Program, candidate: Program, against: float | None = None) -> Timing:
        return Timing.of(self._measure(self._confirm, dense, candidate, against))

    def confirm_longer(self, dense: Program, candidate: Program, against: float | None = None) -> Timing:
        """`longer` (e.g. twice the processes and runs of `confirm`); `confirm` itself when none was given."""
        return Timing.of(self._measure(self._longer, dense, candidate, against))

    def _measure(self, measure: Callable[..., Timing], dense: Program, candidate: Program, against: float | None):
        if against is None or not getattr(measure, "stops_early", False):
            return measure(dense, candidate)
        return measure(dense, candidate, against=against)


@contextlib.contextmanager
def closed_after(measurer):
    """`measurer` inside the block, its exported files removed after it, raised or not, where it has any (a
    backend's PairMeasurer; a stand-in Measurer need not have `close`)."""
    try:
        yield measurer
    finally:
        if callable(getattr(measurer, "close", None)):
            measurer.close()


def onnx_latency_pair(*, threads: int = LATENCY_THREADS, runs: int = 50, warmup: int = 10, batch: int = 1,
                      confirm_runs: int | None = None, search_exporter: str = "torchscript",
                      confirm_rounds: int = CONFIRM_ROUNDS, opset: int = DEFAULT_OPSET, spinning: bool = True,
                      flush_denormals: bool | None = None) -> PairMeasurer:
    """A `(before, after) -> (before ms, after ms, spread)` callable: both Programs at `batch`, exported and
    timed alternately with ONNX Runtime. Measurements are cached by the sha256 of both ONNX files, so a
    search that meets the same candidate twice (two fractions rounding to the same widths) times it once.

    Its `confirm` method is the same measurement made longer (`confirm_runs` timed runs each, 4x `runs`
    by default, twice the warm-up, over `confirm_rounds` fresh processes: runtime/measure/latency.py's
    compare_rounds says why; fewer where a round's passes of blocks outlast ROUND_SECONDS), cached apart,
    answering a `Timing` with the interval of the speed-up (ratio_interval): prune_to_budget accepts a
    candidate only when that interval's lower bound clears the budget, because one short measurement on a
    loaded machine can be off by 20 %.
    Its `confirm_longer` doubles the runs and the processes, for a candidate whose interval holds the budget
    (passes/budget/measurement.py's LongerMeasurer).
    Its `round_to` is this CPU's width multiple for ONNX Runtime (16 with AVX-512, else 8). `spinning` and
    `flush_denormals` are the sessions' (runtime/ort/runners.onnx_runner), as `bench` times them.

    The search's readings export with `search_exporter` (TorchScript by default: two to four times faster than dynamo
    on small models), the confirmation, which alone accepts a candidate, the files prunefx delivers (dynamo); from
    measured_files.DELIVERED_FROM_BYTES of weights the readings time the delivered files too (docs/design.md,
    'Runtime and measurement'). A fake-quantized Program always goes through the INT8 lowering."""
    float32 = functools.partial(require_float32, runtime="ONNX Runtime")
    search = ExportCache(batch, search_exporter, check=float32, opset=opset)  # shared: the dense model is exported once per search
    if search_exporter == "dynamo":
        delivered = search
    else:  # an INT8 candidate's file is the same whatever the exporter (the INT8 lowering): confirmed, not exported again
        delivered = ExportCache(batch, "dynamo", quantized=search, check=float32, opset=opset)
        search.delivered = delivered  # a large model's readings time the delivered files (DELIVERED_FROM_BYTES)
    confirming = confirm_runs or 4 * runs
    sessions = {"threads": threads, "spinning": spinning, "flush_denormals": flush_denormals}
    makers = LastUsed(keep=4)  # shared: a large model's reading and confirmation time the same files
    return PairMeasurer(_onnx_runtime_pair(search, sessions, makers, runs=runs, warmup=warmup),
                        _onnx_runtime_pair(delivered, sessions, makers, runs=confirming, warmup=2 * warmup,
                                           rounds=confirm_rounds),
                        onnxruntime_multiple(),
                        # where the budget lies inside the confirmed interval: twice the processes and runs
                        _onnx_runtime_pair(delivered, sessions, makers, runs=2 * confirming, warmup=2 * warmup,
                                           rounds=2 * confirm_rounds),
                        held=(search,) if delivered is search else (search, delivered))


def _onnx_runtime_pair(exports: ExportCache, sessions: dict, makers_of: LastUsed | None = None, *, runs: int,
                       warmup: int, rounds: int = 1) -> LatencyPair:
    """`sessions`: OnnxRunnerMaker's threads, spinning and flush_denormals for both files. `makers_of`: the makers
    by file, each of which checks its file once (runtime/ort/session.py): the dense file is met at every measurement."""
    threads = sessions["threads"]
    makers_of = LastUsed(keep=4) if makers_of is None else makers_of

    def timed(a: tuple[Path, tuple, str], b: tuple[Path, tuple, str], against: float | None = None):
        makers = [makers_of.get((path, digest), lambda path=path, inputs=inputs: OnnxRunnerMaker(path, inputs, **sessions))
                  for path, inputs, digest in (a, b)]
        if rounds == 1:
            return timing_of(compare_latency(makers[0](), makers[1](), warmup=warmup, runs=runs, threads=threads,
                                             seconds=ROUND_SECONDS))
        return timing_of(compare_rounds(*makers, rounds=min(rounds, runs), warmup=warmup, runs=runs, threads=threads,
                                        processes=True, until=decided(against), seconds=ROUND_SECONDS))

    return cached_pair(exports, timed, stops_early=rounds > 1)


def decided(against: float | None) -> Callable[[float, float], bool] | None:
    """`(low, high) -> whether a speed-up interval already settles `against``: it clears it or misses it."""
    if against is None:
        return None
    return lambda low, high: low >= against or high < against


def timing_of(comparison: LatencyComparison) -> Timing:
    """Both medians, the after side's spread and the speed-up interval, where the comparison has one."""
    dense_ms, ms, spread = medians_and_spread(comparison.a, comparison.b)
    if comparison.speedup_low is None:
        return Timing(dense_ms, ms, spread, contention=comparison.contention)
    return Timing(dense_ms, ms, spread, comparison.speedup_low, comparison.speedup_high, comparison.confidence,
                  comparison.method, comparison.contention)


def cached_pair(sources, timed: Callable[..., Timing], *, stops_early: bool = False) -> Callable[..., Timing]:
    """`timed(entry_before, entry_after)` run once per pair of models: `sources.get(program)` gives an entry
    whose last item identifies what is timed (the file's sha256, say), and a pair measured before is
    answered from the cache. `stops_early`: `timed` also takes `against` (compare_rounds' `until`), part of
    the key, since a measurement stopped early for one budget is not the whole one another needs.
    A Timing taken on a busy machine (Timing.busy: a CPU comparison's `contention`) is not cached: asked again,
    the pair is timed again."""
    cache: dict[tuple, Timing] = {}
    key_of = getattr(sources, "key", None)  # where the key is cheap to know, a cached pair prepares nothing

    def measure(before: Program, after: Program, against: float | None = None) -> Timing:
        extra = (against,) if stops_early else ()
        if key_of is not None:
            keys = (key_of(before), key_of(after), *extra)
            if keys in cache:
                return cache[keys]
            a, b = sources.get(before, keys[0]), sources.get(after, keys[1])  # each key computed once
        else:
            a, b = sources.get(before), sources.get(after)
        key = (a[-1], b[-1], *extra)
        if key in cache:
            return cache[key]
        timing = Timing.of(timed(a, b, against) if stops_early else timed(a, b))
        if not timing.busy:
            cache[key] = timing
        return timing

    measure.stops_early = stops_early  # type: ignore[attr-defined]
    return measure


def medians_and_spread(a: LatencyStats, b: LatencyStats) -> tuple[float, float, float]:
    """(before ms, after ms, spread): both medians, and how noisy the after side was (p90/median - 1)."""
    return a.median_ms, b.median_ms, b.p90_ms / b.median_ms - 1
