"""Latency statistics: warm-up, many individually timed runs, median and tail percentiles.

A speed-up is two latencies taken *alternately*, in short blocks (a few settling calls, then up to `block`
timed calls of one side, then of the other): drift hits both sides alike, and each timed call finds its own
weights in the caches, as a model serving requests back to back does. Each call is timed on its own (the
clock can be swapped: the tests check the statistics exactly). The speed-up's interval is over independent
units (pairs of blocks, or rounds of fresh processes): runtime/measure/ratio_interval.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from prunefx.graph.progress import bar_or_lines
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.measure.machine_load import LoadMeter
from prunefx.runtime.measure.ratio_interval import CONFIDENCE, looks_confidence, ratio_interval
from prunefx.runtime.measure.timing_loop import alternate, time_call, warm

Clock = Callable[[], float]


@runtime_checkable
class DescribedSession(Protocol):
    """A maker of timed callables that can describe its session as plain data (runners.OnnxRunnerMaker): a
    round in a fresh process then builds the session itself, without importing prunefx or torch."""

    def __call__(self) -> Callable[[], object]: ...

    def round_request(self) -> dict: ...


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds over `runs` timed calls, at `threads` threads (None: unknown)."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    threads: int | None

    @classmethod
    def from_seconds(cls, samples: Sequence[float], *, threads: int | None = None) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        median, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(median_ms=float(median), p90_ms=float(p90), p99_ms=float(p99),
                   # clipped: the float mean of equal samples can round one ulp past them
                   mean_ms=float(np.clip(ms.mean(), ms.min(), ms.max())), min_ms=float(ms.min()), runs=len(ms),
                   threads=threads)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LatencyComparison:
    """Two alternately measured callables; `speedup` = a.median / b.median (how much faster b is), and its
    interval `speedup_low`..`speedup_high` at `confidence` (None when not computed; ratio_interval). `contention`:
    the share of the cores other processes took while a CPU comparison ran (machine_load.py; None: not known,
    or timed on a GPU)."""

    a: LatencyStats
    b: LatencyStats
    speedup: float
    speedup_low: float | None = None
    speedup_high: float | None = None
    confidence: float | None = None
    rounds: int = 1  # fresh pairs of callables the runs were spread over (compare_rounds)
    processes: bool = False  # whether each round ran in a fresh process
    contention: float | None = None

    @property
    def method(self) -> str:
        """How the interval was drawn: Student's t over pairs of blocks, or over rounds."""
        if self.rounds == 1:
            return "t over pairs of blocks"
        return f"t over {self.rounds} {'fresh processes' if self.processes else 'session pairs'}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def interval(self) -> dict:
        """The speed-up's interval as a report states it, with how it was drawn."""
        return {"low": self.speedup_low, "high": self.speedup_high, "confidence": self.confidence,
                "method": self.method}

    def reported(self) -> dict:
        """What a command's report.json `latency` states beside both medians: the interval (None where there is none:
        trtexec times one model after the other), the rounds, and the share of the cores others took meanwhile."""
        return {"interval": self.interval() if self.speedup_low is not None else None, "rounds": self.rounds,
                "contention": self.contention}


def measure_latency(fn: Callable[[], object], *, warmup: int = 10, runs: int = 50,
                    threads: int | None = None, progress: bool = False,
                    clock: Clock = time.perf_counter) -> LatencyStats:
    """Call `fn` `warmup` times untimed (timing_loop.warm: at most WARM_SECONDS once it ran twice), then `runs`
    times, timing each call."""
    _check_counts(warmup, runs)
    with _timed(fn) as (call,):
        warm((call,), warmup, clock)
        samples = [time_call(call, clock) for _ in _bar(progress, "latency", iterable=range(runs))]
    return LatencyStats.from_seconds(samples, threads=_threads_of(fn, threads))


def compare_latency(fn_a: Callable[[], object], fn_b: Callable[[], object], *, warmup: int = 10,
                    runs: int = 50, block: int = 10, settle: int = 2, threads: int | None = None,
                    progress: bool = False, clock: Clock = time.perf_counter,
                    seconds: float | None = None) -> LatencyComparison:
    """Measure `fn_a` and `fn_b` alternately: warm-up a, b, a, b, ...; then pairs of blocks of `settle` untimed and
    up to `block` timed calls of each, a first then b first by turns, until each side has `runs` timed calls
    (`seconds`: or within that long, at least one pair of blocks, smaller ones for long calls;
    timing_loop.alternate_all)."""
    _check_counts(warmup, runs)
    _check_blocks(block, settle)
    with _bar(progress, "latency a/b", total=runs) as bar, _timed(fn_a, fn_b) as (call_a, call_b), LoadMeter() as meter:
        blocks_a, blocks_b = alternate(call_a, call_b, warmup, runs, block, settle, clock, bar, seconds)
    return dataclasses.replace(comparison_of_blocks(blocks_a, blocks_b, [0] * len(blocks_a), _threads_of(fn_a, threads),
                                                    _threads_of(fn_b, threads)), contention=meter.share)


def compare_rounds(make_a: Callable[[], Callable[[], object]], make_b: Callable[[], Callable[[], object]], *,
                   rounds: int = 4, warmup: int = 10, runs: int = 100, block: int = 10, settle: int = 2,
                   threads: int | None = None, progress: bool = False,
                   clock: Clock = time.perf_counter, processes: bool = False,
                   until: Callable[[float, float], bool] | None = None,
                   seconds: float | None = None) -> LatencyComparison:
    """`compare_latency` over `rounds` fresh pairs of callables (`make_a()`, `make_b()`: new ONNX Runtime
    sessions, say), `runs` timed calls per side in all. Why: fresh sessions of one process spread wider than
    one pair's interval, which covers its blocks' noise but not where the next session lands. The
    interval's units are the rounds, so it widens with that spread.

    With `processes=True` each round runs in a fresh process (`make_a` and `make_b` must pickle; two
    `runners.OnnxRunnerMaker` start it without importing torch): processes differ more than session pairs of one process
    do (where the weights land in memory, which cache sets they share). The measured cases: see
    docs/benchmarks/process-rounds.md.

    `until(low, high)`: checked on the interval after each round from the second on; True stops there (a
    confirmation whose interval already clears or misses its budget), with the runs measured so far. Those looks
    are judged at a stricter confidence (EARLY_LOOKS_SHARE), and the result states the confidence it has.
    `seconds`: each round times whole passes of blocks within that long (at least one pass, at most its share of
    `runs`; timing_loop.alternate_all): the rounds are the interval's units, and a slow model's few long calls give a
    round's median."""
    _check_counts(warmup, runs)
    _check_blocks(block, settle)
    if rounds < 1 or runs < rounds:
        raise MeasurementError(f"rounds must be from 1 to runs ({runs}), got rounds={rounds}")
    blocks_a, blocks_b, round_of, threads_a, threads_b = [], [], [], threads, threads
    early, confidence = looks_confidence(rounds if until is not None else 1)
    with _bar(progress, "latency a/b", total=runs) as bar, LoadMeter() as meter:
        for index in range(rounds):
            share = runs // rounds + (index < runs % rounds)
            task = (make_a, make_b, warmup, share, block, settle, clock, threads)
            got_a, got_b, threads_a, threads_b = (_round_in_process(task, seconds) if processes else
                                                  timing_round(*task, bar=bar, seconds=seconds))
            if processes:
                bar.update(share)
            blocks_a, blocks_b, round_of = blocks_a + got_a, blocks_b + got_b, round_of + [index] * len(got_a)
            if until is not None and 1 <= index < rounds - 1 and _stops(until, ratio_interval(
                    blocks_a, blocks_b, rounds=round_of, confidence=early)):
                confidence = early
                break
    return dataclasses.replace(comparison_of_blocks(blocks_a, blocks_b, round_of, threads_a, threads_b, confidence),
                               processes=processes, contention=meter.share)


def _stops(until: Callable[[float, float], bool], interval: tuple[float, float] | tuple[None, None]) -> bool:
    """Whether an early look stops the comparison: never on an interval there is none of (a zero median)."""
    low, high = interval
    return low is not None and high is not None and until(low, high)


def timing_round(make_a, make_b, warmup: int, runs: int, block: int, settle: int, clock: Clock,
                 threads: int | None, bar=None, seconds: float | None = None) -> tuple[list, list, int | None, int | None]:
    """One round of compare_rounds: a fresh pair of callables, warmed up, then alternated."""
    fn_a, fn_b = make_a(), make_b()
    with _timed(fn_a, fn_b) as (call_a, call_b):
        got_a, got_b = alternate(call_a, call_b, warmup, runs, block, settle, clock, bar, seconds)
    return got_a, got_b, _threads_of(fn_a, threads), _threads_of(fn_b, threads)


def pooled_rounds(rounds: Sequence[tuple[list, list, int | None, int | None]], *,
                  confidence: float = CONFIDENCE) -> LatencyComparison:
    """compare_rounds' comparison of rounds its caller timed (each as `timing_round` returns it; the benchmarks
    interleave several pairs' rounds): the ratio of the pooled medians, its interval over the rounds."""
    if not rounds:
        raise MeasurementError("a comparison over rounds needs at least one round")
    paired = [(a, b, index) for index, (got_a, got_b, *_) in enumerate(rounds) for a, b in zip(got_a, got_b)]
    blocks_a, blocks_b, round_of = (list(side) for side in zip(*paired))
    return comparison_of_blocks(blocks_a, blocks_b, round_of, rounds[0][2], rounds[0][3], confidence)


@contextlib.contextmanager
def _timed(*fns: Callable[[], object]) -> Iterator[list[Callable[[], object]]]:
    """Each callable as a timing loop calls it: its `timed_calls()` where it has one (an ONNX Runtime runner's run,
    set up once around the loop, as bare as a fresh process's round times it), else itself."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fn.timed_calls()) if hasattr(fn, "timed_calls") else fn for fn in fns]


def _round_in_process(task: tuple, seconds: float | None = None) -> tuple[list, list, int | None, int | None]:
    """`timing_round` in a fresh interpreter (runtime/measure/rounds.py), the task and its blocks passed as pickles in
    a private temporary folder. Not multiprocessing: its spawn re-runs the caller's main script, which breaks
    a user's script that calls prunefx without an `if __name__ == "__main__"` guard; a fork would inherit this
    process's memory layout, the thing a fresh process is for."""
    with tempfile.TemporaryDirectory(prefix="prunefx-round-") as folder:
        request, answer = Path(folder, "round.pickle"), Path(folder, "blocks.pickle")
        request.write_bytes(pickle.dumps(_round_request(task, seconds)))
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("rounds.py")), str(request),
                               str(answer)], capture_output=True, text=True)
        if done.returncode != 0 or not answer.exists():
            # the round prints its error in one line, last; a crash's traceback names it there too
            said = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise MeasurementError(f"a timing round's process failed: {said[0]}")
        return pickle.loads(answer.read_bytes())


def _round_request(task: tuple, seconds: float | None = None) -> dict:
    """Plain ONNX Runtime sessions where both makers can describe theirs (runners.OnnxRunnerMaker) and the clock
    is the default one: their round then imports neither prunefx nor torch. Any other makers travel pickled."""
    make_a, make_b, warmup, runs, block, settle, clock, threads = task
    if clock is time.perf_counter and all(isinstance(make, DescribedSession) for make in (make_a, make_b)):
        return {"kind": "sessions", "a": make_a.round_request(), "b": make_b.round_request(), "warmup": warmup,
                "runs": runs, "block": block, "settle": settle, "threads": threads, "seconds": seconds}
    return {"kind": "pickled", "sys_path": list(sys.path), "task": pickle.dumps(task), "seconds": seconds}


def comparison_of_blocks(blocks_a: list, blocks_b: list, round_of: list[int], threads_a=None, threads_b=None,
                         confidence: float = CONFIDENCE) -> LatencyComparison:
    """The comparison every timing path reports: the ratio of the pooled medians of the timed seconds in
    `blocks_a` and `blocks_b` (lists of runs, paired block by block; `round_of`: each pair's round), its interval
    over the independent units (ratio_interval)."""
    a = LatencyStats.from_seconds(sum(blocks_a, []), threads=threads_a)
    b = LatencyStats.from_seconds(sum(blocks_b, []), threads=threads_b)
    low, high = ratio_interval(blocks_a, blocks_b, rounds=round_of, confidence=confidence)
    return LatencyComparison(a=a, b=b, speedup=_ratio(a.median_ms, b.median_ms), speedup_low=low, speedup_high=high,
                             confidence=confidence if low is not None else None, rounds=len(set(round_of)))


def _bar(progress: bool, description: str, **kwargs) -> tqdm:
    # Off by default: library calls stay quiet; the CLI and benchmarks turn it on for long runs.
    return bar_or_lines(progress, make=tqdm, desc=description, unit="run", leave=False, **kwargs)


def _threads_of(fn: Callable[[], object], threads: int | None) -> int | None:
    # An explicit argument wins; otherwise the runners from prunefx.runtime.ort.runners state their own.
    return threads if threads is not None else getattr(fn, "threads", None)


def _ratio(slow_ms: float, fast_ms: float) -> float:
    if fast_ms > 0:
        return slow_ms / fast_ms
    return 1.0 if slow_ms == 0 else float("inf")


def _check_blocks(block: int, settle: int) -> None:
    if block < 1 or settle < 0:
        raise MeasurementError(f"blocks need block >= 1 and settle >= 0, got block={block}, settle={settle}")


def _check_counts(warmup: int, runs: int) -> None:
    if runs < 1:
        raise MeasurementError(f"a latency measurement needs at least 1 timed run, got runs={runs}")
    if warmup < 0:
        raise MeasurementError(f"warm-up cannot be negative, got warmup={warmup}")
