"""Passes by name, so recipes (YAML) and the CLI spell the same pipeline as the Python API.

A shipped pass registers itself where it is defined (`@shipped_pass`), and the registry imports every one
of them when it is first read (core/shipped.py lists them), so the shipped passes are always there. A user
adds their own with `register_pass` (then a recipe can name it), lists them with `registered_passes` and
takes one away with `unregister_pass`. Replacing a pass that is already registered (shipped or not) needs
`replace=True`, and a shipped pass cannot be removed: the shipped recipes name them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.contract import as_pass
from prunefx.passes.core.result import Pass
from prunefx.passes.core.shipped import SHIPPED_PASSES

_SHIPPED: dict[str, Pass] = {}  # filled by @shipped_pass where each pass is defined
_REGISTERED: dict[str, Pass] = {}
_imported = False  # every shipped pass's module


def _with_shipped() -> dict[str, Pass]:
    """The registry, every shipped pass imported first (each registers itself): once, on the first read."""
    global _imported
    if not _imported:
        for name in SHIPPED_PASSES:
            importlib.import_module(f"prunefx.passes.{name}")
        _imported = True
    return _REGISTERED


class _Passes(Mapping[str, Pass]):
    """A live, read-only view of the registry (register_pass is the way in), the shipped passes in it."""

    def __getitem__(self, name: str) -> Pass:
        return _with_shipped()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_with_shipped())

    def __len__(self) -> int:
        return len(_with_shipped())

    def __repr__(self) -> str:
        return f"PASSES({sorted(self)})"


PASSES = _Passes()


def shipped_pass(function: Any) -> Any:
    """Register a pass prunefx ships, where it is defined: its name is its function's, it cannot be
    unregistered, and a user's pass may replace it only with replace=True."""
    declared = as_pass(function)
    _SHIPPED[declared.__name__] = _REGISTERED[declared.__name__] = declared
    return function


def get_pass(name: str) -> Pass:
    try:
        return _with_shipped()[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTERED))
        raise PrunefxError(f"unknown pass '{name}' (known passes: {known})") from None


def register_pass(function: Any = None, *, name: str | None = None, replace: bool = False) -> Any:
    """Register a pass (declared with @graph_pass, or a plain `(program, /, *, config) -> Result`
    function) under `name` (default: its function name). Usable as a decorator, with or without
    arguments. Returns the function as given."""
    def register(function: Any) -> Any:
        declared = as_pass(function)
        key = name or declared.__name__
        _with_shipped()  # a shipped pass of that name is one to replace, not a free name
        if not key.isidentifier():
            raise PrunefxError(f"a pass name is a Python identifier (recipes spell it), not {key!r}")
        if key in _REGISTERED and not replace:
            shipped = "a shipped pass" if key in _SHIPPED else "a pass"
            raise PrunefxError(f"{shipped} is already registered as '{key}'; pass replace=True to replace it")
        _REGISTERED[key] = declared
        return function
    return register(function) if function is not None else register


def unregister_pass(name: str) -> None:
    """Take a user's pass away (a shipped pass replaced by one comes back)."""
    get_pass(name)  # an unknown name is an error, not a silent no-op
    if name in _SHIPPED and _REGISTERED[name] is _SHIPPED[name]:
        raise PrunefxError(f"'{name}' is a shipped pass; it cannot be removed")
    if name in _SHIPPED:
        _REGISTERED[name] = _SHIPPED[name]
    else:
        del _REGISTERED[name]


def registered_passes() -> list[str]:
    return sorted(_with_shipped())
