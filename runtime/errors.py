"""Errors raised by the runtime layer (ONNX export, ONNX Runtime, parity checks).

Each subclasses PrunefxError and carries a one-line message meant to be shown to a user as is.
"""

import importlib
from types import ModuleType

from prunefx.graph.errors import PrunefxError, first_line


class OnnxExportError(PrunefxError):
    """Neither the dynamo nor the TorchScript ONNX exporter could export the Program."""


class OnnxSessionError(PrunefxError):
    """An .onnx file could not be loaded by ONNX Runtime, or was run on unsuitable inputs."""


class ParityError(PrunefxError):
    """The torch Program and the ONNX model cannot be compared (different output count or shapes)."""


class MeasurementError(PrunefxError):
    """A latency measurement was asked for with unusable settings (no runs, negative warm-up)."""


def describe_failure(error: BaseException) -> str:
    """One line naming the error and, when it wraps another, the root cause (the useful part)."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    if root is error:
        return first_line(error)
    # Keep only the outer error's first sentence: torch.onnx follows it with generic advice.
    outer = first_line(error).split(". ")[0].rstrip(".")
    return f"{outer} ({first_line(root)})"


class BackendUnavailableError(PrunefxError):
    """A backend's software or hardware is missing (tensorrt, torch_tensorrt, trtexec, a CUDA device);
    the message names what is missing and how to install it."""


class DeviceToolError(PrunefxError):
    """A device tool (TensorRT builder, trtexec, a Jetson utility) ran but failed; the message says how."""


def require_module(module: str, backend: str, install: str) -> ModuleType:
    """The optional package `module` that `backend` needs, or BackendUnavailableError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise BackendUnavailableError(f"the {backend} backend needs the `{module}` Python package, which is not "
                                      f"installed: {install}") from error
