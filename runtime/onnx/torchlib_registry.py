"""One table of ONNX translations per opset for every dynamo export of this process.

torch.onnx's dynamo exporter builds its registry of torchlib translations afresh on every export, reading
each function's source again (1 to 2.5 s of CPU, more than exporting a small network). The table depends
on the opset alone and an export only reads it, apart from the custom translations a caller may add to
it, so inside `registries_reused()` one table per opset is built and each export gets a copy of it (a
dictionary of lists: microseconds). Outside the block torch.onnx is as it was.
Where torch.onnx's internals differ from what this expects, exports simply build their table as before.
"""

from __future__ import annotations

import contextlib
import copy
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


def _copy(registry: Any) -> Any | None:
    """A copy each export may add to (custom translations go first in a target's list) without reaching the
    next; None where the table is not a dict of lists (as torch 2.14 holds it): then each export builds its own."""
    functions = getattr(registry, "functions", None)
    if not isinstance(functions, dict) or not all(isinstance(entries, list) for entries in functions.values()):
        return None
    copied = copy.copy(registry)
    copied.functions = {target: list(entries) for target, entries in functions.items()}
    return copied


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
        return _copy(_BUILT[key]) or build(*args, **kwargs)

    setattr(registry, _BUILDER, staticmethod(reused))
    try:
        yield
    finally:
        setattr(registry, _BUILDER, original)
