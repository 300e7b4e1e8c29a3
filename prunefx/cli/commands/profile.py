"""prunefx profile MODEL_OR_ONNX [--backend ort|trt|trtexec|cuda]: a per-layer profile on a backend.

One row per layer, slowest first: its type, precision, median time and share, and what it computes. `ort` (the
default) reads ONNX Runtime's profiler, one row per node it runs (runtime/ort/profile_nodes.py); `trt`
builds the engine with the TensorRT Python API and times layers with an IProfiler; `trtexec` runs the
trtexec program with --exportProfile and --exportLayerInfo (Jetson boards); for those, a row says whether
the layer ran a sparse tensor-core kernel and lists the Program nodes it computes (fused layers list several)
or, for a bare .onnx file, the module scopes recorded in the file. `cuda` times each Program node replayed as
its own CUDA graph between CUDA events (runtime/cuda/node_profile.py). The choices are the registry's backends that profile
(runtime/backends/). --output PATH writes the rows as JSON.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prunefx.bench_models import bench_model, checked_backend, input_text
from prunefx.output import staged_file
from prunefx.output_paths import check_output_file
from prunefx.runtime import format_profile_table
from prunefx.runtime.tensorrt.layer_profile import write_profile_json


def run(args) -> int:
    backend, settings = checked_backend(args, purpose="profile")
    json_path = check_output_file(args.output) if args.output else None
    with tempfile.TemporaryDirectory(prefix="prunefx-profile-") as tmp:
        model = bench_model(args.model, args, backend, Path(tmp), "model")
        profile = backend.profile(model, settings)
    print(format_profile_table(profile, limit=args.top))
    if json_path:
        about = {"model": args.model, "backend": args.backend, "precision": args.precision, "sparse": args.sparse,
                 "inputs": [input_text(tensor) for tensor in model.inputs]}
        with staged_file(json_path) as staging:
            write_profile_json(profile, staging, about)
        print(f"wrote {json_path}")
    return 0
