"""TensorRT engines from prunefx ONNX files: build (FP32, FP16, INT8 from Q/DQ, 2:4 sparse weights), cache, time.

Written against TensorRT's documented Python API (8.6, 10.x and 11.x: `set_tensor_address` +
`execute_async_v3`); device memory, streams and CUDA events come from torch.cuda, so nothing else
(pycuda, cuda-python) is needed. `tensorrt` is imported only when an engine is built or loaded, and a
missing package or GPU raises BackendUnavailableError saying what to install.

Caching. Building an engine takes seconds to minutes, so engines are cached on disk under the sha256 of
(ONNX file bytes, build options, TensorRT version, GPU name): any change to the model, the precision,
the sparsity flag, the calibration data, TensorRT or the GPU makes a new key; nothing else does. The
timing cache (per-tactic timings the builder measures) is keyed by TensorRT version and GPU name only:
timings of a kernel on a shape do not depend on which model asked for them, so every build on this GPU
shares it and later builds are faster. Folder: $PRUNEFX_CACHE_DIR/tensorrt, default ~/.cache/prunefx.

Precision is explicit (`network_plan`, a pure function of the TensorRT version, the requested precision
and what the ONNX file holds, tested without TensorRT):
- TensorRT >= 10 builds strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED; TensorRT 11
  has nothing else and ignores the flag): every tensor has the type the ONNX graph gives it. INT8 comes
  only from QuantizeLinear/DequantizeLinear nodes in the file (passes/quantize_int8.py and
  runtime/onnx_quantized.py write them); FP16 only from an FP16 graph (runtime/onnx_float16.py).
- `int8` on a file without Q/DQ is refused, unless calibration batches are given: the file is then
  quantized first with ONNX Runtime's quantize_static in TensorRT's form (symmetric INT8, per-channel
  weights), so the engine still gets its INT8 from Q/DQ nodes. TensorRT 10 deprecated and TensorRT 11
  removed implicit calibration (IInt8EntropyCalibrator2) and placeholder dynamic ranges: neither is used.
- `fp16` on an FP32 file: on TensorRT 10 the weakly typed BuilderFlag.FP16 (deprecated since 10.12, still
  what JetPack 6's TensorRT 10.3 users know) is kept behind this version check; on TensorRT >= 11 the
  file is lowered to an FP16 graph with float32 inputs and outputs first.
- TensorRT 8.6/9.x (JetPack 5) has no strong typing: weakly typed with the FP16 / INT8 flags, as before.
`sparse=True` sets SPARSE_WEIGHTS, which lets TensorRT pick sparse tensor-core kernels for layers whose
weights are 2:4 along input channels (passes/sparsify_nm); which layers actually ran sparse is in the
per-layer profile (runtime/tensorrt_profile.py).
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
from prunefx.runtime.latency import CONFIDENCE, LatencyComparison, LatencyStats, ratio_interval

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_TENSORRT = ("install it with `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13 to match your CUDA) on "
                    "x86-64 Linux or Windows with an NVIDIA GPU, or on a Jetson board through JetPack "
                    "(`sudo apt install nvidia-jetpack`, which provides python3-libnvinfer)")
NO_QDQ = ("INT8 comes only from QuantizeLinear/DequantizeLinear nodes in the ONNX file (TensorRT 10 deprecated and "
          "TensorRT 11 removed implicit calibration): quantize the model first (passes/quantize_int8.py, lowered by "
          "runtime/onnx_quantized.py), or give calibration data")


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


# ---- precision plan (pure, testable without TensorRT) --------------------------------------------

@dataclass(frozen=True)
class OnnxTypes:
    """What decides the precision of a strongly typed engine: Q/DQ nodes and float16 tensors in the file."""

    has_qdq: bool
    float16: bool


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def onnx_types(onnx_path: str | os.PathLike) -> OnnxTypes:
    import onnx  # runtime/ is the layer that may import onnx; only needed here when building

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    has_qdq = any(node.op_type in QDQ_OPS for node in graph.node)
    float16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer) or any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute)
        for node in graph.node)
    return OnnxTypes(has_qdq=has_qdq, float16=float16)


def tensorrt_major(version: str) -> int:
    """'10.3.0' -> 10; a version that does not start with a number is a clear error, never a guess."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise MeasurementError(f"cannot read the TensorRT major version from {version!r}")
    return int(head)


@dataclass(frozen=True)
class NetworkPlan:
    """How to build: a strongly typed network or not, the BuilderFlag names to set, and whether the ONNX
    file must first be lowered to an FP16 graph (TensorRT >= 11 has no FP16 flag)."""

    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    lower_to_fp16: bool = False


def network_plan(tensorrt_version: str, precision: str, types: OnnxTypes, *, sparse: bool = False) -> NetworkPlan:
    """The build plan for `precision` on this TensorRT version and this file (see the module docstring)."""
    if precision not in PRECISIONS:
        raise MeasurementError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not types.has_qdq:
        raise MeasurementError(NO_QDQ)
    major = tensorrt_major(tensorrt_version)
    sparsity = ("SPARSE_WEIGHTS",) if sparse else ()
    if major < 10:  # no strong typing before 9.x became 10: the precision flags are all there is
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
        return NetworkPlan(strongly_typed=False, builder_flags=flags + sparsity)
    if precision == "fp16" and not types.float16:
        if major == 10:  # TensorRT 10's weakly typed FP16, deprecated since 10.12, removed in 11
            return NetworkPlan(strongly_typed=False, builder_flags=("FP16",) + sparsity)
        return NetworkPlan(strongly_typed=True, builder_flags=sparsity, lower_to_fp16=True)
    return NetworkPlan(strongly_typed=True, builder_flags=sparsity)


def network_creation_flags(trt, plan: NetworkPlan) -> int:
    """The bit mask for builder.create_network: STRONGLY_TYPED on TensorRT >= 10 (accepted and ignored by
    11, which is always strongly typed), EXPLICIT_BATCH before 10 (implicit batch was the default there)."""
    creation = trt.NetworkDefinitionCreationFlag
    if tensorrt_major(trt.__version__) < 10:
        return 1 << int(creation.EXPLICIT_BATCH)
    strongly = getattr(creation, "STRONGLY_TYPED", None)  # a later major may drop the ignored member
    return 1 << int(strongly) if plan.strongly_typed and strongly is not None else 0


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


def build_engine(onnx_path: str | os.PathLike, options: BuildOptions = BuildOptions(), *,
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
    key = engine_cache_key(onnx_path.read_bytes(), options, trt.__version__, gpu)
    engine_file = cache / f"{key}.engine"
    if engine_file.is_file():
        return Engine.load(engine_file, options, cached=True)
    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    source = _explicit_source(onnx_path, options, types, calibration, cache / f"{key}")
    plan = network_plan(trt.__version__, options.precision, onnx_types(source), sparse=options.sparse)
    if plan.lower_to_fp16:
        source = _lowered_fp16(source, cache / f"{key}.fp16.onnx")
    serialized = _build(trt, source, options, plan, cache / f"timing-{timing_cache_key(trt.__version__, gpu)}.cache")
    engine_file.write_bytes(serialized)
    seconds = time.perf_counter() - started
    (cache / f"{key}.json").write_text(json.dumps({"onnx": str(onnx_path), "built_from": str(source),
                                                   "options": options.to_dict(), "plan": dataclasses.asdict(plan),
                                                   "tensorrt": trt.__version__, "gpu": gpu, "build_seconds": seconds}))
    if log:
        log(f"built TensorRT engine {engine_file.name[:12]}... in {seconds:.1f} s ({_describe(plan)})")
    return Engine.load(engine_file, options, cached=False)


def _describe(plan: NetworkPlan) -> str:
    typing = "strongly typed" if plan.strongly_typed else "weakly typed"
    return typing + (f", flags {', '.join(plan.builder_flags)}" if plan.builder_flags else "")


def _explicit_source(onnx_path: Path, options: BuildOptions, types: OnnxTypes, calibration, stem: Path) -> Path:
    """The file TensorRT parses: `onnx_path`, or for INT8 with calibration batches and no Q/DQ in the file, a
    copy quantized by ONNX Runtime's quantize_static in TensorRT's form (symmetric S8, per-channel weights)."""
    if options.precision != "int8" or types.has_qdq or calibration is None:
        return onnx_path
    from prunefx.runtime.onnx_quantize_static import quantize_static_file  # imports onnxruntime.quantization

    return quantize_static_file(onnx_path, stem.with_name(stem.name + ".qdq.onnx"), calibration, activations="s8")


def _lowered_fp16(source: Path, target: Path) -> Path:
    from prunefx.runtime.onnx_float16 import lower_to_float16

    return lower_to_float16(source, target)


def _build(trt, onnx_path: Path, options: BuildOptions, plan: NetworkPlan, timing_file: Path) -> bytes:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path, plan)  # the parser must outlive the build
    timing = timing_file.read_bytes() if timing_file.is_file() else b""
    config = configure(trt, builder, options, plan, timing)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeviceToolError(f"TensorRT failed to build an engine for {onnx_path} with {options.to_dict()} "
                              f"({_describe(plan)}; the TensorRT log above says why)")
    timing_file.parent.mkdir(parents=True, exist_ok=True)
    timing_file.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


# ---- run and time -------------------------------------------------------------------------------

def _torch_dtype(trt, dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype


class Engine:
    """A deserialised engine with one execution context and its input/output buffers on the GPU.
    Calling it runs once on the bound inputs (random unless `set_inputs` was called) and waits."""

    def __init__(self, trt, engine, path: Path, options: BuildOptions, *, cached: bool = False):
        self.trt, self.engine, self.path, self.options = trt, engine, path, options
        self.cached = cached
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
    def load(cls, path: str | os.PathLike, options: BuildOptions = BuildOptions(), *, cached: bool = False) -> Engine:
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
    low, high = ratio_interval([[x] for x in samples_a], [[x] for x in samples_b])  # call-by-call pairs
    return LatencyComparison(a=a, b=b, speedup=a.median_ms / b.median_ms if b.median_ms > 0 else float("inf"),
                             speedup_low=low, speedup_high=high, confidence=CONFIDENCE)


def _check(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise MeasurementError(f"a latency measurement needs runs >= 1 and warmup >= 0, got {runs} and {warmup}")
