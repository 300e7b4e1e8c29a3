"""The speed-up curve as a width budget search reads it (passes/budget/width_search.py): speed-up = c * fraction^k,
a straight line in (log fraction, log speed-up), its slope k held to ELASTICITY because two noisy readings close
together can suggest any slope, even a wrong sign; a step along it held to STEP; a bracket's end drawn towards
the aim where steps keep leaving it in place; and two readings that no such line can join, which one of them
must be noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

STEP = (1.02, 2.5)  # outside a bracket, one step changes the fraction by at least / at most these factors
ELASTICITY = (-3.0, -0.2)  # d log speed-up / d log fraction, as the search may read it from two candidates


class Reading(Protocol):
    """A point of the curve: a kept fraction and the speed-up read there (a WidthCandidate, or a Point)."""

    @property
    def fraction(self) -> float: ...

    @property
    def speedup(self) -> float: ...


@dataclass(frozen=True)
class Point:
    """A point on the speed-up curve known without measuring it."""
    fraction: float
    speedup: float


DENSE = Point(1.0, 1.0)


def held(log_step: float) -> float:
    """A step in log fraction held within STEP: an extrapolation from noisy figures is trusted only so far,
    and a step too small to change the widths would measure the same model again."""
    size = min(max(abs(log_step), math.log(STEP[0])), math.log(STEP[1]))
    return math.copysign(size, log_step)


def at_odds(a: Reading, b: Reading) -> bool:
    """Readings that cannot both be right: the more pruned read slower, or the speed-up moving more steeply with the
    fraction than ELASTICITY allows (a Swin-T search on a machine busy for a while read 0.96x at 0.27 of the MACs
    beside 2.86x at 0.24: believed, it accepted 2.75x for a 1.5x budget)."""
    run = math.log(a.fraction / b.fraction)
    if run == 0:
        return False
    slope = (log_speedup(a) - log_speedup(b)) / run
    return slope > 0 or slope < ELASTICITY[0]


def log_fraction_at(aim: float, a: Reading, b: Reading) -> float:
    """log fraction where the line through a and b in (log fraction, log speed-up) reaches `aim`; the slope
    is held to ELASTICITY, since two noisy measurements close together can suggest any slope, even a wrong sign.
    Given one candidate twice, the slope is -1: latency proportional to the MACs."""
    run = math.log(a.fraction) - math.log(b.fraction)
    rise = log_speedup(a) - log_speedup(b)
    slope = rise / run if run else -1.0
    slope = min(max(slope, ELASTICITY[0]), ELASTICITY[1])
    return math.log(a.fraction) + (aim - log_speedup(a)) / slope


def bracket_ends(good: Reading, missed: Reading, met: Sequence[bool], aim: float) -> tuple[Reading, Reading]:
    """The bracket's ends as the next line joins them, `met` saying of each candidate measured, in order, whether it
    met the budget: an end the last k >= 2 candidates left in place (all fell on the other side) has its distance
    from `aim` (in log speed-up) halved k - 1 times (the Illinois variant of regula falsi), but for the dense
    model's, whose 1.0x is known, not read: steps towards it measure nothing new. A line to an end as read can hold
    a steep slope step after step while the candidates creep towards it from the other side (a ResNet-50 search
    kept a first reading of 1.68x at 0.46 of the MACs as its miss while 5 candidates came towards it from above the
    window, 1 to 2 % of the MACs at a time)."""
    latest = met[-1]
    run = next((i for i, side in enumerate(reversed(met)) if side != latest), len(met))  # the latest side's
    end = missed if latest else good
    if run < 2 or end is DENSE:
        return good, missed
    drawn = Point(end.fraction, math.exp(aim + (log_speedup(end) - aim) * 0.5 ** (run - 1)))
    return (good, drawn) if latest else (drawn, missed)


def log_speedup(reading: Reading) -> float:
    """log of the reading's speed-up, a zero read as 1e-6 (a timing that failed)."""
    return math.log(max(reading.speedup, 1e-6))
