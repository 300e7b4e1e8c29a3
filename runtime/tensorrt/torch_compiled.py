"""Torch-TensorRT backend: compile the Program's exported program directly, without an ONNX file.

`torch_tensorrt.dynamo.compile` takes a torch.export ExportedProgram, which is what a Program already
is, and returns a GraphModule whose TensorRT-supported subgraphs run as engines (the rest stays in
torch). Compared with the ONNX route (runtime/tensorrt/engine.py) it needs no exporter, keeps
unsupported operators in torch instead of failing, and is the natural choice for models whose ONNX
export is fragile; the ONNX route gives a standalone engine and the per-layer profile.

Precision: fp16 casts the module and its inputs to half before export, so that Torch-TensorRT's explicit
typing (the default since 2.6; `enabled_precisions` is deprecated) and older versions build the same
FP16 engine. INT8 needs a quantised model (Q/DQ from NVIDIA ModelOpt) and is not offered here: use the
ONNX route. Timing uses CUDA events on the current stream, as the ONNX route does.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping

import torch

from prunefx.graph import Program
from prunefx.graph.placement import move_module
from prunefx.runtime.errors import DeviceToolError, MeasurementError, require_module
from prunefx.runtime.measure.gpu_latency import BackToBack
from prunefx.runtime.tensorrt.engine import require_cuda

INSTALL_TORCH_TENSORRT = ("install it with `pip install torch-tensorrt` at the version built for your torch "
                          f"({torch.__version__}); it needs an NVIDIA GPU, CUDA and TensorRT (pulled in by pip)")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def require_torch_tensorrt():
    """The `torch_tensorrt` module, or BackendUnavailableError saying how to install it."""
    return require_module("torch_tensorrt", "Torch-TensorRT", INSTALL_TORCH_TENSORRT)


class TorchTensorRTRunner:
    """Calling it runs the compiled module once on its inputs and waits; `time_once` returns milliseconds."""

    def __init__(self, module, inputs: tuple[torch.Tensor, ...], precision: str):
        self.module, self.inputs, self.precision = module, inputs, precision
        self.sampler = BackToBack()

    def __call__(self):
        with torch.inference_mode():
            outputs = self.module(*self.inputs)
        torch.cuda.synchronize()
        return outputs

    def time_once(self) -> float:
        """Milliseconds of one call: a sample of back-to-back calls between CUDA events (gpu_latency.BackToBack)."""
        with torch.inference_mode():
            return self.sampler(lambda: self.module(*self.inputs))


def placed(program: Program, precision: str, device: str,
           inputs: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A copy of `program`'s module (eval mode) and its inputs on `device` at `precision`: every tensor the graph
    reads and every float32 and device it names follow (graph/placement.move_module), where `Module.to` would
    leave the graph's `.float()` casts and their float32 checks, which fail the export at fp16."""
    dtype = PRECISIONS[precision]
    program = program.clone().eval() if program.training else program
    module = move_module(copy.deepcopy(program.module), device, dtype)
    example = tuple(x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
                    for x in (inputs if inputs is not None else program.example_inputs))
    return module, example


def compile_torch_tensorrt(program: Program, *, precision: str = "fp32", sparse: bool = False,
                           inputs: tuple[torch.Tensor, ...] | None = None) -> TorchTensorRTRunner:
    """Compile `program` (eval mode, its example inputs by default) with Torch-TensorRT on the GPU."""
    if precision not in PRECISIONS:
        raise MeasurementError(f"the Torch-TensorRT backend offers {', '.join(PRECISIONS)}, not {precision!r} "
                               "(INT8 needs a Q/DQ-quantised model: use --backend trt --precision int8)")
    torch_tensorrt = require_torch_tensorrt()
    require_cuda()
    module, example = placed(program, precision, "cuda", inputs)
    exported = torch.export.export(module, example)
    settings = {"sparse_weights": sparse} if sparse else {}
    compile_function = torch_tensorrt.dynamo.compile
    if precision == "fp16" and "enabled_precisions" in fp16_keywords(inspect.signature(compile_function).parameters):
        settings["enabled_precisions"] = {torch.float16}  # where the release types layers itself
    try:
        compiled = torch_tensorrt.dynamo.compile(exported, arg_inputs=list(example), **settings)
    except Exception as error:  # Torch-TensorRT raises many types; all mean "could not compile"
        raise DeviceToolError(f"Torch-TensorRT could not compile '{program.name}': {error}") from error
    return TorchTensorRTRunner(compiled, example, precision)


def fp16_keywords(parameters: Mapping[str, inspect.Parameter]) -> tuple[str, ...]:
    """The keywords Torch-TensorRT's compile (its `parameters`) needs to build fp16 from an fp16 graph:
    `enabled_precisions` in releases that type layers themselves; none where layers follow the graph's dtypes
    (`use_explicit_typing`, on by default from 2.10, refuses `enabled_precisions` beside it; later releases
    dropped the parameter)."""
    if "enabled_precisions" not in parameters:
        return ()
    explicit = parameters.get("use_explicit_typing")
    return () if explicit is not None and explicit.default is not False else ("enabled_precisions",)
