"""Range checks of pass options, and the error they raise.

Keys and types are checked by each pass's config class (passes/core/pass_config.py); these two helpers check
the numbers the field bounds and a class's `check()` ask about, each error one line naming the pass and
the key.
"""

from __future__ import annotations

import math

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
