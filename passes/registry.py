"""Passes by name, so recipes (YAML) and the CLI spell the same pipeline as the Python API.

The shipped passes are always there; a user adds their own with `register_pass` (then a recipe can name
it), lists them with `registered_passes` and takes one away with `unregister_pass`. Replacing a pass
that is already registered (shipped or not) needs `replace=True`, and a shipped pass cannot be removed:
the shipped recipes name them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from prunefx.graph.errors import PrunefxError
from prunefx.passes.choose_for_budget import choose_for_budget
from prunefx.passes.comb_channels import comb_channels
from prunefx.passes.contract import as_pass
from prunefx.passes.depth_to_budget import depth_to_budget
from prunefx.passes.distill import distill
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.linearize_blocks import linearize_blocks
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.prune_to_budget import prune_to_budget
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.result import Pass
from prunefx.passes.sparsify_nm import sparsify_nm

_SHIPPED: dict[str, Pass] = {
    "choose_for_budget": choose_for_budget,
    "comb_channels": comb_channels,
    "depth_to_budget": depth_to_budget,
    "distill": distill,
    "fold_batchnorm": fold_batchnorm,
    "linearize_blocks": linearize_blocks,
    "merge_blocks": merge_blocks,
    "prune_to_budget": prune_to_budget,
    "prune_while_training": prune_while_training,
    "quantize_int8": quantize_int8,
    "recalibrate_batchnorm": recalibrate_batchnorm,
    "remove_channels": remove_channels,
    "sparsify_nm": sparsify_nm,
}


_REGISTERED: dict[str, Pass] = dict(_SHIPPED)
PASSES = MappingProxyType(_REGISTERED)  # a live, read-only view: register_pass is the way in


def get_pass(name: str) -> Pass:
    try:
        return _REGISTERED[name]
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
    return sorted(_REGISTERED)
