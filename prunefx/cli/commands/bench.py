"""prunefx bench MODEL_OR_ONNX [--vs OTHER] [--backend NAME]: latency statistics, and a side-by-side speed-up.

Backends are those of the registry (runtime/backends/; `docs/backends.md` lists them): ONNX Runtime on the
CPU (default), torch eager, TensorRT engines built from the ONNX file (`trt`, timed with CUDA events, engines
cached), PyTorch on a CUDA GPU (`cuda`: fp16/bf16 CUDA-graph replays), Torch-TensorRT (`torch-trt`) and the
`trtexec` program (Jetson boards). A model reference is exported to ONNX first (in a temporary folder) for the
backends that read files. With --vs, both models must take the same inputs (else the speed-up compares
different work: refused), and are timed alternately, so that machine noise hits both equally, and the ratio of medians is the speed-up, with its 90 % interval where the backend gives one
(`speedup_low`, `speedup_high` in --json); trtexec runs are separate processes, one after the other, and say
so. With ort, the runs are spread over `--rounds` fresh processes (4 by default; refused without --vs or on another
backend), each with its own pair of sessions: where one process lands varies by several per cent from the next
(runtime/measure/latency.py's compare_rounds), and the interval covers that too. Too few runs to judge a spread (one
block per side in one round, one pair of calls) give no interval: said so, and null in --json. ort sessions
flush subnormal floats to zero unless --keep-denormals (runtime/ort/runners.py's timing_flushes_denormals says
why). An .onnx file gets random inputs of the types it declares, at its static shapes or at --input-shape: one
shape per input, separated by commas (`1x3x32x32,1x10`), checked against the file's fixed dims up front.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnxruntime

from prunefx.bench_models import (
    bench_model,
    checked_backend,
    flushes_denormals,
    input_text,
)
from prunefx.graph.errors import PrunefxError
from prunefx.graph.timing import busy_share, share_text
from prunefx.reports.budget_text import interval_text
from prunefx.reports.compression import json_safe
from prunefx.runtime.measure.machine_load import LoadMeter
from prunefx.runtime.tables.timers import cpu_model


def _describe(backend, args, settings) -> dict:
    report = {"backend": args.backend, "threads": settings.threads if "threads" in backend.options else None,
              "runs": args.runs, "model": args.model}
    if not backend.gpu_timed:  # a CPU timing means little without the CPU (a GPU backend names its GPU)
        report["cpu"] = cpu_model()
    if args.backend == "ort":
        report["onnxruntime"] = onnxruntime.__version__
    if "spinning" in backend.options:
        report.update(spinning=not args.no_spinning, denormals="flushed" if flushes_denormals(args) else "kept")
    if (backend.bench_precisions or backend.precisions) != ("fp32",):
        report.update(precision=args.precision, sparse=args.sparse)
    if args.batch:
        report["batch"] = args.batch
    if args.precision == "int8":
        report["int8_ranges"] = (f"Q/DQ from quantize_static on {args.calibrate}" if args.calibrate
                                 else "the file's own Q/DQ nodes")
    return report


def run(args) -> int:
    backend, settings = checked_backend(args)
    if args.rounds is not None and not args.vs:  # one model is timed in this process
        raise PrunefxError("--rounds applies to --vs (a speed-up's runs spread over fresh processes)")
    if args.rounds is not None and args.rounds > args.runs:
        raise PrunefxError(f"--rounds {args.rounds} spreads --runs {args.runs} over that many processes: give at "
                           "least as many runs as rounds")
    report = _describe(backend, args, settings)
    with tempfile.TemporaryDirectory(prefix="prunefx-bench-") as tmp:
        references = [(args.model, "a")] + ([(args.vs, "b")] if args.vs else [])
        models = [bench_model(reference, args, backend, Path(tmp), label) for reference, label in references]
        _check_same_inputs(models)
        report["inputs"] = [input_text(tensor) for tensor in models[0].inputs]  # shape and type of each
        if len(models[0].inputs) == 1 and models[0].inputs[0].dim() > 0:  # the batch timed, also where not asked for
            report.setdefault("batch", int(models[0].inputs[0].shape[0]))
        with LoadMeter() as meter:
            report.update(backend.bench(models, settings))
    if backend.times_on_cpu:  # a GPU's timing does not wait on the cores
        _note_contention(report, meter.share)
    if args.vs:
        report["vs"] = args.vs
    # a speed-up over a zero median is infinite: null, never the `Infinity` strict JSON readers refuse
    print(json.dumps(json_safe(report), indent=2, allow_nan=False) if args.json else _table(report))
    return 0


def _note_contention(report: dict, share: float | None) -> None:
    """The share of the cores other processes took while the models were timed (None: not known), and a note
    where it was a busy share (graph/timing.py's busy_share): those figures may be slower than the machine's own."""
    report["contention"] = share
    if busy_share(share):
        report.setdefault("notes", []).append(
            f"{share_text(share)} while this was measured: the figures may be slower than this machine's own; run it "
            f"again with nothing else running")


def _inputs_text(model) -> str:
    return ", ".join(input_text(tensor) for tensor in model.inputs)


def _check_same_inputs(models) -> None:
    """A speed-up of two models that take different inputs compares different work (a 640 px detector
    against a 320 px one is 4x faster for the pixels alone): refused, naming both inputs."""
    if len(models) == 2 and _inputs_text(models[0]) != _inputs_text(models[1]):
        first, second = models
        raise PrunefxError(f"{first.reference} takes {_inputs_text(first)} and {second.reference} takes "
                           f"{_inputs_text(second)}: a speed-up between different inputs compares different work; "
                           "compare models at the same input shape (--input-shape, or export both at one size)")


def _row(label: str, stats: dict) -> str:
    return (f"{label:<40} median {stats['median_ms']:8.3f} ms   p90 {stats['p90_ms']:8.3f} ms   "
            f"p99 {stats['p99_ms']:8.3f} ms")


def _footer(report: dict) -> str:
    backend = report["backend"]
    if "precision" in report:
        backend += f" {report['precision']}" + (" sparse" if report["sparse"] else "")
    count = report["threads"]
    threads = f", {count} thread{'' if count == 1 else 's'}" if count is not None else ""
    if "spinning" in report:
        threads += " (spinning)" if report["spinning"] else " (not spinning)"
    if "denormals" in report:
        threads += f", subnormal floats {'flushed to zero' if report['denormals'] == 'flushed' else 'kept'}"
    rounds = f" over {report['rounds']} fresh processes" if report.get("rounds", 1) > 1 else ""
    shapes = report.get("inputs") or []
    batch = f", input{'s' if len(shapes) > 1 else ''} {', '.join(shapes)}" if shapes else ""
    where = report.get("gpu") or report.get("cpu")
    gpu = f" on {where}" if where else ""
    gpu += f" (ONNX Runtime {report['onnxruntime']})" if report.get("onnxruntime") else ""
    footer = f"{report['runs']} timed runs each{rounds}{threads}{batch}, backend {backend}{gpu}"
    footer += "".join(f"\nnote: {note}" for note in report.get("notes", []))
    jetson = (report.get("latency") or report.get("a") or {}).get("trtexec", {}).get("jetson")
    if jetson:
        pinned = {True: "clocks pinned", False: "clocks NOT pinned (run sudo jetson_clocks)"}.get(
            jetson["clocks_pinned"], "clocks unknown")
        footer += f"\nJetson {jetson['model'] or ''}: power mode {jetson['power_mode']}, {pinned}"
    return footer


def _table(report: dict) -> str:
    if "vs" not in report:
        return _row(report["model"], report["latency"]) + "\n" + _footer(report)
    where = (f"in {report['rounds']} fresh process{'es' if report['rounds'] > 1 else ''}" if report.get("processes")
             else "in one process")
    how = report.get("note", f"measured alternately {where}")
    return "\n".join([_row(report["model"], report["a"]), _row(report["vs"], report["b"]),
                      f"speed-up of {report['vs']} over {report['model']}: {report['speedup']:.2f}x "
                      f"({how}{_interval_text(report)})",
                      _footer(report)])


def _interval_text(report: dict) -> str:
    if "speedup_low" not in report:  # a backend that gives none (trtexec) says why in its note
        return ""
    if report["speedup_low"] is None:
        return "; no interval: too few runs to judge a spread from, give more --runs"
    return interval_text({"low": report["speedup_low"], "high": report["speedup_high"],
                          "confidence": report["confidence"]}, "; ")
