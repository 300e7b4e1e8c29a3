"""prunefx profile MODEL_OR_ONNX --backend trt|trtexec: a per-layer TensorRT profile.

One row per engine layer, slowest first: its type, precision, median time and share, whether it ran a
sparse tensor-core kernel, and the Program nodes it computes (for a model reference or a .pt2: fused
layers list several nodes) or, for a bare .onnx file, the module scopes recorded in the file. `trt`
builds the engine with the TensorRT Python API and times layers with an IProfiler; `trtexec` runs the
trtexec program with --exportProfile and --exportLayerInfo (Jetson boards). --json PATH writes the rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prunefx import options
from prunefx.commands.bench import add_tensorrt_arguments, check_backend, onnx_for, tensorrt_engine
from prunefx.output import check_output_file, staged_file
from prunefx.runtime import (
    TrtexecOptions,
    build_layer_profile,
    format_profile_table,
    parse_engine_information,
    profile_engine,
    run_trtexec,
)
from prunefx.runtime.tensorrt_profile import write_profile_json

NAME = "profile"
HELP = "per-layer TensorRT profile: time per layer, sparse kernels, and the Program nodes each layer computes"
ONNX_ALLOWED = True


def add_arguments(parser) -> None:
    parser.add_argument("--backend", choices=("trt", "trtexec"), default="trt",
                        help="trt: TensorRT Python API (default); trtexec: the trtexec program (Jetson)")
    add_tensorrt_arguments(parser)
    parser.add_argument("--runs", type=options.count, default=50, help="profiled runs (default 50)")
    parser.add_argument("--warmup", type=options.non_negative, default=10, help="untimed warm-up runs (default 10)")
    parser.add_argument("--top", type=options.count, metavar="N", help="show only the N slowest layers")
    # -o is where results go in every command; --json (inspect, bench) prints JSON instead of text
    parser.add_argument("-o", "--output", metavar="PATH", help="also write the profile as JSON to PATH")


def run(args) -> int:
    check_backend(args)
    json_path = check_output_file(args.output) if args.output else None
    with tempfile.TemporaryDirectory(prefix="prunefx-profile-") as tmp:
        path, program, inputs = onnx_for(args.model, args, Path(tmp), "model")
        if args.backend == "trt":
            engine = tensorrt_engine(path, inputs, args)
            times = profile_engine(engine, warmup=args.warmup, runs=args.runs)
            profile = build_layer_profile(times.medians(), parse_engine_information(engine.engine_information()),
                                          path, program, runs=times.runs, source="tensorrt")
        else:
            options = TrtexecOptions(precision=args.precision, sparse=args.sparse, iterations=args.runs)
            result = run_trtexec(path, options, executable=args.trtexec, profile=True)
            profile = build_layer_profile(result.layer_times, parse_engine_information(result.layer_info or "{}"),
                                          path, program, runs=result.profiled_runs, source="trtexec")
    print(format_profile_table(profile, limit=args.top))
    if json_path:
        with staged_file(json_path) as staging:
            write_profile_json(profile, staging)
        print(f"wrote {json_path}")
    return 0
