"""TensorRT engines from prunefx ONNX files: build (FP32, FP16, INT8 from Q/DQ, 2:4 sparse weights), cache, run.

Written against TensorRT's documented Python API (8.6, 10.x and 11.x: `set_tensor_address` +
`execute_async_v3`); device memory, streams and CUDA events come from torch.cuda, so nothing else
(pycuda, cuda-python) is needed. `tensorrt` is imported only when an engine is built or loaded, and a
missing package or GPU raises BackendUnavailableError saying what to install.

What an engine is built with (precision, strong typing, builder flags) is planned in runtime/tensorrt/plan.py;
where it is cached and under which key, in runtime/tensorrt/engine_cache.py; its latency is measured by
runtime/measure/gpu_latency.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from prunefx.graph.whole_files import write_whole
from prunefx.runtime.errors import BackendUnavailableError, DeviceToolError, require_module
from prunefx.runtime.measure.gpu_latency import BackToBack
from prunefx.runtime.tensorrt.engine_cache import (
    calibration_digest,
    default_cache_dir,
    engine_file_key,
    timing_cache_key,
    trim_engine_cache,
)
from prunefx.runtime.tensorrt.plan import (
    BuildOptions,
    NetworkPlan,
    OnnxTypes,
    network_creation_flags,
    network_plan,
    onnx_types,
)

logger = logging.getLogger(__name__)

INSTALL_TENSORRT = ("install it with `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13 to match your CUDA) on "
                    "x86-64 Linux or Windows with an NVIDIA GPU, or on a Jetson board through JetPack "
                    "(`sudo apt install nvidia-jetpack`, which provides python3-libnvinfer)")
FP32 = BuildOptions()  # the default build: FP32, dense, TensorRT's workspace


# ---- availability -------------------------------------------------------------------------------

def require_tensorrt():
    """The `tensorrt` module, or BackendUnavailableError saying how to install it."""
    return require_module("tensorrt", "TensorRT", INSTALL_TENSORRT)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailableError("the TensorRT backend needs an NVIDIA GPU with CUDA, and torch sees none "
                                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")


def free_gpu_cache() -> None:
    """Hand the memory of engines or modules dropped since back to the driver (torch's caching allocator holds
    their buffers otherwise); nothing where torch has no GPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- build --------------------------------------------------------------------------------------

_LOGGERS: dict = {}


def _logger(trt):
    # One logger for the process: builders and runtimes keep a pointer to it, so it must never be collected.
    if trt not in _LOGGERS:
        _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


def _parse_onnx(trt, builder, logger, onnx_path: Path, plan: NetworkPlan):
    network = builder.create_network(network_creation_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise DeviceToolError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def configure(trt, builder, options: BuildOptions, plan: NetworkPlan, timing_cache: bytes):
    """The builder config for `plan`: only the flags it names (none for precision when strongly typed)."""
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names + tactics for the inspector
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    return config


def build_engine(onnx_path: str | os.PathLike, options: BuildOptions = FP32, *,
                 calibration: Sequence[Sequence[torch.Tensor]] | None = None,
                 cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> Engine:
    """The engine for `onnx_path` built with `options`, from the cache when it holds one.

    `calibration` (input batches) is read only for `int8` on a file without Q/DQ nodes: the file is then
    quantized with ONNX Runtime's quantize_static in TensorRT's symmetric form before the build."""
    trt = require_tensorrt()
    require_cuda()
    onnx_path = Path(onnx_path)
    types = onnx_types(onnx_path)
    if calibration is not None and options.precision == "int8" and not types.has_qdq:
        options = dataclasses.replace(options, calibration_digest=calibration_digest(calibration))
    gpu = torch.cuda.get_device_name()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = engine_file_key(onnx_path, options, trt.__version__, gpu)
    engine_file = cache / f"{key}.engine"
    if engine_file.is_file():
        cached = _cached_engine(engine_file, options)
        if cached is not None:
            with contextlib.suppress(OSError):  # used now: the cache's trimming removes the least recent first
                os.utime(engine_file)
            return cached
    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    source = _explicit_source(onnx_path, options, types, calibration, cache / f"{key}")
    plan = network_plan(trt.__version__, options.precision, onnx_types(source), sparse=options.sparse)
    if plan.lower_to_fp16:
        source = _lowered_fp16(source, cache / f"{key}.fp16.onnx")
    serialized = _build(trt, source, options, plan, cache / f"timing-{timing_cache_key(trt.__version__, gpu)}.cache")
    write_whole(engine_file, serialized)
    seconds = time.perf_counter() - started
    write_whole(cache / f"{key}.json", json.dumps({"onnx": str(onnx_path), "built_from": str(source),
                                                  "options": options.to_dict(), "plan": dataclasses.asdict(plan),
                                                  "tensorrt": trt.__version__, "gpu": gpu, "build_seconds": seconds}))
    if log:
        log(f"built TensorRT engine {engine_file.name[:12]}... in {seconds:.1f} s ({_describe(plan)})")
    try:
        trim_engine_cache(cache, keep=key)
    except OSError as error:  # only a cache: the engine just built is good
        logger.warning("could not trim the TensorRT engine cache %s (%s)", cache, error)
    return Engine.load(engine_file, options, cached=False)


def _describe(plan: NetworkPlan) -> str:
    typing = "strongly typed" if plan.strongly_typed else "weakly typed"
    return typing + (f", flags {', '.join(plan.builder_flags)}" if plan.builder_flags else "")


def _explicit_source(onnx_path: Path, options: BuildOptions, types: OnnxTypes, calibration, stem: Path) -> Path:
    """The file TensorRT parses: `onnx_path`, or for INT8 with calibration batches and no Q/DQ in the file, a
    copy quantized by ONNX Runtime's quantize_static in TensorRT's form (symmetric S8, per-channel weights, float
    biases)."""
    if options.precision != "int8" or types.has_qdq or calibration is None:
        return onnx_path
    from prunefx.runtime.onnx.quantize_static import quantize_static_file  # imports onnxruntime.quantization

    return quantize_static_file(onnx_path, stem.with_name(stem.name + ".qdq.onnx"), calibration, activations="s8",
                                quantize_bias=False)


def _lowered_fp16(source: Path, target: Path) -> Path:
    from prunefx.runtime.onnx.float16 import lower_to_float16

    return lower_to_float16(source, target)


def _cached_engine(engine_file: Path, options: BuildOptions) -> Engine | None:
    """The engine cached in `engine_file`, or None (the file removed) where TensorRT cannot load it: its key names
    the TensorRT version and the GPU, so such a file was damaged after it was written, and would fail every build
    of that key for good."""
    try:
        return Engine.load(engine_file, options, cached=True)
    except FileNotFoundError:  # trimmed by another process's build since it was found: built again
        return None
    except DeviceToolError as error:
        engine_file.unlink(missing_ok=True)
        logger.warning("cached TensorRT engine %s did not load (%s); it is built again", engine_file, error)
        return None


def _build(trt, onnx_path: Path, options: BuildOptions, plan: NetworkPlan, timing_file: Path) -> bytes:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path, plan)  # the parser must outlive the build
    timing = timing_file.read_bytes() if timing_file.is_file() else b""
    config = configure(trt, builder, options, plan, timing)
    _add_profile(trt, builder, network, config, options, onnx_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeviceToolError(f"TensorRT failed to build an engine for {onnx_path} with {options.to_dict()} "
                              f"({_describe(plan)}; the TensorRT log above says why)")
    write_whole(timing_file, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _add_profile(trt, builder, network, config, options: BuildOptions, onnx_path: Path) -> None:
    """An optimization profile at exactly `options.input_shapes` when the network has dynamic inputs, without
    which TensorRT builds nothing (runtime/tensorrt/input_shapes.py)."""
    inputs = [network.get_input(index) for index in range(network.num_inputs)]
    dynamic = [tensor for tensor in inputs if any(size < 0 for size in tensor.shape)]
    if not dynamic:
        return
    given = dict(options.input_shapes)
    missing = [tensor.name for tensor in dynamic if tensor.name not in given]
    if missing:
        raise DeviceToolError(f"{onnx_path}: input {missing[0]} has dynamic dimensions and no shape was given to "
                              "build it at (--input-shape)")
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = given[tensor.name]
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)


# ---- run and time -------------------------------------------------------------------------------

# TensorRT's data types by member name (trt.nptype has no bfloat16 nor fp8): the buffers an engine reads and writes
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "FP8": torch.float8_e4m3fn,
                 "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
                 "BOOL": torch.bool}


def _random_filled(buffer: torch.Tensor) -> torch.Tensor:
    """`buffer` filled with normal values drawn in float32 (torch draws none in FP8) from a generator of its own: the
    caller's CUDA random state is left as it was."""
    drawn = torch.empty(buffer.shape, dtype=torch.float32, device=buffer.device).normal_(
        generator=_seeded(buffer.device))
    return buffer.copy_(drawn)


def _seeded(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def torch_dtype(trt, dtype, tensor: str, path: Path) -> torch.dtype:
    """The torch dtype of an engine's input or output buffer; a type without one (INT4, FP4) is one line."""
    for member, torch_type in _TORCH_DTYPES.items():
        if getattr(trt.DataType, member, None) == dtype:
            return torch_type
    raise DeviceToolError(f"{path}: tensor {tensor} is of TensorRT type {dtype}, which prunefx cannot feed or read "
                          f"(it handles {', '.join(_TORCH_DTYPES)})")


class Engine:
    """A deserialised engine with one execution context and its input/output buffers on the GPU.
    Calling it runs once on the bound inputs (random unless `set_inputs` was called) and waits."""

    def __init__(self, trt, engine, path: Path, options: BuildOptions, *, cached: bool = False):
        self.trt, self.engine, self.path, self.options = trt, engine, path, options
        self.cached = cached
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.sampler = BackToBack(self.stream)
        self.buffers: dict[str, torch.Tensor] = {}
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        for name, shape in self._bound_shapes().items():
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
            buffer = torch.empty(shape, dtype=torch_dtype(trt, engine.get_tensor_dtype(name), name, path), device="cuda")
            self.buffers[name] = _random_filled(buffer) if buffer.is_floating_point() else buffer.zero_()
            self.context.set_tensor_address(name, buffer.data_ptr())
        torch.cuda.synchronize()  # the buffers were filled on the default stream; the engine runs on its own

    def _bound_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every input's and output's shape, a file with dynamic inputs bound at its profile's one shape first."""
        for name, shape in self.options.input_shapes:  # the outputs' shapes follow from the inputs'
            if not self.context.set_input_shape(name, shape):
                raise DeviceToolError(f"{self.path}: input {name} cannot take shape {tuple(shape)}: outside the "
                                      "engine's optimization profile (TensorRT's log says which dimension)")
        shapes = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            if any(size < 0 for size in shapes[name]):
                raise DeviceToolError(f"{self.path}: tensor {name} has a dynamic shape {shapes[name]}; give "
                                      "--input-shape")
        return shapes

    @classmethod
    def load(cls, path: str | os.PathLike, options: BuildOptions = FP32, *, cached: bool = False) -> Engine:
        trt = require_tensorrt()
        require_cuda()
        runtime = trt.Runtime(_logger(trt))
        engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise DeviceToolError(f"TensorRT could not load the engine {path} (built by another TensorRT version "
                                  "or for another GPU?)")
        instance = cls(trt, engine, Path(path), options, cached=cached)
        instance.runtime = runtime  # the runtime must outlive the engine
        return instance

    def set_inputs(self, *inputs: torch.Tensor) -> None:
        for name, value in zip(self.input_names, inputs, strict=True):
            self.buffers[name].copy_(value.reshape(self.buffers[name].shape))
        self.stream.wait_stream(torch.cuda.current_stream())  # the copies happen before the next run

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DeviceToolError(f"TensorRT failed to run the engine {self.path}")

    def __call__(self) -> list[torch.Tensor]:
        self.enqueue()
        self.stream.synchronize()
        return [self.buffers[name] for name in self.output_names]

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Outputs for `inputs`, copied to the CPU."""
        self.set_inputs(*inputs)
        return [output.cpu() for output in self()]

    def time_once(self) -> float:
        """Milliseconds of one run on the GPU: a sample of back-to-back runs between CUDA events on the engine's
        stream (runtime/measure/gpu_latency.BackToBack), so that a short engine's launch is not what is timed."""
        return self.sampler(self.enqueue)

    def engine_information(self) -> str:
        """The engine inspector's JSON description of every layer (name, type, tactic, metadata)."""
        inspector = self.engine.create_engine_inspector()
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
