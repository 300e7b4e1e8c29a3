"""The one timing type every layer shares: a candidate's latency beside the dense model's, from the timer
(runtime/measure/) through the budget searches (passes/budget/) to the report (prunefx/budget/). It lives in
the lowest layer so that each layer imports it downward."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

CONFIDENCE = 0.90  # two-sided: the lower bound is exceeded with 95 % probability
# A reading during which other processes took this share of its cores or more was taken on a busy machine. Low,
# because the share is an average: a competitor spinning in bursts took 0.15-0.17 of two cores and still moved
# readings by up to 7 %; a quiet machine reads 0.01 or less (benchmarks/busy_machine.py)
BUSY = 0.1


def busy_share(share: float | None) -> bool:
    """Whether other processes took BUSY of the cores or more (a Timing's `contention`); a share not known is not."""
    return share is not None and share >= BUSY


def share_text(share: float) -> str:
    """'other processes took 41 % of the cores', as every line that names a busy share says it."""
    return f"other processes took {share:.0%} of the cores".replace("%", " %")


def confidence_text(confidence: float) -> str:
    """'90 %', or '99.7 %' where whole per cents would round a confidence below 1 up to '100 %' (an early look's)."""
    whole = f"{confidence:.0%}"
    return (f"{confidence:.1%}" if whole == "100%" and confidence < 1 else whole).replace("%", " %")


@dataclass(frozen=True)
class Timing:
    """Both medians, the candidate's spread (p90/median - 1), and the bounds of the speed-up interval at
    `confidence` (equal to the speed-up when `method` is "point"); `contention`: the share of the measuring cores
    that other processes took meanwhile (runtime/measure/machine_load.py; None: not known). Unpacks as the three
    numbers a search measurement gives, `dense_ms, ms, spread = timing`."""

    dense_ms: float
    ms: float
    spread: float
    low: float | None = None
    high: float | None = None
    confidence: float = CONFIDENCE
    method: str = "point"
    contention: float | None = None

    def __post_init__(self):
        if self.low is None or self.high is None:  # no interval given: the point is all there is
            object.__setattr__(self, "low", self.speedup)
            object.__setattr__(self, "high", self.speedup)
            object.__setattr__(self, "method", "point")

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.ms

    @property
    def busy(self) -> bool:
        """Measured while other processes took BUSY of its cores or more: its figures may be off, alike."""
        return busy_share(self.contention)

    def __iter__(self) -> Iterator[float]:
        return iter((self.dense_ms, self.ms, self.spread))

    @classmethod
    def of(cls, value) -> Timing:
        """A Timing from a measurer's answer: a Timing as it is, a (dense ms, ms, spread) triple as a point."""
        return value if isinstance(value, Timing) else cls(*value)
