"""One table of ONNX translations per opset for every dynamo export of this process.

torch.onnx's dynamo exporter builds its registry of torchlib translations afresh on every export, reading
each function's source again (1 to 2.5 s of CPU, more than exporting a small network). The table depends
on the opset alone, and an export given no custom translations (prunefx never gives any) only reads it, so
inside `registries_reused()` one table per opset serves every export. Outside the block torch.onnx is as
it was: a user's own export with custom translations, which adds them to its table, gets a table of its own.
Where torch.onnx's internals differ from what this expects, exports simply build their table as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_BUILDER = "from_torchlib"  # the ONNXRegistry classmethod that builds a table
_BUILT: dict[tuple, Any] = {}  # (args, kwargs) of from_torchlib -> the registry it built


def _registry_class() -> Any | None:
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    registry = getattr(_registration, "ONNXRegistry", None)
    return registry if isinstance(vars(registry).get(_BUILDER) if registry else None, classmethod) else None


@contextlib.contextmanager
def registries_reused() -> Iterator[None]:
    """Inside the block, torch.onnx's `ONNXRegistry.from_torchlib` returns the table built first for its
    arguments."""
    registry = _registry_class()
    if registry is None:
        yield
        return
    original = vars(registry)[_BUILDER]
    build = original.__get__(None, registry)

    def reused(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _BUILT:
            _BUILT[key] = build(*args, **kwargs)
        return _BUILT[key]

    setattr(registry, _BUILDER, staticmethod(reused))
    try:
        yield
    finally:
        setattr(registry, _BUILDER, original)
