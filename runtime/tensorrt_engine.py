"""TensorRT engines from prunefx ONNX files: build (FP32, FP16, INT8, 2:4 sparse weights), cache, time.

Written against TensorRT's documented Python API (8.6 and 10.x: `set_tensor_address` +
`execute_async_v3`); device memory, streams and CUDA events come from torch.cuda, so nothing else
(pycuda, cuda-python) is needed. `tensorrt` is imported only when an engine is built or loaded, and a
missing package or GPU raises BackendUnavailableError saying what to install.

Caching. Building an engine takes seconds to minutes, so engines are cached on disk under the sha256 of
(ONNX file bytes, build options, TensorRT version, GPU name): any change to the model, the precision,
the sparsity flag, the calibration data, TensorRT or the GPU makes a new key; nothing else does. The
timing cache (per-tactic timings the builder measures) is keyed by TensorRT version and GPU name only:
timings of a kernel on a shape do not depend on which model asked for them, so every build on this GPU
shares it and later builds are faster. Folder: $PRUNEFX_CACHE_DIR/tensorrt, default ~/.cache/prunefx.

Precision. `fp16` and `int8` let TensorRT choose those kernels where faster (FP32 stays allowed). INT8
with calibration batches uses IInt8EntropyCalibrator2 on them (implicit quantisation: deprecated since TensorRT
10.1 in favour of Q/DQ models, still supported); INT8 without calibration data sets a
placeholder dynamic range on every tensor, as trtexec does: the timing is real, the outputs are not,
and `Engine.calibrated` says which. `sparse=True` sets SPARSE_WEIGHTS, which lets TensorRT pick sparse
tensor-core kernels for layers whose weights are 2:4 along input channels (passes/sparsify_nm); which
layers actually ran sparse is in the per-layer profile (runtime/tensorrt_profile.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunefx.runtime.errors import BackendUnavailableError, DeviceToolError, MeasurementError, require_module
from prunefx.runtime.latency import LatencyComparison, LatencyStats

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_TENSORRT = ("install it with `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13 to match your CUDA) on "
                    "x86-64 Linux or Windows with an NVIDIA GPU, or on a Jetson board through JetPack "
                    "(`sudo apt install nvidia-jetpack`, which provides python3-libnvinfer)")
PLACEHOLDER_INT8_RANGE = 4.0  # INT8 without calibration: timing only (see the module docstring)


@dataclass(frozen=True)
class BuildOptions:
    """What an engine is built with; every field is part of the cache key."""

    precision: str = "fp32"
    sparse: bool = False
    workspace_mib: int | None = None           # builder scratch memory limit (None: TensorRT's default)
    calibration_digest: str | None = None      # sha256 of the INT8 calibration batches (calibration_digest)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise MeasurementError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- availability -------------------------------------------------------------------------------

def require_tensorrt():
    """The `tensorrt` module, or BackendUnavailableError saying how to install it."""
    return require_module("tensorrt", "TensorRT", INSTALL_TENSORRT)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailableError("the TensorRT backend needs an NVIDIA GPU with CUDA, and torch sees none "
                                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                                      "use --backend ort on this machine")


# ---- cache keys (pure, testable without TensorRT) -----------------------------------------------

def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: parts cannot run into each other
        digest.update(part)
    return digest.hexdigest()


def engine_cache_key(onnx_bytes: bytes, options: BuildOptions, tensorrt_version: str, gpu_name: str) -> str:
    """sha256 of the ONNX file's bytes, the build options, the TensorRT version and the GPU name."""
    canonical = json.dumps(options.to_dict(), sort_keys=True).encode()
    return _sha256(onnx_bytes, canonical, tensorrt_version.encode(), gpu_name.encode())


def timing_cache_key(tensorrt_version: str, gpu_name: str) -> str:
    return _sha256(b"timing-cache", tensorrt_version.encode(), gpu_name.encode())


def calibration_digest(batches: Sequence[Sequence[torch.Tensor]]) -> str:
    """sha256 of the calibration batches' shapes and values: different data, different INT8 engine."""
    parts = []
    for batch in batches:
        for tensor in batch:
            array = np.ascontiguousarray(tensor.detach().cpu().numpy())
            parts += [str(array.shape).encode(), str(array.dtype).encode(), array.tobytes()]
    return _sha256(*parts)


def default_cache_dir() -> Path:
    root = os.environ.get("PRUNEFX_CACHE_DIR") or Path.home() / ".cache" / "prunefx"
    return Path(root) / "tensorrt"


# ---- build --------------------------------------------------------------------------------------

_LOGGERS: dict = {}


def _logger(trt):
    # One logger for the process: builders and runtimes keep a pointer to it, so it must never be collected.
    if trt not in _LOGGERS:
        _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise DeviceToolError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def _configure(trt, builder, network, options: BuildOptions, timing_cache: bytes, calibrator):
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names + tactics for the inspector
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines keep FP16 as the fallback for unquantised layers
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if calibrator is not None:
            config.int8_calibrator = calibrator
        else:
            _placeholder_ranges(network)
    if options.sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    return config


def _placeholder_ranges(network) -> None:
    for index in range(network.num_inputs):
        network.get_input(index).set_dynamic_range(-PLACEHOLDER_INT8_RANGE, PLACEHOLDER_INT8_RANGE)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for output in range(layer.num_outputs):
            layer.get_output(output).set_dynamic_range(-PLACEHOLDER_INT8_RANGE, PLACEHOLDER_INT8_RANGE)


def _calibrator(trt, batches: Sequence[Sequence[torch.Tensor]]):
    """IInt8EntropyCalibrator2 over `batches` (tuples of input tensors, sent to the GPU one batch at a time).
    Defined here because its base class exists only once tensorrt is imported."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = [tuple(t.detach().float().contiguous() for t in batch) for batch in batches]
            self.position, self.on_device = 0, []

        def get_batch_size(self) -> int:
            return int(self.batches[0][0].shape[0])

        def get_batch(self, names):
            if self.position >= len(self.batches):
                return None
            self.on_device = [tensor.cuda() for tensor in self.batches[self.position]]  # kept alive until next call
            self.position += 1
            return [int(tensor.data_ptr()) for tensor in self.on_device[:len(names)]]

        def read_calibration_cache(self):
            return None  # the engine cache already keys on the calibration data

        def write_calibration_cache(self, cache) -> None:
            return None

    return EntropyCalibrator()


def _split_to_batch(batches: Sequence[Sequence[torch.Tensor]], batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """Calibration batches cut to the network's static batch size (training loaders give larger ones)."""
    pieces = []
    for batch in batches:
        count = int(batch[0].shape[0]) // batch_size
        pieces += [tuple(t[i * batch_size:(i + 1) * batch_size] for t in batch) for i in range(count)]
    return pieces


def build_engine(onnx_path: str | os.PathLike, options: BuildOptions = BuildOptions(), *,
                 calibration: Sequence[Sequence[torch.Tensor]] | None = None,
                 cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> Engine:
    """The engine for `onnx_path` built with `options`, from the cache when it holds one."""
    trt = require_tensorrt()
    require_cuda()
    onnx_path = Path(onnx_path)
    onnx_bytes = onnx_path.read_bytes()
    if calibration is not None and options.precision == "int8":
        options = dataclasses.replace(options, calibration_digest=calibration_digest(calibration))
    gpu = torch.cuda.get_device_name()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = engine_cache_key(onnx_bytes, options, trt.__version__, gpu)
    engine_file = cache / f"{key}.engine"
    if engine_file.is_file():
        return Engine.load(engine_file, options, calibrated=_calibrated(options), cached=True)
    started = time.perf_counter()
    serialized = _build(trt, onnx_path, options, calibration, cache / f"timing-{timing_cache_key(trt.__version__, gpu)}.cache")
    cache.mkdir(parents=True, exist_ok=True)
    engine_file.write_bytes(serialized)
    seconds = time.perf_counter() - started
    (cache / f"{key}.json").write_text(json.dumps({"onnx": str(onnx_path), "options": options.to_dict(),
                                                   "tensorrt": trt.__version__, "gpu": gpu, "build_seconds": seconds}))
    if log:
        log(f"built TensorRT engine {engine_file.name[:12]}... in {seconds:.1f} s")
    return Engine.load(engine_file, options, calibrated=_calibrated(options), cached=False)


def _calibrated(options: BuildOptions) -> bool:
    return options.precision != "int8" or options.calibration_digest is not None


def _build(trt, onnx_path: Path, options: BuildOptions, calibration, timing_file: Path) -> bytes:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path)  # the parser must outlive the build
    calibrator = None
    if calibration is not None and options.precision == "int8":
        batch_size = int(network.get_input(0).shape[0])
        pieces = _split_to_batch(calibration, batch_size)
        if not pieces:
            raise MeasurementError(f"INT8 calibration needs batches of at least {batch_size} images")
        calibrator = _calibrator(trt, pieces)
    timing = timing_file.read_bytes() if timing_file.is_file() else b""
    config = _configure(trt, builder, network, options, timing, calibrator)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeviceToolError(f"TensorRT failed to build an engine for {onnx_path} with {options.to_dict()} "
                              "(the TensorRT log above says why)")
    timing_file.parent.mkdir(parents=True, exist_ok=True)
    timing_file.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


# ---- run and time -------------------------------------------------------------------------------

def _torch_dtype(trt, dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype


class Engine:
    """A deserialised engine with one execution context and its input/output buffers on the GPU.
    Calling it runs once on the bound inputs (random unless `set_inputs` was called) and waits."""

    def __init__(self, trt, engine, path: Path, options: BuildOptions, *, calibrated: bool, cached: bool):
        self.trt, self.engine, self.path, self.options = trt, engine, path, options
        self.calibrated, self.cached = calibrated, cached
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, torch.Tensor] = {}
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(engine.get_tensor_shape(name))
            if any(dim < 0 for dim in shape):
                raise DeviceToolError(f"{path}: tensor {name} has a dynamic shape {shape}; export at a fixed shape")
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
            buffer = torch.empty(shape, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name)), device="cuda")
            self.buffers[name] = buffer.normal_() if buffer.is_floating_point() else buffer.zero_()
            self.context.set_tensor_address(name, buffer.data_ptr())
        torch.cuda.synchronize()  # the buffers were filled on the default stream; the engine runs on its own

    @classmethod
    def load(cls, path: str | os.PathLike, options: BuildOptions = BuildOptions(), *, calibrated: bool = True,
             cached: bool = False) -> Engine:
        trt = require_tensorrt()
        require_cuda()
        runtime = trt.Runtime(_logger(trt))
        engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise DeviceToolError(f"TensorRT could not load the engine {path} (built by another TensorRT version "
                                  "or for another GPU?)")
        instance = cls(trt, engine, Path(path), options, calibrated=calibrated, cached=cached)
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
        """Milliseconds of one run on the GPU, from CUDA events on the engine's stream."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        self.enqueue()
        end.record(self.stream)
        end.synchronize()
        return start.elapsed_time(end)

    def engine_information(self) -> str:
        """The engine inspector's JSON description of every layer (name, type, tactic, metadata)."""
        inspector = self.engine.create_engine_inspector()
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)


def measure_gpu_latency(timed: Callable[[], float], *, warmup: int = 50, runs: int = 200) -> LatencyStats:
    """Median/p90/p99 of `timed()` (a run that returns its own milliseconds, e.g. Engine.time_once)."""
    _check(warmup, runs)
    for _ in range(warmup):
        timed()
    return LatencyStats.from_seconds([timed() / 1e3 for _ in range(runs)])


def compare_gpu_latency(timed_a: Callable[[], float], timed_b: Callable[[], float], *, warmup: int = 50,
                        runs: int = 200) -> LatencyComparison:
    """Two CUDA-event-timed runners measured alternately (a, b, a, b, ...): no CPU thread pool spins between
    runs here, so call-by-call alternation is fair (latency.compare_latency needs blocks for that)."""
    _check(warmup, runs)
    for _ in range(warmup):
        timed_a()
        timed_b()
    samples_a, samples_b = [], []
    for _ in range(runs):
        samples_a.append(timed_a() / 1e3)
        samples_b.append(timed_b() / 1e3)
    a, b = LatencyStats.from_seconds(samples_a), LatencyStats.from_seconds(samples_b)
    return LatencyComparison(a=a, b=b, speedup=a.median_ms / b.median_ms if b.median_ms > 0 else float("inf"))


def _check(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise MeasurementError(f"a latency measurement needs runs >= 1 and warmup >= 0, got {runs} and {warmup}")
