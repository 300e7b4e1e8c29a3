"""Small checks of pass configurations, shared by every pass's `check_config`.

A pass's `check_config(config)` looks only at the values it is given (keys, types, ranges), never at
the Program or at data a caller injects later, so the Pipeline can run it for every step before the
first pass starts: a misspelled key in the last step of a recipe fails before hours of training, not
after. Each error names the pass and the key, in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prunefx.graph.errors import PrunefxError, printable


class ConfigError(PrunefxError):
    """A pass was given a key it does not know, or a value of the wrong type or range."""


def _shown(value) -> str:
    return printable(repr(value))[:60]


def unknown_keys(owner: str, config: dict, known: Iterable[str]) -> None:
    known = set(known)
    unknown = sorted(str(key) for key in config if key not in known)
    if unknown:
        raise ConfigError(f"{owner}: unknown option '{printable(unknown[0])[:40]}' (known: {', '.join(sorted(known))})")


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


def boolean(owner: str, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}: '{key}' must be true or false, not {_shown(value)}")
    return value


def choice(owner: str, key: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{owner}: '{key}' must be one of {', '.join(choices)}, not {_shown(value)}")
    return value


def names(owner: str, key: str, value) -> list[str]:
    """A list of node names (a single name is refused: a string is not a list of its letters)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)) \
            or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{owner}: '{key}' must be a list of node names, not {_shown(value)}")
    return list(value)
