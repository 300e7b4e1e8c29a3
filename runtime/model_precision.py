"""What the CPU runtimes can do with a Program's floating-point precision, checked before any work.

ONNX Runtime has no bfloat16 kernels on the CPU: a bfloat16 Program's ONNX file can be written but neither run
nor checked against torch. ONNX Runtime and torch eager time a model in the precision it holds, and measure
float32 models (their width multiples, their reports): a float16 Program timed there would be reported as
float32. The GPU backends set the precision themselves (--precision).
"""

from __future__ import annotations

from prunefx.graph import Program
from prunefx.runtime.errors import MeasurementError, OnnxSessionError


def floating_dtypes(program: Program) -> list[str]:
    """The floating dtypes of the Program's inputs and of every tensor it holds, as 'float16', 'bfloat16', ..."""
    return dtype_names([*program.example_inputs, *program.module.parameters(), *program.module.buffers()])


def other_than_float32(program: Program) -> list[str]:
    """The floating dtypes the Program holds besides float32: what the float32-only steps refuse."""
    return [dtype for dtype in floating_dtypes(program) if dtype != "float32"]


def dtype_names(tensors) -> list[str]:
    """The floating dtypes among `tensors`, sorted, as 'float16', 'bfloat16', ..."""
    return sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()})


def require_onnx_runtime_can_check(program: Program) -> None:
    if "bfloat16" in floating_dtypes(program):
        raise OnnxSessionError(f"{program.name} is in bfloat16, which ONNX Runtime cannot run on the CPU (it has no "
                               "bfloat16 kernels), so its ONNX file could not be checked against torch: save the "
                               "Program in float32 or float16 (TensorRT builds bfloat16 engines from a float32 file)")


def require_float32(program: Program, runtime: str) -> None:
    other = other_than_float32(program)
    if other:
        raise MeasurementError(f"{runtime} times float32 models, and {program.name} holds {' and '.join(other)} "
                               "tensors (a latency measured on it would be reported as float32): save the Program "
                               "in float32, or measure it on a GPU backend with --precision fp16 or bf16")
