"""A measuring function for passes that must only make a model faster on the target runtime.

Passes never import the runtime (DESIGN.md, layering); a pass that needs a measurement (merge_blocks
merges only what runs faster, linearize_blocks can stop at a speed-up target) takes a callable
`(before: Program, after: Program) -> speed-up of after over before`. `onnx_speedup` builds one for ONNX
Runtime: both Programs are cut to batch 1 (the deployment case, graph/rebatch.py), exported, and timed
alternately in this process, so machine noise hits both alike; the speed-up is the ratio of medians.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.rebatch import rebatch
from prunefx.runtime.latency import compare_latency
from prunefx.runtime.onnx_export import export_onnx
from prunefx.runtime.onnxruntime_session import DEFAULT_THREADS
from prunefx.runtime.runners import onnx_runner

Measure = Callable[[Program, Program], float]
# (before, after) -> (before ms, after ms, spread): medians measured side by side, and the after side's
# p90/median - 1 (how noisy the measurement was), for passes that meet a latency budget
LatencyPair = Callable[[Program, Program], tuple[float, float, float]]


def onnx_speedup(*, threads: int = DEFAULT_THREADS, runs: int = 50, warmup: int = 10, batch: int = 1) -> Measure:
    """A `(before, after) -> speed-up` callable timing both Programs with ONNX Runtime at `batch`."""
    def measure(before: Program, after: Program) -> float:
        with tempfile.TemporaryDirectory(prefix="prunefx-measure-") as tmp:
            runners = [_runner(program, Path(tmp) / f"{name}.onnx", batch, threads)
                       for name, program in (("before", before), ("after", after))]
            return compare_latency(*runners, warmup=warmup, runs=runs, threads=threads).speedup

    return measure


def onnx_latency_pair(*, threads: int = DEFAULT_THREADS, runs: int = 50, warmup: int = 10, batch: int = 1,
                      confirm_runs: int | None = None) -> LatencyPair:
    """A `(before, after) -> (before ms, after ms, spread)` callable: both Programs at `batch`, exported and
    timed alternately with ONNX Runtime. Measurements are cached by the sha256 of both ONNX files, so a
    search that meets the same candidate twice (two fractions rounding to the same widths) times it once.

    Its `confirm` attribute is the same measurement made longer (`confirm_runs` timed runs each, 4x `runs`
    by default, twice the warm-up), cached apart: prune_to_budget accepts a candidate only once `confirm`
    agrees, because one short measurement on a loaded machine can be off by 20 % (RegNetY-800MF: 2.05x
    in the search, 1.66x measured again, benchmarks/results/latency_budget.md)."""
    measure = _cached_pair(threads=threads, runs=runs, warmup=warmup, batch=batch)
    measure.confirm = _cached_pair(threads=threads, runs=confirm_runs or 4 * runs, warmup=2 * warmup, batch=batch)
    return measure


def _cached_pair(*, threads: int, runs: int, warmup: int, batch: int) -> LatencyPair:
    cache: dict[tuple[str, str], tuple[float, float, float]] = {}

    def measure(before: Program, after: Program) -> tuple[float, float, float]:
        with tempfile.TemporaryDirectory(prefix="prunefx-measure-") as tmp:
            paths = [_exported(program, Path(tmp) / f"{name}.onnx", batch)
                     for name, program in (("before", before), ("after", after))]
            key = tuple(hashlib.sha256(path.read_bytes()).hexdigest() for path in (paths[0][0], paths[1][0]))
            if key not in cache:
                runners = [onnx_runner(path, inputs, threads=threads) for path, inputs in paths]
                result = compare_latency(*runners, warmup=warmup, runs=runs, threads=threads)
                cache[key] = (result.a.median_ms, result.b.median_ms, result.b.p90_ms / result.b.median_ms - 1)
            return cache[key]

    return measure


def _exported(program: Program, path: Path, batch: int):
    program = program.clone().eval() if program.training else program
    if int(program.example_inputs[0].shape[0]) != batch:
        program = rebatch(program, batch)
    return export_onnx(program, path).path, program.example_inputs


def _runner(program: Program, path: Path, batch: int, threads: int):
    path, inputs = _exported(program, path, batch)
    return onnx_runner(path, inputs, threads=threads)
