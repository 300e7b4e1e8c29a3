"""The IR: capture, Program, shape refresh, counting and verification.

The names below are imported on first use, so that a module of this package that needs no torch (errors,
the safe file readers) is imported without it: `prunefx check` reads an ONNX file in a fraction of a second."""

import importlib
import sys
import types

# name -> module that defines it
_LAZY = {
    "capture": "prunefx.graph.capture",
    "Cost": "prunefx.graph.counting", "count": "prunefx.graph.counting", "count_macs": "prunefx.graph.counting",
    "count_params": "prunefx.graph.counting", "node_macs": "prunefx.graph.counting",
    "operator_histogram": "prunefx.graph.counting",
    "CaptureError": "prunefx.graph.errors", "ProgramFileError": "prunefx.graph.errors",
    "PrunefxError": "prunefx.graph.errors", "VerificationError": "prunefx.graph.errors",
    "Program": "prunefx.graph.program",
    "verify": "prunefx.graph.verify",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'prunefx.graph' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """`capture` and `verify` are functions named as the modules that define them. The import system binds a
    submodule on its package once it is first imported, which would put the module where the function is
    looked up: the function is bound instead."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}" and name in _LAZY:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = sorted(_LAZY)
