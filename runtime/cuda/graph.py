"""A Program run on an NVIDIA GPU the way a PyTorch deployment runs it: fp16 or bf16 weights, channels_last
activations, cuDNN autotuning on, optionally compiled by torch.compile (inductor), replayed as a CUDA graph
and timed with CUDA events.

What a sample times is the GPU's work, not the host's launches: a graph holds enough iterations of the model
that one replay outlasts its own launch (GRAPH_MIN_MS; captured again with more where a later sample, at the
clocks a warm GPU runs, reads a replay shorter), and a sample is enough back-to-back replays between
one pair of events to last SAMPLE_MS, so the host stays ahead of the GPU and the events' resolution is
negligible. Everything that touches the GPU goes through a `CudaDevice`, so tests run the same code on a CPU
with a fake device and a fake timer.

At batch >= capture_batch_limit() (64, or $PRUNEFX_CUDA_CAPTURE_BATCH_LIMIT) the model is not captured (a
capture there can crash the process: docs/backends.md, 'The cuda backend'); a sample is then many eager calls
back to back, the host queueing ahead of the GPU, and `reason` says so.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import math
import os
from collections.abc import Callable

import torch

from prunefx.graph import Program
from prunefx.graph.channels_last import channels_last
from prunefx.graph.errors import first_line
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.graph.placement import move_module
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError
from prunefx.runtime.measure.gpu_latency import WARM_SECONDS, calls_per_sample, event_ms

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_CALLS = 3        # before capture: cuDNN autotunes and inductor compiles on the first calls
GRAPH_MIN_MS = 0.05     # a replay shorter than this is captured again with more iterations (the launch shows)
MAX_ITERATIONS = 64     # model calls in one captured graph


def capture_batch_limit() -> int:
    """The batch from which models are timed eagerly rather than captured (module docstring)."""
    value = os.environ.get("PRUNEFX_CUDA_CAPTURE_BATCH_LIMIT", "")
    return int(value) if value.isdigit() and int(value) > 0 else 64


class cudnn_autotuned:
    """cuDNN autotuning on inside the block, as deployments run (it chooses its algorithms on the warm-up calls,
    before capture), and the caller's setting back after it: autotuning makes algorithm choice, and so results,
    nondeterministic, which a user's process may not want. A class, not a generator: it wraps every eager call."""

    def __enter__(self) -> None:
        self.found = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True

    def __exit__(self, *_) -> None:
        torch.backends.cudnn.benchmark = self.found


def graph_replay(run: Callable[[], object], *, warmup: int = 1, iterations: int = 1) -> Callable[[], object]:
    """`run` (a zero-argument GPU callable) captured once as a CUDA graph of `iterations` calls; the returned
    callable replays it. Warm-up runs on a side stream first, as capture requires (lazy initialisation must not
    be recorded), and the capture uses the graph's own memory pool."""
    side = _side_stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), _syncs_refused():
        for _ in range(warmup):
            run()  # a host synchronisation (.item(), nonzero) raises here, before a capture it would break
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    current = torch.cuda.current_stream()
    try:  # on the side stream, of the current GPU: torch's own capture stream is made once, on the GPU current then
        with torch.cuda.graph(graph, stream=side):
            for _ in range(iterations):
                run()
    except BaseException:
        torch.cuda.set_stream(current)  # a failed capture's exit skips putting the caller's stream back
        raise
    return graph.replay


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream() -> torch.cuda.Stream:
    """The current GPU's one side stream for warm-ups and captures: cuBLAS keeps a workspace per stream it ran on
    (tens of MiB on Hopper, not given back by empty_cache), and a search captures hundreds of graphs."""
    index = torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(index)
    return _SIDE_STREAMS[index]


@contextlib.contextmanager
def _syncs_refused():
    """torch's synchronising calls raise RuntimeError inside the block (the caller then times eagerly)."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def sampled(run: Callable[[], object], device: CudaDevice, *, capture: bool = True):
    """(replay, iterations, calls): `run` captured in a graph of `iterations` calls, enough that a replay
    outlasts its launch (or `run` itself when not captured, iterations 1), and the replays a sample takes to
    last SAMPLE_MS. `run` has been called before (warm-up), as a capture requires."""
    if not capture:
        return run, 1, calls_per_sample(_replay_ms(device, run))
    replay = device.capture(run)
    once = _replay_ms(device, replay)
    if once >= GRAPH_MIN_MS:
        return replay, 1, calls_per_sample(_replay_ms(device, replay))
    del replay  # its graph and memory pool, before the next capture makes its own
    return captured_to_outlast(run, device, once)


def captured_to_outlast(run: Callable[[], object], device: CudaDevice, call_ms: float):
    """(replay, iterations, calls): `run` captured again with as many calls per replay as outlast GRAPH_MIN_MS
    when one takes `call_ms` (at most MAX_ITERATIONS), and the replays a sample then takes."""
    iterations = min(math.ceil(GRAPH_MIN_MS / max(call_ms, 1e-6)), MAX_ITERATIONS)
    replay = device.capture(run, iterations)
    return replay, iterations, calls_per_sample(_replay_ms(device, replay))


def _replay_ms(device: CudaDevice, replay: Callable[[], object]) -> float:
    """What one replay takes, its first call aside: a graph's first replay uploads it to the GPU, which no later
    replay pays (on an H200 a 1x1 convolution's first replay read past GRAPH_MIN_MS, and its graph kept one
    iteration)."""
    replay()
    return device.time(replay)


class CudaDevice:
    """What touches the GPU: placing a module, compiling, capturing a graph, timing calls with events."""

    warm_seconds = WARM_SECONDS  # a measurement warms up at least this long: idle clocks are far below busy ones

    def available(self) -> bool:
        return torch.cuda.is_available()

    def unavailable_reason(self) -> str:
        return (f"the cuda backend needs an NVIDIA GPU with CUDA, and torch sees none (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda})")

    def describe(self) -> dict:
        # cuDNN autotunes every model call a GpuModel makes (_model_call), whenever this is asked
        return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": True}

    def place(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype):
        """`module` and `inputs` on the GPU at `dtype`, 4-D tensors channels_last."""
        return placed(module, inputs, dtype, "cuda")

    def refusal(self, precision: str, compile: bool) -> str | None:
        """Why this GPU cannot time at `precision` (bf16 before Ampere: emulated, slower than fp32, so every
        choice it steered would be wrong) or compiled (no triton), checked before any work; None where it can."""
        missing = _triton_missing() if compile else None
        if missing:
            return missing
        if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(
                including_emulation=False):
            return (f"precision bf16 needs a GPU with bfloat16 arithmetic (Ampere or newer); "
                    f"{torch.cuda.get_device_name()} has none: use fp16")
        return None

    def compile(self, module: torch.nn.Module) -> Callable:
        reason = _triton_missing()
        if reason:
            raise BackendUnavailableError(reason)
        return torch.compile(module)

    def capture(self, run: Callable[[], object], iterations: int = 1) -> Callable[[], object]:
        """`run` captured as one CUDA graph of `iterations` calls; calling the result replays it."""
        return graph_replay(run, iterations=iterations)

    def time(self, run: Callable[[], object], calls: int = 1) -> float:
        """Milliseconds per call of `calls` back-to-back calls of `run`, between one pair of CUDA events."""
        return event_ms(run, calls)

    def release(self) -> None:
        """Hand the memory of models dropped since back to the driver."""
        torch.cuda.empty_cache()

    def peak_memory(self) -> int | None:
        """The most bytes the process's tensors held on the GPU at once, so far: calibration and training in the
        same process count too (resetting torch's peak would reset the caller's own)."""
        return torch.cuda.max_memory_allocated()


def _triton_missing() -> str | None:
    """Why torch.compile cannot run on a GPU here, or None."""
    if importlib.util.find_spec("triton") is None:
        return "torch.compile (inductor) on a GPU needs the `triton` package: pip install triton, or leave out --compile"
    return None


# The GPU itself failed, not the capture: out of memory (a graph holds its own pool beside the models kept), or a
# sticky error that breaks every later call in the process. Timing eagerly would not help, and would blame the model.
_DEVICE_ERRORS = (torch.OutOfMemoryError, *((torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ()))


def _device_failed(error: BaseException) -> bool:
    return isinstance(error, _DEVICE_ERRORS)


def _measurement_error(name: str, error: BaseException) -> MeasurementError:
    what = "ran out of GPU memory" if isinstance(error, torch.OutOfMemoryError) else "failed"
    return MeasurementError(f"the cuda backend {what} timing '{name}': {first_line(error)}")


def _model_call(module, inputs: tuple[torch.Tensor, ...]):
    with torch.inference_mode(), cudnn_autotuned():
        return module(*inputs)


def placed(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype, device="cuda"):
    """`module` (in place) and `inputs` (copies) on `device` at `dtype`, 4-D tensors channels_last where the
    module allows it: the layout cuDNN's fastest convolutions read (graph/channels_last.py). Integer inputs keep
    their type."""
    module = move_module(module, device, dtype)  # also the constants, devices and dtypes the graph names
    layout = torch.channels_last if channels_last(module) else torch.contiguous_format
    return module, tuple(_placed(x, device, dtype, layout) for x in inputs)


def _placed(tensor: torch.Tensor, device, dtype: torch.dtype, layout: torch.memory_format) -> torch.Tensor:
    tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    return tensor.contiguous(memory_format=layout) if tensor.dim() == 4 else tensor


class GpuModel:
    """A module and its inputs prepared once on the device: `time_once()` times one sample and returns the
    milliseconds of one model call. `mode` is "graph" or "eager", `reason` says why a graph was not captured,
    `iterations` is the model calls per replay and `calls` the replays per sample."""

    def __init__(self, program: Program, *, precision: str, device: CudaDevice, compile: bool = False,
                 capture: bool = True):
        if has_fake_quant(program.graph):  # at fp16 its quantizers fail; at any precision they time as float ops
            raise MeasurementError(f"the cuda backend does not time '{program.name}' as INT8: PyTorch on the GPU "
                                   "runs its fake quantizers as float operators; use --backend trt, which builds "
                                   "INT8 from the Q/DQ nodes of its ONNX file")
        program = program.clone().eval() if program.training else program
        self.name = program.name
        self._prepare(copy.deepcopy(program.module), program.example_inputs, precision, device, compile, capture)

    @classmethod
    def of_module(cls, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], *, precision: str,
                  device: CudaDevice) -> GpuModel:
        """A plain module (one layer of a latency table), placed as it is: no copy, no Program."""
        model = cls.__new__(cls)
        model.name = type(module).__name__
        model._prepare(module, inputs, precision, device, False, True)
        return model

    def _prepare(self, module, inputs, precision: str, device: CudaDevice, compile: bool, capture: bool) -> None:
        self.batch = int(inputs[0].shape[0]) if inputs else 1
        self.device, self.precision = device, precision
        try:  # placing too: a layout or a precision the model's tensors refuse, the device's memory
            module, self.inputs = device.place(module, tuple(inputs), DTYPES[precision])
            self.module = device.compile(module) if compile else module
            # the model's call, not a bound method: a replay holding one would make this object a cycle, alive (and
            # its GPU memory with it) after a pair dropped it until the next cyclic collection
            self._call = functools.partial(_model_call, self.module, self.inputs)
            for _ in range(WARMUP_CALLS):
                self._call()
        except (RuntimeError, AssertionError, TypeError, ValueError) as error:  # torch.compile's too are of these
            how = f"at {precision}" + (", compiled" if compile else "")
            raise MeasurementError(f"the cuda backend could not run '{self.name}' {how}: {first_line(error)}") \
                from error
        self.reason = ""
        if capture and self.batch >= capture_batch_limit():
            capture = False
            self.reason = (f"timed eagerly at batch >= {capture_batch_limit()}, many calls back to back, not as a "
                           f"CUDA graph: capture at such batches once crashed a process")
        self.mode, self.capture_failed = ("graph" if capture else "eager"), False
        try:
            self.replay, self.iterations, self.calls = sampled(self._call, device, capture=capture)
        except RuntimeError as error:  # not capturable (a host synchronisation, a data-dependent shape)
            if not capture or _device_failed(error):
                raise _measurement_error(self.name, error) from error
            self.capture_failed = True
            self.sample_eagerly(f"timed eagerly, many calls back to back: its CUDA graph capture failed "
                                f"({first_line(error)})")

    def sample_eagerly(self, reason: str) -> None:
        """Sample as eager calls back to back from now on (`reason` says why): also what the other model of a
        pair does when this one cannot be captured, so that the two are timed alike."""
        self.mode, self.reason = "eager", reason
        self.replay, self.iterations, self.calls = sampled(self._call, self.device, capture=False)

    def time_once(self) -> float:
        replay_ms = self.device.time(self.replay, self.calls)
        call_ms = replay_ms / self.iterations
        if self.mode == "graph" and replay_ms < GRAPH_MIN_MS and self.iterations < MAX_ITERATIONS:
            # sized at idle clocks (before the warm-up), its replays now last no longer than their launch: the
            # warm-up's samples see it, and the graph is captured again with enough iterations
            self.replay = None  # the old graph's memory pool, before the new capture makes its own
            try:
                self.replay, self.iterations, self.calls = captured_to_outlast(self._call, self.device, call_ms)
            except RuntimeError as error:
                raise _measurement_error(self.name, error) from error
        return call_ms

    def timing(self) -> dict:
        """How a sample is taken, for reports."""
        return {"mode": self.mode, "iterations_per_replay": self.iterations, "replays_per_sample": self.calls}
