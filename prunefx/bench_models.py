"""What `prunefx bench` and `prunefx profile` share: the checks of their backend flags (made in
prunefx/cli/flags.py), and the models handed to a backend (runtime/backends/): exported to ONNX for a backend
that reads files, the Program for one that runs it.

Every flag is checked against the chosen backend before a model is loaded: a flag the backend does not read,
a precision it does not offer or a missing install is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError, printable
from prunefx.image_statistics import calibration_read
from prunefx.loading import program_from_reference
from prunefx.models import check_input_shape, parse_input_shape
from prunefx.runtime import OnnxRuntimeSession, backends
from prunefx.runtime.backends import Backend, BenchModel, Settings
from prunefx.runtime.measure.measured_files import deployed, exported_file
from prunefx.runtime.model_precision import require_float32
from prunefx.runtime.ort.runners import timing_flushes_denormals
from prunefx.runtime.ort.session import shape_fits
from prunefx.runtime.ort.threads import LATENCY_THREADS

# flag (argparse dest) -> the Settings option a backend must read for the flag to apply
FLAG_OPTIONS = {"sparse": "sparse", "calibrate": "calibration", "trtexec": "trtexec", "cache_dir": "cache_dir",
                "compile": "compile", "no_spinning": "spinning", "keep_denormals": "flush_denormals",
                "rounds": "rounds", "threads": "threads"}


def checked_backend(args, *, purpose: str = "bench") -> tuple[Backend, Settings]:
    """The chosen backend and its settings, after refusing what it cannot do, before any model is loaded."""
    backend = backends.get(args.backend)
    for flag, option in FLAG_OPTIONS.items():
        if getattr(args, flag, None) and option not in backend.options:
            readers = [b.name for b in backends.backends() if option in b.options]
            raise PrunefxError(f"--{flag.replace('_', '-')} applies to --backend {', '.join(readers)}")
    if args.warmup is not None and not backend.reads_warmup:
        raise PrunefxError(f"--warmup does not apply to --backend {backend.name}: it keeps its own warm-up")
    settings = settings_from(args)
    precision = backend.require(settings, purpose=purpose)
    if args.calibrate and precision != "int8":
        raise PrunefxError("--calibrate applies to --backend trt --precision int8 (for trtexec, give a file "
                           "with Q/DQ nodes)")
    args.precision = precision
    return backend, settings.with_precision(precision)


def settings_from(args) -> Settings:
    warmup = Settings.warmup if args.warmup is None else args.warmup
    return Settings(runs=args.runs, warmup=warmup, precision=args.precision, batch=args.batch or 1,
                    threads=getattr(args, "threads", None) or LATENCY_THREADS, trtexec=args.trtexec, cache_dir=args.cache_dir,
                    sparse=args.sparse, compile=args.compile, spinning=not getattr(args, "no_spinning", False),
                    flush_denormals=flushes_denormals(args), rounds=_rounds(args))


def _rounds(args) -> int:
    # --rounds (as --threads and --warmup) defaults to None so that a value given where it is not read can be refused
    return getattr(args, "rounds", None) or Settings.rounds


def flushes_denormals(args) -> bool:
    return not getattr(args, "keep_denormals", False) and timing_flushes_denormals()


def bench_model(reference: str, args, backend: Backend, workdir: Path, label: str) -> BenchModel:
    """`reference` as `backend` reads it: its ONNX file (exported here for a model) or its Program."""
    if reference.endswith(".onnx"):
        if args.weights:
            raise PrunefxError(f"{reference}: --weights loads a state dict into a model; an .onnx file holds its own")
        if backend.reads != "onnx":
            raise PrunefxError(f"{reference}: an .onnx file cannot be timed with --backend {backend.name}")
        if args.batch:
            raise PrunefxError(f"{reference}: --batch cuts a Program; give an .onnx file's shape with --input-shape")
        path = Path(reference).expanduser()  # quoted, or after `--vs=`, the shell leaves its `~` alone
        inputs = _onnx_inputs(str(path), args.input_shape)
        return BenchModel(reference, None, path, inputs, _calibration(args, None, inputs))
    program = program_from_reference(reference, weights=args.weights, input_shape=args.input_shape,
                                     batch=args.batch).eval()
    if args.batch:
        program = deployed(program, args.batch)
    return program_bench_model(reference, program, backend, workdir / f"{label}.onnx",
                               calibrate=lambda inputs: _calibration(args, program, inputs))


def program_bench_model(reference: str, program: Program, backend: Backend, onnx_path: Path,
                        calibrate=lambda inputs: None) -> BenchModel:
    """`program` (in eval mode, at the batch it is timed at) as `backend` reads it: the Program, or its ONNX file
    written to `onnx_path`; `calibrate(inputs)`: INT8 calibration batches for a TensorRT build, or None."""
    if backend.float32_only:
        require_float32(program, backend.label)
    inputs = list(program.example_inputs)
    if backend.reads != "onnx":
        return BenchModel(reference, program, None, inputs)
    # a quantized model in the INT8 lowering the backend runs, as `prunefx quantize` delivers it
    path, _ = exported_file(program, onnx_path, int(inputs[0].shape[0]), activations=backend.int8_lowering)
    return BenchModel(reference, program, Path(path), inputs, calibrate(inputs))


def input_text(tensor: torch.Tensor) -> str:
    """'1x3x224x224 float32' ('scalar float32'): an input's shape and type, as bench and profile name what they timed."""
    return f"{'x'.join(map(str, tensor.shape)) or 'scalar'} {str(tensor.dtype).removeprefix('torch.')}"


def _calibration(args, program: Program | None, inputs: list[torch.Tensor]):
    return calibration_read(args, program, inputs[0]).batches if args.calibrate else None


def _onnx_inputs(path: str, input_shape: str | None) -> list[torch.Tensor]:
    """Random inputs for an .onnx file, each of the type its input declares (a half-precision file reads float16, an
    image file may read uint8): --input-shape gives one shape per input, separated by commas, in the file's
    order; inputs it leaves out take the file's static shapes. Checked here, before any timing process starts."""
    arguments = OnnxRuntimeSession(path).session.get_inputs()
    given = [parse_input_shape(text) for text in input_shape.split(",")] if input_shape else []
    if len(given) > len(arguments):
        raise PrunefxError(f"{path} takes {len(arguments)} input(s) ({_declared(arguments)}); --input-shape gives "
                           f"{len(given)} shapes")
    shaped = _inputs_with_shapes(path)
    shapes = [_given_shape(path, arg, shape, arg.name in shaped) for arg, shape in zip(arguments, given)]
    shapes += [_static_shape(path, arg, arguments, len(given), arg.name in shaped) for arg in arguments[len(given):]]
    generator = torch.Generator().manual_seed(0)  # its own: the same inputs every run, the caller's state left alone
    return [_random(shape, _dtype(path, arg), generator) for shape, arg in zip(shapes, arguments)]


def _given_shape(path: str, arg, shape: tuple[int, ...], declared: bool) -> tuple[int, ...]:
    """`shape` from --input-shape, when it fits the file's fixed dims (else every timing process would fail)."""
    if declared and not arg.shape:
        raise PrunefxError(f"{path}: input {_name(arg)} is a scalar: leave it out of --input-shape (the inputs after "
                           "those it gives take the file's shapes)")
    if not shape_fits(arg.shape, shape):
        raise PrunefxError(f"{path}: input {_name(arg)} expects shape {_dims(arg)}, got {'x'.join(map(str, shape))} "
                           "from --input-shape")
    return shape


def _inputs_with_shapes(path: str) -> set[str]:
    """The inputs whose shape the file declares (ONNX Runtime reports an input without one as a scalar)."""
    graph = onnx.load(path, load_external_data=False).graph  # loaded by ONNX Runtime already: readable
    return {value.name for value in graph.input if value.type.tensor_type.HasField("shape")}


def _static_shape(path: str, arg, arguments, given: int, declared: bool) -> tuple[int, ...]:
    if not declared:
        raise PrunefxError(f"{path}: input {_name(arg)} has no declared shape: give --input-shape")
    if any(not isinstance(dim, int) for dim in arg.shape):
        how = "" if len(arguments) == 1 else f", one shape per input separated by commas ({_declared(arguments)})"
        said = f" and --input-shape gives {given} shape{'s' if given > 1 else ''}" if given else ""
        raise PrunefxError(f"{path}: input {_name(arg)} has dynamic dimensions {_dims(arg)}{said}: give "
                           f"--input-shape{how}")
    # the file's own dims are input too: checked like --input-shape before allocating
    return check_input_shape(tuple(arg.shape), f"{path}: input shape")


def _declared(arguments) -> str:
    return ", ".join(f"{_name(arg)} {_dims(arg)} {arg.type}" for arg in arguments)


def _name(arg) -> str:
    return printable(repr(arg.name))[:60]  # a file's names are its author's text: never a terminal escape


def _dims(arg) -> str:
    return "x".join(str(dim) if isinstance(dim, int) else "?" for dim in arg.shape)


def _dtype(path: str, arg) -> torch.dtype:
    if arg.type not in _ONNX_TYPES:
        raise PrunefxError(f"{path}: input {_name(arg)} is {printable(str(arg.type))[:40]}, a type bench cannot "
                           "make random inputs of")
    return _ONNX_TYPES[arg.type]


# bfloat16 is left out: numpy, which ONNX Runtime's Python API is fed, has no such type
_ONNX_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
               "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
               "tensor(int16)": torch.int16, "tensor(int8)": torch.int8, "tensor(uint16)": torch.uint16,
               "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool}
# 8- and 16-bit inputs are data (uint8 images, int8 quantized tensors): random over the type's range
_FULL_RANGE = (torch.uint8, torch.int8, torch.uint16, torch.int16)


def _random(shape, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype in _FULL_RANGE:
        info = torch.iinfo(dtype)
        return torch.randint(info.min, info.max + 1, tuple(shape), generator=generator).to(dtype)
    return torch.zeros(shape, dtype=dtype)  # int32/int64 are indices and bool masks: 0 is valid for any table
