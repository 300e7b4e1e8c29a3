"""What `prunefx bench` and `prunefx profile` share: the backend flags, their checks, and the models handed to a
backend (runtime/backends/): exported to ONNX for a backend that reads files, the Program for one that runs it.

Every flag is checked against the chosen backend before a model is loaded: a flag the backend does not read,
a precision it does not offer or a missing install is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prunefx import options
from prunefx.data.calibration import calibration_data
from prunefx.graph.errors import PrunefxError
from prunefx.loading import program_from_reference
from prunefx.models import check_input_shape, parse_input_shape
from prunefx.runtime import OnnxRuntimeSession, backends
from prunefx.runtime.backends import Backend, BenchModel, Settings
from prunefx.runtime.measure.speedup import deployed, exported_file
from prunefx.runtime.model_precision import require_float32
from prunefx.runtime.ort.runners import timing_flushes_denormals

# flag (argparse dest) -> the Settings option a backend must read for the flag to apply
FLAG_OPTIONS = {"sparse": "sparse", "calibrate": "calibration", "trtexec": "trtexec", "cache_dir": "cache_dir",
                "compile": "compile", "no_spinning": "spinning", "keep_denormals": "flush_denormals"}


def add_backend_arguments(parser, choices: list[str], default: str) -> None:
    """`--backend` among `choices`, and the options some backends read."""
    parser.add_argument("--backend", choices=choices, default=default,
                        help=", ".join(f"{name}: {backends.label(name)}{' (default)' if name == default else ''}"
                                       for name in choices))
    precisions = dict.fromkeys(p for name in choices for p in (backends.get(name).bench_precisions
                                                               or backends.get(name).precisions))
    parser.add_argument("--precision", choices=list(precisions), default=None,
                        help="precision (default: the backend's, fp16 on cuda, else fp32); int8 (TensorRT) needs a "
                             "file with Q/DQ nodes (quantize_int8) or --calibrate DATA to quantize it first")
    parser.add_argument("--batch", type=options.count, metavar="B",
                        help="cut a model reference or .pt2 to batch B (default: its own batch, 1 for a reference)")
    parser.add_argument("--compile", action="store_true", help="cuda: torch.compile (inductor) before timing")
    parser.add_argument("--sparse", action="store_true",
                        help="allow 2:4 sparse tensor-core kernels (TensorRT SPARSE_WEIGHTS / trtexec --sparsity)")
    parser.add_argument("--calibrate", metavar="DATA",
                        help="for --backend trt --precision int8 on a file without Q/DQ: fashion-mnist, "
                             "imagenet-sample or a folder of images (256 images), read by ONNX Runtime's "
                             "quantize_static to write TensorRT's symmetric Q/DQ form first")
    parser.add_argument("--trtexec", metavar="PATH", help="the trtexec program (default: on PATH or JetPack's)")
    parser.add_argument("--cache-dir", help="TensorRT engine cache (default ~/.cache/prunefx/tensorrt)")


def checked_backend(args) -> tuple[Backend, Settings]:
    """The chosen backend and its settings, after refusing what it cannot do, before any model is loaded."""
    backend = backends.get(args.backend)
    for flag, option in FLAG_OPTIONS.items():
        if getattr(args, flag, None) and option not in backend.options:
            readers = [b.name for b in backends.backends() if option in b.options]
            raise PrunefxError(f"--{flag.replace('_', '-')} applies to --backend {', '.join(readers)}")
    settings = settings_from(args)
    precision = backend.require(settings, purpose="bench")
    if args.calibrate and precision != "int8":
        raise PrunefxError("--calibrate applies to --backend trt --precision int8 (for trtexec, give a file "
                           "with Q/DQ nodes)")
    args.precision = precision
    return backend, settings.with_precision(precision)


def settings_from(args) -> Settings:
    return Settings(runs=args.runs, warmup=args.warmup, precision=args.precision, batch=args.batch or 1,
                    threads=getattr(args, "threads", 1), trtexec=args.trtexec, cache_dir=args.cache_dir,
                    sparse=args.sparse, compile=args.compile, spinning=not getattr(args, "no_spinning", False),
                    flush_denormals=flushes_denormals(args), rounds=getattr(args, "rounds", 1))


def flushes_denormals(args) -> bool:
    return not getattr(args, "keep_denormals", False) and timing_flushes_denormals()


def bench_model(reference: str, args, backend: Backend, workdir: Path, label: str) -> BenchModel:
    """`reference` as `backend` reads it: its ONNX file (exported here for a model) or its Program."""
    if reference.endswith(".onnx"):
        if backend.reads != "onnx":
            raise PrunefxError(f"{reference}: an .onnx file cannot be timed with --backend {backend.name}")
        if args.batch:
            raise PrunefxError(f"{reference}: --batch cuts a Program; give an .onnx file's shape with --input-shape")
        path = Path(reference).expanduser()  # quoted, or after `--vs=`, the shell leaves its `~` alone
        inputs = _onnx_inputs(str(path), args.input_shape)
        return BenchModel(reference, None, path, inputs, _calibration(args, inputs))
    program = program_from_reference(reference, weights=args.weights, input_shape=args.input_shape).eval()
    if backend.float32_only:
        require_float32(program, backend.label)
    if args.batch:
        program = deployed(program, args.batch)
    inputs = list(program.example_inputs)
    if backend.reads != "onnx":
        return BenchModel(reference, program, None, inputs)
    # a quantized model in the INT8 lowering the backend runs, as `prunefx quantize` delivers it
    path, _ = exported_file(program, workdir / f"{label}.onnx", int(inputs[0].shape[0]),
                            activations=backend.int8_lowering)
    return BenchModel(reference, program, Path(path), inputs, _calibration(args, inputs))


def _calibration(args, inputs: list[torch.Tensor]):
    return calibration_data(args.calibrate, inputs[0]).batches if args.calibrate else None


def _onnx_inputs(path: str, input_shape: str | None) -> list[torch.Tensor]:
    """Random inputs for an .onnx file, of its inputs' own types (a half-precision file reads float16): at
    --input-shape, or the file's own static input shapes."""
    arguments = OnnxRuntimeSession(path).session.get_inputs()
    dtypes = [_ONNX_TYPES.get(arg.type, torch.float32) for arg in arguments]
    if input_shape:
        return [_random(parse_input_shape(input_shape), dtypes[0])]
    shapes = [arg.shape for arg in arguments]
    if any(not isinstance(dim, int) for shape in shapes for dim in shape):
        raise PrunefxError(f"{path} has dynamic input dimensions {shapes}: give --input-shape")
    for shape in shapes:  # the file's own dims are input too: checked like --input-shape before allocating
        check_input_shape(tuple(shape), f"{path}: input shape")
    return [_random(shape, dtype) for shape, dtype in zip(shapes, dtypes)]


_ONNX_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
               "tensor(bfloat16)": torch.bfloat16, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
               "tensor(bool)": torch.bool}


def _random(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
