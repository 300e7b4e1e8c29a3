"""prunefx bench MODEL_OR_ONNX [--vs OTHER] [--backend ort|torch|trt|torch-trt|trtexec]: latency statistics,
and a side-by-side speed-up.

Backends: ONNX Runtime on the CPU (default), torch eager, TensorRT engines built from the ONNX file
(`trt`, timed with CUDA events, engines cached), Torch-TensorRT compiling the Program directly
(`torch-trt`), and the `trtexec` program (Jetson boards). A model reference is exported to ONNX first (in a
temporary folder) for ort, trt and trtexec. With --vs, both models are timed alternately (each round in one process),
so that machine noise hits both equally, and the ratio of medians is the speed-up, with its 90 % interval (a
bootstrap over the alternating blocks, runtime/latency.py: `speedup_low`, `speedup_high` in --json); trtexec
runs are separate processes, one after the other, and say so (no interval). With ort, the runs are spread over
`--rounds` fresh processes (4 by default), each with its own pair of sessions: where one process lands varies
by several per cent from the next (runtime/latency.py's compare_rounds), and the interval covers that too. ort sessions flush
subnormal floats to zero unless --keep-denormals (runtime/runners.py's timing_flushes_denormals says why).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from prunefx import options
from prunefx.data.calibration import calibration_data
from prunefx.graph.errors import PrunefxError
from prunefx.loading import program_from_reference
from prunefx.models import check_input_shape, parse_input_shape
from prunefx.reports.budget_text import interval_text
from prunefx.runtime import (
    BuildOptions,
    OnnxRunnerMaker,
    OnnxRuntimeSession,
    TrtexecOptions,
    build_engine,
    compare_gpu_latency,
    compare_latency,
    compile_torch_tensorrt,
    export_onnx,
    measure_gpu_latency,
    measure_latency,
    run_trtexec,
    torch_runner,
)
from prunefx.runtime.latency import compare_rounds
from prunefx.runtime.runners import timing_flushes_denormals
from prunefx.runtime.tensorrt_engine import require_cuda, require_tensorrt
from prunefx.runtime.torch_tensorrt_backend import require_torch_tensorrt
from prunefx.runtime.trtexec import find_trtexec

NAME = "bench"
HELP = "measure latency (median, p90, p99); with --vs, two models side by side and their speed-up"
ONNX_ALLOWED = True
BACKENDS = ("ort", "torch", "trt", "torch-trt", "trtexec")
GPU_TIMED = ("trt", "torch-trt")  # timed here with CUDA events


def add_arguments(parser) -> None:
    parser.add_argument("--vs", metavar="OTHER", help="a second model or .onnx file, timed alternately with the first")
    parser.add_argument("--backend", choices=BACKENDS, default="ort",
                        help="ort: ONNX Runtime, CPU (default); torch: eager; trt: TensorRT engine from the ONNX file; "
                             "torch-trt: Torch-TensorRT; trtexec: the trtexec program (Jetson)")
    add_tensorrt_arguments(parser)
    parser.add_argument("--runs", type=options.runs, default=100, help="timed runs per model (default 100)")
    parser.add_argument("--warmup", type=options.warmup_runs, default=10, help="untimed warm-up runs per model (default 10)")
    parser.add_argument("--threads", type=options.threads, default=2, help="intra-op threads for ort and torch (default 2)")
    parser.add_argument("--no-spinning", action="store_true",
                        help="ort: worker threads sleep between operators instead of spinning (ONNX Runtime's "
                             "default, and prunefx's, is to spin; turn it off on hosts that share their cores)")
    parser.add_argument("--rounds", type=options.runs, default=4,
                        help="ort with --vs: fresh processes the runs are spread over, a pair of sessions each (default 4)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="ort: time subnormal floats as IEEE arithmetic (slow on x86) instead of flushing them to "
                             "zero as GPUs and TensorRT do (also PRUNEFX_KEEP_DENORMALS=1, for every command)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_tensorrt_arguments(parser) -> None:
    """TensorRT options, shared with `prunefx profile`."""
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="TensorRT precision (default fp32); int8 needs a file with Q/DQ nodes (quantize_int8, "
                             "TensorRT's explicit quantization) or --calibrate DATA to quantize it first")
    parser.add_argument("--sparse", action="store_true",
                        help="allow 2:4 sparse tensor-core kernels (TensorRT SPARSE_WEIGHTS / trtexec --sparsity)")
    parser.add_argument("--calibrate", metavar="DATA",
                        help="for --backend trt --precision int8 on a file without Q/DQ: fashion-mnist, "
                             "imagenet-sample or a folder of images (256 images), read by ONNX Runtime's "
                             "quantize_static to write TensorRT's symmetric Q/DQ form first")
    parser.add_argument("--trtexec", metavar="PATH", help="the trtexec program (default: on PATH or JetPack's)")
    parser.add_argument("--cache-dir", help="TensorRT engine cache (default ~/.cache/prunefx/tensorrt)")


def check_backend(args) -> None:
    """Fail before any export with what is missing and how to install it."""
    if args.backend in ("ort", "torch") and (args.precision != "fp32" or args.sparse):
        raise PrunefxError("--precision and --sparse apply to --backend trt, torch-trt and trtexec")
    if args.calibrate and (args.backend != "trt" or args.precision != "int8"):
        raise PrunefxError("--calibrate applies to --backend trt --precision int8 (for trtexec, give a file "
                           "with Q/DQ nodes)")
    if args.backend == "trt":
        require_tensorrt()
        require_cuda()
    elif args.backend == "torch-trt":
        require_torch_tensorrt()
        require_cuda()
    elif args.backend == "trtexec":
        find_trtexec(args.trtexec)


def _onnx_inputs(path: str, input_shape: str | None) -> list[torch.Tensor]:
    """Random inputs for an .onnx file: --input-shape, or the file's own static input shapes."""
    arguments = OnnxRuntimeSession(path).session.get_inputs()
    if input_shape:
        return [torch.randn(parse_input_shape(input_shape))]
    shapes = [arg.shape for arg in arguments]
    if any(not isinstance(dim, int) for shape in shapes for dim in shape):
        raise PrunefxError(f"{path} has dynamic input dimensions {shapes}: give --input-shape")
    for shape in shapes:  # the file's own dims are input too: checked like --input-shape before allocating
        check_input_shape(tuple(shape), f"{path}: input shape")
    return [torch.randn(shape) for shape in shapes]


def onnx_for(reference: str, args, workdir: Path, label: str):
    """(ONNX file, the Program it came from or None, inputs) for a model reference or an .onnx file."""
    if reference.endswith(".onnx"):
        return reference, None, _onnx_inputs(reference, args.input_shape)
    program = program_from_reference(reference, weights=args.weights, input_shape=args.input_shape).eval()
    return export_onnx(program, workdir / f"{label}.onnx").path, program, list(program.example_inputs)


def _runner(reference: str, args, workdir: Path, label: str):
    """A zero-argument runner (ort, torch) or a timed one returning milliseconds (trt, torch-trt)."""
    if reference.endswith(".onnx") and args.backend in ("torch", "torch-trt"):
        raise PrunefxError(f"{reference}: an .onnx file cannot be timed with --backend {args.backend}")
    if args.backend == "torch":
        return torch_runner(program_from_reference(reference, weights=args.weights, input_shape=args.input_shape)
                            .eval(), threads=args.threads)
    if args.backend == "torch-trt":
        program = program_from_reference(reference, weights=args.weights, input_shape=args.input_shape).eval()
        return compile_torch_tensorrt(program, precision=args.precision, sparse=args.sparse).time_once
    if args.backend == "trt":
        path, _, inputs = onnx_for(reference, args, workdir, label)
        return tensorrt_engine(path, inputs, args).time_once
    return _ort_maker(reference, args, workdir, label)()


def _ort_maker(reference: str, args, workdir: Path, label: str):
    """A function making a fresh ONNX Runtime runner (a new session) on each call; the file is exported once."""
    path, _, inputs = onnx_for(reference, args, workdir, label)
    return OnnxRunnerMaker(path, inputs, threads=args.threads, spinning=not args.no_spinning,
                           flush_denormals=_flushes(args))


def _flushes(args) -> bool:
    return not args.keep_denormals and timing_flushes_denormals()


def tensorrt_engine(path, inputs: list[torch.Tensor], args):
    """The (cached) engine for `path` with the command's precision, sparsity and calibration, inputs bound."""
    calibration = calibration_data(args.calibrate, inputs[0]).batches if args.calibrate else None
    engine = build_engine(path, BuildOptions(precision=args.precision, sparse=args.sparse), calibration=calibration,
                          cache_dir=args.cache_dir)
    engine.set_inputs(*[x.cuda() for x in inputs])
    return engine


def _trtexec_report(args, workdir: Path) -> dict:
    options = TrtexecOptions(precision=args.precision, sparse=args.sparse, iterations=args.runs)
    report = {}
    for side, reference in (("a", args.model), ("b", args.vs)):
        if reference is None:
            continue
        path, _, _ = onnx_for(reference, args, workdir, side)
        result = run_trtexec(path, options, executable=args.trtexec)
        report[side] = {**result.latency.to_dict(), "trtexec": result.to_dict()}
    if "b" in report:
        report.update(vs=args.vs, speedup=report["a"]["median_ms"] / report["b"]["median_ms"],
                      note="trtexec runs one after the other, not alternately")
    else:
        report["latency"] = report.pop("a")
    return report


def run(args) -> int:
    for flag in ("no_spinning", "keep_denormals"):
        if getattr(args, flag) and args.backend != "ort":
            raise PrunefxError(f"--{flag.replace('_', '-')} applies to --backend ort (ONNX Runtime's sessions)")
    check_backend(args)
    report = {"backend": args.backend, "threads": None if args.backend in (*GPU_TIMED, "trtexec") else args.threads,
              "runs": args.runs, "model": args.model}
    if args.backend == "ort":
        report.update(spinning=not args.no_spinning, denormals="flushed" if _flushes(args) else "kept")
    if args.backend not in ("ort", "torch"):
        report.update(precision=args.precision, sparse=args.sparse)
    if args.precision == "int8":
        report["int8_ranges"] = (f"Q/DQ from quantize_static on {args.calibrate}" if args.calibrate
                                 else "the file's own Q/DQ nodes")
    measure, compare = ((measure_gpu_latency, compare_gpu_latency) if args.backend in GPU_TIMED else
                        (lambda fn, **kw: measure_latency(fn, threads=args.threads, **kw),
                         lambda a, b, **kw: compare_latency(a, b, threads=args.threads, **kw)))
    with tempfile.TemporaryDirectory(prefix="prunefx-bench-") as tmp:
        if args.backend == "trtexec":
            report.update(_trtexec_report(args, Path(tmp)))
        elif args.vs and args.backend == "ort":
            makers = [_ort_maker(reference, args, Path(tmp), label) for reference, label in ((args.model, "a"), (args.vs, "b"))]
            report.update(vs=args.vs, **compare_rounds(*makers, rounds=min(args.rounds, args.runs), warmup=args.warmup,
                                                       runs=args.runs, threads=args.threads, processes=True).to_dict())
        elif args.vs:
            first, second = _runner(args.model, args, Path(tmp), "a"), _runner(args.vs, args, Path(tmp), "b")
            report.update(vs=args.vs, **compare(first, second, warmup=args.warmup, runs=args.runs).to_dict())
        else:
            first = _runner(args.model, args, Path(tmp), "a")
            report["latency"] = measure(first, warmup=args.warmup, runs=args.runs).to_dict()
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _row(label: str, stats: dict) -> str:
    return (f"{label:<40} median {stats['median_ms']:8.3f} ms   p90 {stats['p90_ms']:8.3f} ms   "
            f"p99 {stats['p99_ms']:8.3f} ms")


def _footer(report: dict) -> str:
    backend = report["backend"]
    if "precision" in report:
        backend += f" {report['precision']}" + (" sparse" if report["sparse"] else "")
    threads = f", {report['threads']} threads" if report["threads"] is not None else ""
    if "spinning" in report:
        threads += " (spinning)" if report["spinning"] else " (not spinning)"
    if "denormals" in report:
        threads += f", subnormal floats {'flushed to zero' if report['denormals'] == 'flushed' else 'kept'}"
    rounds = f" over {report['rounds']} fresh processes" if report.get("rounds", 1) > 1 else ""
    footer = f"{report['runs']} timed runs each{rounds}{threads}, backend {backend}"
    jetson = (report.get("latency") or report.get("a") or {}).get("trtexec", {}).get("jetson")
    if jetson:
        pinned = {True: "clocks pinned", False: "clocks NOT pinned (run sudo jetson_clocks)"}.get(
            jetson["clocks_pinned"], "clocks unknown")
        footer += f"\nJetson {jetson['model'] or ''}: power mode {jetson['power_mode']}, {pinned}"
    return footer


def _table(report: dict) -> str:
    if "vs" not in report:
        return _row(report["model"], report["latency"]) + "\n" + _footer(report)
    where = f"in {report['rounds']} fresh processes" if report.get("processes") else "in one process"
    how = report.get("note", f"measured alternately {where}")
    interval = ({"low": report["speedup_low"], "high": report["speedup_high"], "confidence": report["confidence"]}
                if report.get("speedup_low") is not None else None)
    return "\n".join([_row(report["model"], report["a"]), _row(report["vs"], report["b"]),
                      f"speed-up of {report['vs']} over {report['model']}: {report['speedup']:.2f}x "
                      f"({how}{interval_text(interval, '; ')})",
                      _footer(report)])
