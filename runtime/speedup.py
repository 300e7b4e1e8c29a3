"""A measuring function for passes that must only make a model faster on the target runtime.

Passes never import the runtime (DESIGN.md, layering); a pass that needs a measurement (merge_blocks
merges only what runs faster, linearize_blocks can stop at a speed-up target) takes a callable
`(before: Program, after: Program) -> speed-up of after over before`. `onnx_speedup` builds one for ONNX
Runtime: both Programs are cut to batch 1 (the deployment case, graph/rebatch.py), exported, and timed
alternately in this process, so machine noise hits both alike; the speed-up is the ratio of medians.
"""

from __future__ import annotations

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


def onnx_speedup(*, threads: int = DEFAULT_THREADS, runs: int = 50, warmup: int = 10, batch: int = 1) -> Measure:
    """A `(before, after) -> speed-up` callable timing both Programs with ONNX Runtime at `batch`."""
    def measure(before: Program, after: Program) -> float:
        with tempfile.TemporaryDirectory(prefix="prunefx-measure-") as tmp:
            runners = [_runner(program, Path(tmp) / f"{name}.onnx", batch, threads)
                       for name, program in (("before", before), ("after", after))]
            return compare_latency(*runners, warmup=warmup, runs=runs, threads=threads).speedup

    return measure


def _runner(program: Program, path: Path, batch: int, threads: int):
    program = program.clone().eval() if program.training else program
    if int(program.example_inputs[0].shape[0]) != batch:
        program = rebatch(program, batch)
    return onnx_runner(export_onnx(program, path).path, program.example_inputs, threads=threads)
