"""Latency budgets measured where the model will run: ONNX Runtime, TensorRT, Torch-TensorRT or trtexec.

The budget passes (prune_to_budget, depth_to_budget, choose_for_budget) take a Measurer
(passes/measurement.py): `(before, after) -> (before ms, after ms, spread)`, with a `confirm` method (the same
measurement, longer, with an interval on the speed-up where the backend's timing gives one) that alone
accepts a candidate, and `round_to`, the width multiple the backend runs fastest (runtime/width_multiple.py). A budget stated for a TensorRT deployment must be met on TensorRT: widths,
merged blocks and INT8 pay off differently there than on a CPU (DESIGN.md, "Widths matter more than MACs").
`latency_pair(backend, ...)` builds the pair for each backend:

- ort: ONNX Runtime on this CPU, runtime/speedup.onnx_latency_pair as before.
- trt: both Programs cut to batch 1, exported (dynamo; a fake-quantized Program in TensorRT's symmetric S8
  Q/DQ form), built into engines (runtime/tensorrt_engine.py, cached on disk by file bytes and options) and
  timed alternately with CUDA events. A file with Q/DQ nodes is built as INT8: its precision is its own.
- trtexec: the same files, timed by the trtexec program (Jetson boards). trtexec runs are separate processes,
  one after the other, not alternately, so a load change between the two runs is not cancelled out as it is
  on the other backends; medians are trtexec's GPU compute time.
- torch-trt: each Program compiled with Torch-TensorRT and timed alternately with CUDA events.

Every pair caches its measurements, by the sha256 of both files (by Program fingerprint for torch-trt), and
checks that its backend is installed when it is made: a missing TensorRT is a one-line error before any
model is loaded, never after minutes of search.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from prunefx.graph import Program
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.gpu_latency import compare_gpu_latency
from prunefx.runtime.speedup import (
    ExportCache,
    PairMeasurer,
    cached_pair,
    deployed,
    exported_file,
    fingerprint,
    medians_and_spread,
    onnx_latency_pair,
    timing_of,
)
from prunefx.runtime.tensorrt_engine import build_engine, require_cuda, require_tensorrt
from prunefx.runtime.tensorrt_plan import BuildOptions, onnx_types
from prunefx.runtime.torch_tensorrt_backend import compile_torch_tensorrt, require_torch_tensorrt
from prunefx.runtime.trtexec import TrtexecOptions, find_trtexec, run_trtexec
from prunefx.runtime.width_multiple import backend_multiple

BACKENDS = ("ort", "trt", "torch-trt", "trtexec")
# INT8 is not a choice: it comes from the Program's own quantizers (passes/quantize_int8), as Q/DQ nodes
PRECISIONS = ("fp32", "fp16")
CONFIRM_FACTOR = 4  # `confirm` times this many times the runs, as onnx_latency_pair does


def require_backend(backend: str, precision: str = "fp32", trtexec: str | None = None) -> str | None:
    """Check now that `backend` can measure at `precision` (BackendUnavailableError naming what to install,
    MeasurementError for a bad choice); the trtexec program for "trtexec", else None. Called by latency_pair,
    and by commands before they load a model."""
    if backend not in BACKENDS:
        raise MeasurementError(f"unknown budget backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise MeasurementError(f"a budget is measured at {' or '.join(PRECISIONS)}, not {precision!r} (INT8 comes "
                               "from the model's own quantizers: quantize it first)")
    if backend == "ort":
        if precision != "fp32":
            raise MeasurementError(f"precision {precision} applies to the TensorRT backends (trt, torch-trt, "
                                   "trtexec); ONNX Runtime times the float32 file (or the model's INT8 one)")
        return None
    if backend == "trtexec":
        return find_trtexec(trtexec)
    if backend == "trt":
        require_tensorrt()
    else:
        require_torch_tensorrt()
    require_cuda()
    return None


def latency_pair(backend: str, *, threads: int, runs: int, warmup: int = 10, precision: str = "fp32",
                 trtexec: str | None = None, cache_dir: str | None = None) -> PairMeasurer:
    """A `(before, after) -> (before ms, after ms, spread)` callable measuring on `backend` at batch 1, with
    `confirm` (CONFIRM_FACTOR x the runs, twice the warm-up); `threads` is read by ONNX Runtime only."""
    program = require_backend(backend, precision, trtexec)
    if backend == "ort":
        return onnx_latency_pair(threads=threads, runs=runs, warmup=warmup)
    if backend == "torch-trt":
        sources, timing = _Compiled(precision), _gpu_timing(lambda entry: entry[0].time_once)
    else:  # one set of files for the search and the confirmation: both time what is delivered
        sources = ExportCache(1, "dynamo", export=functools.partial(exported_file, activations="s8"))
        timing = (_gpu_timing(_Engines(precision, cache_dir).timed) if backend == "trt"
                  else _trtexec_timing(precision, program))
    return PairMeasurer(cached_pair(sources, functools.partial(timing, runs=runs, warmup=warmup)),
                        cached_pair(sources, functools.partial(timing, runs=CONFIRM_FACTOR * runs, warmup=2 * warmup)),
                        backend_multiple(backend, precision),
                        cached_pair(sources, functools.partial(timing, runs=2 * CONFIRM_FACTOR * runs, warmup=2 * warmup)))


def _file_precision(path, precision: str) -> str:
    """"int8" for a file with Q/DQ nodes (a fake-quantized Program's: its INT8 is in the graph, and TensorRT
    before 10 still needs the flag to use it), else the precision asked for."""
    return "int8" if onnx_types(path).has_qdq else precision


def _gpu_timing(timed_of):
    """timing(entry_a, entry_b, runs=, warmup=) -> (ms a, ms b, spread), both runners alternately with CUDA
    events; `timed_of(entry)` is the entry's zero-argument runner returning its milliseconds."""
    def timing(a: tuple, b: tuple, *, runs: int, warmup: int) -> tuple[float, float, float]:
        return timing_of(compare_gpu_latency(timed_of(a), timed_of(b), warmup=warmup, runs=runs))

    return timing


def _trtexec_timing(precision: str, program: str):
    """timing(entry_a, entry_b, runs=, warmup=) with two trtexec runs, one after the other: trtexec keeps its
    own warm-up (in milliseconds), so `warmup` is not read."""
    def timing(a: tuple, b: tuple, *, runs: int, warmup: int) -> tuple[float, float, float]:
        stats = [run_trtexec(path, TrtexecOptions(precision=_file_precision(path, precision), iterations=runs),
                             executable=program).latency for path, _, _ in (a, b)]
        return medians_and_spread(*stats)

    return timing


class _Engines:
    """TensorRT engines by file sha256, inputs bound: the dense model's engine is timed against every
    candidate, and loading it again each time would cost a deserialization and fresh GPU buffers."""

    def __init__(self, precision: str, cache_dir: str | None):
        self.precision, self.cache_dir, self.loaded = precision, cache_dir, {}

    def timed(self, entry: tuple) -> Callable[[], float]:
        path, inputs, sha = entry
        if sha not in self.loaded:
            engine = build_engine(path, BuildOptions(precision=_file_precision(path, self.precision)),
                                  cache_dir=self.cache_dir)
            engine.set_inputs(*[x.cuda() for x in inputs])
            self.loaded[sha] = engine
        return self.loaded[sha].time_once


class _Compiled:
    """Torch-TensorRT modules by Program fingerprint (there is no file to hash): compiling takes longer than
    timing, and the dense model is measured against every candidate."""

    def __init__(self, precision: str):
        self.precision, self.modules = precision, {}

    def get(self, program: Program) -> tuple:
        key = fingerprint(program)
        if key not in self.modules:
            if has_fake_quant(program.graph):  # its quantizers would be timed as float operators
                raise MeasurementError(f"Torch-TensorRT does not time '{program.name}' as INT8 (fake quantizers): "
                                       "use --backend trt, which builds INT8 from its Q/DQ nodes")
            self.modules[key] = (compile_torch_tensorrt(deployed(program, 1), precision=self.precision), key)
        return self.modules[key]
