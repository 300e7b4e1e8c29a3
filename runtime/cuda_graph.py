"""A Program run on an NVIDIA GPU the way a PyTorch deployment runs it: fp16 or bf16 weights, channels_last
activations, optionally compiled by torch.compile (inductor), replayed as one CUDA graph and timed with CUDA
events.

A CUDA-graph replay is one launch for the whole model, so what is timed is the GPU's work, not Python's
kernel launches (an eager batch-1 call of a small model is host-bound: it times the CPU). Everything that
touches the GPU goes through a `CudaDevice`, so tests run the same code on a CPU with a fake device and a
fake timer.

Capture is skipped at batch >= CAPTURE_BATCH_LIMIT: capturing an fp16 channels_last model at batch 64 once
took a whole process down on an H200 (cause unknown), and a crash cannot be caught. There the model is
timed eagerly (at such batches the GPU work dwarfs the launches) and `reason` says so.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable

import torch

from prunefx.graph import Program
from prunefx.graph.placement import move_module
from prunefx.runtime.errors import BackendUnavailableError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CAPTURE_BATCH_LIMIT = 64
WARMUP_CALLS = 3  # before capture: cuDNN picks its algorithms and inductor compiles on the first calls


def graph_replay(run: Callable[[], object], *, warmup: int = 1) -> Callable[[], object]:
    """`run` (a zero-argument GPU callable) captured once as a CUDA graph; the returned callable replays it.
    Warm-up runs on a side stream first, as capture requires (lazy initialisation must not be recorded)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


class CudaDevice:
    """What touches the GPU: placing a module, compiling, capturing a graph, timing a call with events."""

    def available(self) -> bool:
        return torch.cuda.is_available()

    def unavailable_reason(self) -> str:
        return (f"the cuda backend needs an NVIDIA GPU with CUDA, and torch sees none (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use --backend ort on this machine")

    def describe(self) -> dict:
        return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}

    def place(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype):
        """`module` and `inputs` on the GPU at `dtype`, 4-D tensors channels_last."""
        module = move_module(module, "cuda", dtype)  # also the constants and devices the graph names
        module = module.to(memory_format=torch.channels_last)
        return module, tuple(_placed(x, "cuda", dtype) for x in inputs)

    def compile(self, module: torch.nn.Module) -> Callable:
        if importlib.util.find_spec("triton") is None:
            raise BackendUnavailableError("torch.compile (inductor) on a GPU needs the `triton` package: "
                                          "pip install triton, or leave out --compile")
        return torch.compile(module)

    def capture(self, run: Callable[[], object]) -> Callable[[], object]:
        """`run` captured as one CUDA graph (after warm-up on a side stream); calling the result replays it."""
        return graph_replay(run)

    def time(self, run: Callable[[], object]) -> float:
        """Milliseconds of one call of `run` on the GPU, between two CUDA events on the current stream."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def _placed(tensor: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


class GpuModel:
    """`program` prepared once on the device: `time_once()` replays it and returns its milliseconds.
    `mode` is "graph" or "eager", and `reason` says why a graph was not captured."""

    def __init__(self, program: Program, *, precision: str, device: CudaDevice, compile: bool = False,
                 capture: bool = True):
        program = program.clone().eval() if program.training else program
        self.batch = int(program.example_inputs[0].shape[0]) if program.example_inputs else 1
        self.device, self.precision = device, precision
        module, self.inputs = device.place(copy.deepcopy(program.module), program.example_inputs, DTYPES[precision])
        self.module = device.compile(module) if compile else module
        for _ in range(WARMUP_CALLS):
            self._call()
        if not capture or self.batch >= CAPTURE_BATCH_LIMIT:
            self.mode, self.replay = "eager", self._call
            self.reason = ("" if not capture else f"timed eagerly, not as a CUDA graph: capture at batch >= "
                           f"{CAPTURE_BATCH_LIMIT} once crashed a process")
        else:
            self.mode, self.replay, self.reason = "graph", device.capture(self._call), ""

    def _call(self):
        with torch.inference_mode():
            return self.module(*self.inputs)

    def time_once(self) -> float:
        return self.device.time(self.replay)
