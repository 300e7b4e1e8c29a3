"""compress's final timing: the dense model against the delivered one, side by side, on the runtime the budget
was measured on (`--backend`), as `prunefx bench --backend B --vs` times them.

On ONNX Runtime (the default) at batch 1, the delivered ONNX file against the dense one over fresh processes; on
another backend or batch, both models at the backend's precision and `--batch`, alternately (over fresh processes
on ONNX Runtime, in this one on a GPU): a model compressed for a GPU is reported by that GPU, not by this
machine's CPU.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from prunefx.bench_models import program_bench_model
from prunefx.compress_options import Options
from prunefx.deliverable import export_deliverable
from prunefx.graph import Program
from prunefx.reports.report_facts import Latency
from prunefx.runtime import backends, onnx_side_by_side
from prunefx.runtime.backends import Settings
from prunefx.runtime.backends.base import CPU_BACKEND
from prunefx.runtime.measure.latency import LatencyComparison, LatencyStats
from prunefx.runtime.measure.measured_files import deployed
from prunefx.runtime.measure.pairs import Measurement
from prunefx.runtime.measure.speedup import PairMeasurer

ORT_NAME = "onnxruntime"  # report.json's name of the default backend's final timing
STAGE_TIMED_RUNS = 30  # per model and stage: enough to see a stage's effect, a fraction of the final timing


def stage_latency(options: Options) -> PairMeasurer:
    """The latency pair the stage rows are timed with (prunefx/reports/stage.py): the backend's short reading, at
    the precision and batch the final timing uses."""
    return Measurement.of(options.backend, threads=options.threads, runs=min(options.runs, STAGE_TIMED_RUNS),
                          precision=options.precision, trtexec=options.trtexec, batch=options.batch,
                          compile=options.compile, opset=options.opset).pair()


def delivered_latency(captured: tuple[Program, Program], at_one: tuple[Program, Program], compressed_onnx: Path,
                      options: Options) -> Latency:
    """The dense model against the compressed one: `captured` at the batch they were captured at (cut to
    `options.batch` on another backend or batch), `at_one` both at batch 1 with `compressed_onnx` the delivered file
    of the second (timed as it is on ONNX Runtime at batch 1)."""
    if options.backend == CPU_BACKEND and options.batch == 1:
        return _on_onnx_runtime(*at_one, compressed_onnx, options)
    return _on_backend(*captured, options)


def _on_onnx_runtime(dense_one: Program, compressed_one: Program, compressed_onnx: Path, options: Options) -> Latency:
    """Each file as model.onnx is written (an INT8 dense model in its INT8 lowering), over fresh processes."""
    with tempfile.TemporaryDirectory(prefix="prunefx-compress-") as tmp:
        dense_onnx, _ = export_deliverable(dense_one, Path(tmp) / "dense.onnx", opset=options.opset)
        comparison = onnx_side_by_side([(dense_onnx, dense_one.example_inputs),
                                        (compressed_onnx, compressed_one.example_inputs)],
                                       Settings(runs=options.runs, warmup=options.warmup, threads=options.threads))
    return _latency(ORT_NAME, comparison, options, batch=1, threads=options.threads)


def _on_backend(dense: Program, compressed: Program, options: Options) -> Latency:
    """Both models at the budget's batch and precision on `options.backend`, with its account of how it measured."""
    backend = backends.get(options.backend, budgets=True)
    settings = Settings(runs=options.runs, warmup=options.warmup, precision=options.precision, batch=options.batch,
                        threads=options.threads, trtexec=options.trtexec, compile=options.compile, opset=options.opset)
    with tempfile.TemporaryDirectory(prefix="prunefx-compress-") as tmp:
        models = [program_bench_model(name, deployed(program, options.batch), backend, Path(tmp) / f"{name}.onnx")
                  for name, program in (("dense", dense), ("compressed", compressed))]
        timed = backend.bench(models, settings)
    comparison, account = _comparison_and_account(timed)
    if backend.name == CPU_BACKEND:
        return _latency(ORT_NAME, comparison, options, batch=options.batch, threads=options.threads)
    threads = options.threads if "threads" in backend.options else None
    return _latency(backend.name, comparison, options, batch=options.batch, threads=threads,
                    precision=options.precision, measurement=account,
                    **({} if backend.reads_warmup else {"warmup": None}))  # trtexec keeps its own warm-up


def _comparison_and_account(timed: dict) -> tuple[LatencyComparison, dict]:
    """A backend's `bench` of two models split in two: the comparison every timing path states, and the rest, the
    backend's account of how it measured (cuda: the GPU, CUDA graphs; trtexec: each side's run, as `dense` and
    `compressed`)."""
    statistics = {field.name for field in dataclasses.fields(LatencyStats)}
    compared = {field.name for field in dataclasses.fields(LatencyComparison)} - {"a", "b"}
    sides = {side: LatencyStats(**{key: value for key, value in timed[side].items() if key in statistics})
             for side in ("a", "b")}
    comparison = LatencyComparison(**sides, **{key: value for key, value in timed.items() if key in compared})
    account = {key: value for key, value in timed.items() if key not in compared | {"a", "b"}}
    for side, name in (("a", "dense"), ("b", "compressed")):
        extra = {key: value for key, value in timed[side].items() if key not in statistics}
        if extra:
            account[name] = extra
    return comparison, account


def _latency(backend: str, comparison: LatencyComparison, options: Options, *, batch: int, threads: int | None,
             **more) -> Latency:
    return Latency(backend, threads, options.runs, comparison.a.median_ms, comparison.b.median_ms, comparison.speedup,
                   extra={"batch_size": batch, "warmup": options.warmup, "dense": comparison.a.to_dict(),
                          "compressed": comparison.b.to_dict(), **comparison.reported(), **more})
