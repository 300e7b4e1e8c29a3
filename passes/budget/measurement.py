"""The measuring protocol of the budget passes (prune_to_budget, depth_to_budget, choose_for_budget).

Passes never import the runtime (the layers import downward only); a pass that meets a latency budget is given a
`Measurer` by its caller (runtime/measure/speedup.py's `onnx_latency_pair`, runtime/measure/pairs.py's
`latency_pair`). A Measurer has two ways to time a candidate against the dense model:

- calling it, `measurer(dense, candidate) -> Timing` (or a plain (dense ms, candidate ms, spread) triple,
  which a Timing unpacks as too): the short measurement a search steers by, on its point;
- `measurer.confirm(dense, candidate) -> Timing`: the same measurement made longer, which alone accepts a
  candidate. Its `Timing` carries an interval on the speed-up (dense ms / candidate ms) at `confidence`,
  and a candidate is accepted only when the interval's lower bound clears the budget (`clears`): a
  candidate accepted on its point estimate at the bottom of the acceptance window is measured below the
  budget about half the time by anyone who measures it again.

and `round_to`, the width multiple the backend runs fastest (16 for ONNX Runtime on AVX-512 CPUs, 8 on
AVX2 and for TensorRT FP16, 32 for INT8 tensor cores), or None when the measurer does not know.

ONNX Runtime's interval is a block bootstrap (runtime/measure/latency.py, `ratio_interval`): the two models are
timed in alternating blocks, blocks are resampled in pairs (block i of the dense model with block i of the
candidate, which share the machine's drift), and the 5th and 95th percentiles of the resampled ratio of
medians bound it. A measurer that cannot give an interval returns a point (`low == high == speed-up`).
A plain function `(dense, candidate) -> (ms, ms, spread)` is still accepted: `as_measurer` wraps it,
confirming by calling it again, with a point interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prunefx.graph import Program

CONFIDENCE = 0.90  # two-sided: the lower bound is exceeded with 95 % probability


@dataclass(frozen=True)
class Timing:
    """A confirmed measurement: both medians, the candidate's spread (p90/median - 1), and the bounds of the
    speed-up interval at `confidence` (equal to the speed-up when `method` is "point"). Unpacks as the
    three numbers a search measurement gives, `dense_ms, ms, spread = timing`."""

    dense_ms: float
    ms: float
    spread: float
    low: float | None = None
    high: float | None = None
    confidence: float = CONFIDENCE
    method: str = "point"

    def __post_init__(self):
        if self.low is None or self.high is None:  # no interval given: the point is all there is
            object.__setattr__(self, "low", self.speedup)
            object.__setattr__(self, "high", self.speedup)
            object.__setattr__(self, "method", "point")

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.ms

    def __iter__(self) -> Iterator[float]:
        return iter((self.dense_ms, self.ms, self.spread))

    @classmethod
    def of(cls, value) -> Timing:
        """A Timing from a measurer's answer: a Timing as it is, a (dense ms, ms, spread) triple as a point."""
        return value if isinstance(value, Timing) else cls(*value)


@runtime_checkable
class Measurer(Protocol):
    """What a budget pass measures with (see the module docstring)."""

    round_to: int | None

    def __call__(self, dense: Program, candidate: Program) -> Timing | tuple[float, float, float]: ...

    def confirm(self, dense: Program, candidate: Program) -> Timing: ...


@runtime_checkable
class LongerMeasurer(Measurer, Protocol):
    """A Measurer that can measure a candidate longer still (`confirm_longer`: more fresh processes, more runs)
    when its confirmation leaves the budget inside the interval: the point in the acceptance window, the lower
    bound below it (RegNetY-1.6GF 3x: 3.49x on 2.93-3.74, a miss on the bound, and the search's next candidate
    overshot). A longer measurement narrows the interval, which then settles it either way."""

    def confirm_longer(self, dense: Program, candidate: Program) -> Timing: ...


class _Repeated:
    """A plain measuring function as a Measurer: confirmed by measuring once more, a point interval."""

    round_to: int | None = None

    def __init__(self, latency: Callable):
        self.latency = latency

    def __call__(self, dense: Program, candidate: Program) -> Timing:
        return Timing.of(self.latency(dense, candidate))

    def confirm(self, dense: Program, candidate: Program) -> Timing:
        return Timing.of(self.latency(dense, candidate))


def as_measurer(latency) -> Measurer:
    """`latency` if it is a Measurer, else the plain function wrapped (confirmation = one more call)."""
    if callable(getattr(latency, "confirm", None)):
        return latency
    return _Repeated(latency)


def round_to_of(latency) -> int | None:
    """The width multiple the measurer's backend prefers, or None."""
    value = getattr(latency, "round_to", None)
    return int(value) if value else None

