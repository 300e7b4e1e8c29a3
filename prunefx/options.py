"""argparse `type=` functions for prunefx's numeric options: a value out of range (NaN, infinity,
zero or negative counts, fractions above 1, opsets the exporter cannot write, absurd thread counts)
is refused while the command line is parsed, in one line, before any model is loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from prunefx.runtime.onnx.opsets import MIN_OPSET, max_opset
from prunefx.runtime.ort.threads import MAX_THREADS  # the bound the sessions themselves enforce


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, not {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def number(low: float, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text, float)
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
            raise argparse.ArgumentTypeError(f"must lie in {left}{low:g}, {'inf' if high is None else f'{high:g}'}"
                                             f"{right}, not {text}")
        return value
    parse.__name__ = "number"
    return parse


fraction = number(0.0, 1.0, low_open=True)  # a share of the dense model to keep: (0, 1]
count = integer(1)  # runs, images, batches
non_negative = integer(0)  # warm-up runs, held-out images
seed = integer(0, 2**64 - 1)  # torch.Generator.manual_seed takes at most 64 bits (a larger seed overflows)
# Repetitions a command line can ask for, bounded so that a typo (--runs 1000000000) is an error, not a
# run of days: a latency median is stable after a few hundred runs, and calibration images are held in
# memory (4096 at 224x224 are 2.4 GB of float32).
MAX_RUNS = 100_000
MAX_CALIBRATION_IMAGES = 4096
runs = integer(1, MAX_RUNS)
warmup_runs = integer(0, MAX_RUNS)
calibration_images = integer(1, MAX_CALIBRATION_IMAGES)
threads = integer(1, MAX_THREADS)


def opset(text: str) -> int:
    """An opset the exporter writes, from MIN_OPSET to the newest torch's converters know: text that is no
    integer is refused before torch is imported to ask."""
    _number(text, int)
    return integer(MIN_OPSET, max_opset())(text)


def channel_values(low: float, high: float) -> Callable[[str], tuple[float, ...]]:
    """'V' or 'R,G,B': one number in [low, high] for every channel, or one per channel (--mean, --std)."""
    def parse(text: str) -> tuple[float, ...]:
        values = tuple(_number(part.strip(), float) for part in text.split(","))
        if len(values) not in (1, 3):
            raise argparse.ArgumentTypeError(f"takes 1 value or 3 (R,G,B), not {len(values)}: {text!r}")
        if not all(low <= value <= high for value in values):
            raise argparse.ArgumentTypeError(f"must lie in [{low:g}, {high:g}] (pixels scaled to [0, 1]), "
                                             f"not {text!r}")
        return values
    parse.__name__ = "values"
    return parse
