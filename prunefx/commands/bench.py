"""prunefx bench MODEL_OR_ONNX [--vs OTHER]: latency statistics, and a side-by-side speed-up.

A model reference is exported to ONNX first (in a temporary folder) unless --backend torch.
With --vs, both models are timed alternately in this one process, so that machine noise hits
both equally, and the ratio of medians is the speed-up.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from prunefx.graph.errors import PrunefxError
from prunefx.loading import program_from_reference
from prunefx.models import parse_input_shape
from prunefx.runtime import (
    OnnxRuntimeSession,
    compare_latency,
    export_onnx,
    measure_latency,
    onnx_runner,
    torch_runner,
)

NAME = "bench"
HELP = "measure latency (median, p90, p99); with --vs, two models side by side and their speed-up"
ONNX_ALLOWED = True


def add_arguments(parser) -> None:
    parser.add_argument("--vs", metavar="OTHER", help="a second model or .onnx file, timed alternately with the first")
    parser.add_argument("--backend", choices=("ort", "torch"), default="ort", help="ONNX Runtime (default) or torch eager")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per model (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _onnx_inputs(path: str, input_shape: str | None) -> list[torch.Tensor]:
    """Random inputs for an .onnx file: --input-shape, or the file's own static input shapes."""
    arguments = OnnxRuntimeSession(path).session.get_inputs()
    if input_shape:
        return [torch.randn(parse_input_shape(input_shape))]
    shapes = [arg.shape for arg in arguments]
    if any(not isinstance(dim, int) for shape in shapes for dim in shape):
        raise PrunefxError(f"{path} has dynamic input dimensions {shapes}: give --input-shape")
    return [torch.randn(shape) for shape in shapes]


def _runner(reference: str, args, workdir: Path, label: str):
    if reference.endswith(".onnx"):
        if args.backend != "ort":
            raise PrunefxError(f"{reference}: an .onnx file can only be timed with --backend ort")
        return onnx_runner(reference, _onnx_inputs(reference, args.input_shape), threads=args.threads)
    program = program_from_reference(reference, weights=args.weights, input_shape=args.input_shape).eval()
    if args.backend == "torch":
        return torch_runner(program, threads=args.threads)
    path = export_onnx(program, workdir / f"{label}.onnx").path
    return onnx_runner(path, program.example_inputs, threads=args.threads)


def run(args) -> int:
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise PrunefxError("--runs and --threads must be at least 1 and --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="prunefx-bench-") as tmp:
        first = _runner(args.model, args, Path(tmp), "a")
        report = {"backend": args.backend, "threads": args.threads, "runs": args.runs, "model": args.model}
        if args.vs:
            second = _runner(args.vs, args, Path(tmp), "b")
            result = compare_latency(first, second, warmup=args.warmup, runs=args.runs, threads=args.threads)
            report.update(vs=args.vs, **result.to_dict())
        else:
            report["latency"] = measure_latency(first, warmup=args.warmup, runs=args.runs, threads=args.threads).to_dict()
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _row(label: str, stats: dict) -> str:
    return (f"{label:<40} median {stats['median_ms']:8.3f} ms   p90 {stats['p90_ms']:8.3f} ms   "
            f"p99 {stats['p99_ms']:8.3f} ms")


def _table(report: dict) -> str:
    footer = f"{report['runs']} timed runs each, {report['threads']} threads, backend {report['backend']}"
    if "vs" not in report:
        return _row(report["model"], report["latency"]) + "\n" + footer
    return "\n".join([_row(report["model"], report["a"]), _row(report["vs"], report["b"]),
                      f"speed-up of {report['vs']} over {report['model']}: {report['speedup']:.2f}x "
                      "(measured alternately in one process)", footer])
