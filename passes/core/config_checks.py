"""Range checks of pass options, and the error they raise.

Keys and types are checked by each pass's config class (passes/core/pass_config.py); these helpers check
the numbers the field bounds and a class's `check()` ask about, and the names an option gives, each error one
line naming the pass and the key.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable

from prunefx.graph.errors import PrunefxError, printable


class ConfigError(PrunefxError):
    """A pass was given a key it does not know, or a value of the wrong type or range."""


def _shown(value) -> str:
    return printable(repr(value))[:60]


def number(owner: str, key: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite int or float within the bounds (open or closed at each end)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}: '{key}' must be a finite number, not {_shown(value)}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open or high is None else "]"
        interval = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        raise ConfigError(f"{owner}: '{key}' must lie in {interval}, not {value}")
    return float(value)


def integer(owner: str, key: str, value, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}: '{key}' must be an integer, not {_shown(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{owner}: '{key}' must be at least {minimum}, not {value}")
    return value


def names_in(owner: str, key: str, names: Iterable[str], known: Collection[str], *, what: str,
             where: str = " (`prunefx inspect MODEL --nodes` lists the node names)") -> None:
    """Every name is one of `known`: a name that is not (a typo, a name from before a save) would keep nothing
    and say nothing, so it is refused, with the closest known names."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{owner}: '{key}' names '{printable(name)[:60]}', which is not {what}{hint}{where}")


def nodes_in(owner: str, key: str, names: Iterable[str], program, *, weights: bool = False) -> None:
    """`names_in` against the nodes of `program`'s graph (and, with `weights`, the weights they read)."""
    known = {node.name for node in program.graph.nodes}
    if weights:
        known |= {str(node.target) for node in program.graph.nodes if node.op == "get_attr"}
    names = list(names)  # read twice: here and by names_in
    for name in set(names) - known:  # a module's path where a node is wanted: its nodes are what to name
        inside = [node.name for node in program.graph.nodes if node.op == "call_function"
                  and name in [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]]
        if inside:
            raise ConfigError(f"{owner}: '{key}' names the module '{printable(name)[:60]}', where it takes nodes: "
                              f"that module's are {', '.join(inside[:6])}{', ...' if len(inside) > 6 else ''}")
    names_in(owner, key, names, known, what=f"a node{' or weight' if weights else ''} of {program.name}")
